"""Checks of pfcn/training/solver.py: detectron2 parameter groups, closed-form schedules, clipping, exact resume."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from pfcn.config import get_cfg, load_config
from pfcn.model import build_model
from pfcn.training import GradientClipper, build_lr_scheduler, build_optimizer

from .synthetic import REPO_ROOT


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)
        self.tied = self.fc  # the same parameters reached twice


def _cfg(**solver):
    cfg = get_cfg()
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    for k, v in solver.items():
        cfg.SOLVER[k] = v
    return cfg


def _hyper(opt: torch.optim.Optimizer) -> dict[int, tuple[float, float]]:
    return {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}


def test_param_groups_follow_detectron2():
    net = _Net()
    opt = build_optimizer(_cfg(), net)
    hyper = _hyper(opt)
    assert len(hyper) == 6 == sum(len(g["params"]) for g in opt.param_groups)  # frozen out, tied once
    assert id(net.frozen.weight) not in hyper
    assert hyper[id(net.conv.weight)] == hyper[id(net.conv.bias)] == (0.01, 1e-4)
    assert hyper[id(net.gn.weight)] == hyper[id(net.gn.bias)] == (0.01, 0.0)  # WEIGHT_DECAY_NORM
    assert len(opt.param_groups) == 2
    assert opt.defaults["momentum"] == 0.9 and not opt.defaults["nesterov"]
    # Legacy bias options override the norm rule for biases.
    opt = build_optimizer(_cfg(BIAS_LR_FACTOR=2.0, WEIGHT_DECAY_BIAS=0.5, WEIGHT_DECAY_NORM=0.25, MOMENTUM=0.8), net)
    hyper = _hyper(opt)
    assert hyper[id(net.conv.bias)] == hyper[id(net.gn.bias)] == (0.02, 0.5)
    assert hyper[id(net.gn.weight)] == (0.01, 0.25)
    assert hyper[id(net.fc.weight)] == (0.01, 1e-4)
    assert opt.defaults["momentum"] == 0.8


def test_param_groups_of_the_official_model():
    cfg = load_config(REPO_ROOT / "configs" / "PanopticFCN-R50-1x.yaml")
    model = build_model(cfg)
    hyper = _hyper(build_optimizer(cfg, model))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(hyper) == len(trainable)
    assert not any(n.startswith(("backbone.bottom_up.stem.", "backbone.bottom_up.res2.")) for n in trainable)
    gn = {n for n, m in model.named_modules() if isinstance(m, nn.GroupNorm)}
    assert gn
    for name, p in trainable.items():
        in_norm = name.rsplit(".", 1)[0] in gn
        assert hyper[id(p)] == (0.01, 0.0 if in_norm else 1e-4), name


def _lrs(cfg, iters: int) -> list[float]:
    opt = build_optimizer(cfg, nn.Linear(2, 2))
    sched = build_lr_scheduler(cfg, opt)
    out = []
    for _ in range(iters):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    out.append(opt.param_groups[0]["lr"])
    return out


def test_warmup_poly_closed_form():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=100, WARMUP_ITERS=10, WARMUP_FACTOR=0.001,
               POLY_LR_POWER=0.9)
    lrs = _lrs(cfg, 100)
    assert lrs[0] == pytest.approx(0.01 * 0.001)
    assert lrs[5] == pytest.approx(0.01 * (0.001 * 0.5 + 0.5) * (1 - 5 / 100) ** 0.9)
    assert lrs[10] == pytest.approx(0.01 * (1 - 10 / 100) ** 0.9)  # warm-up over
    assert lrs[99] == pytest.approx(0.01 * (1 / 100) ** 0.9)
    assert lrs[100] == 0.0
    # Constant ending: once the poly factor drops below it (after warm-up), the LR stays at BASE_LR * ending.
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.5
    lrs = _lrs(cfg, 100)
    knee = next(i for i in range(100) if (1 - i / 100) ** 0.9 < 0.5)
    assert lrs[knee - 1] == pytest.approx(0.01 * (1 - (knee - 1) / 100) ** 0.9)
    assert lrs[knee:] == pytest.approx([0.005] * (101 - knee))
    # Constant warm-up method.
    cfg.SOLVER.WARMUP_METHOD = "constant"
    assert _lrs(cfg, 3)[2] == pytest.approx(0.01 * 0.001 * (1 - 2 / 100) ** 0.9)


def test_multistep_and_cosine_closed_forms():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupMultiStepLR", MAX_ITER=50, WARMUP_ITERS=10, WARMUP_FACTOR=0.1,
               STEPS=(20, 40, 80), GAMMA=0.1)
    lrs = _lrs(cfg, 50)
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[5] == pytest.approx(0.01 * (0.1 + 0.9 * 0.5))
    assert lrs[19] == pytest.approx(0.01) and lrs[20] == pytest.approx(0.001) and lrs[40] == pytest.approx(1e-4)
    assert lrs[50] == pytest.approx(1e-4)  # the 80 milestone lies past MAX_ITER
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupCosineLR", MAX_ITER=40, WARMUP_ITERS=10, WARMUP_FACTOR=0.1,
               BASE_LR_END=0.001)
    lrs = _lrs(cfg, 40)
    end = 0.1
    cosine = lambda i: end + 0.5 * (1 - end) * (1 + math.cos(math.pi * i / 40))  # noqa: E731
    assert lrs[0] == pytest.approx(0.001)
    assert lrs[5] == pytest.approx(0.01 * (0.1 + (cosine(10) - 0.1) * 0.5))  # rises to the cosine at warm-up end
    assert lrs[10] == pytest.approx(0.01 * cosine(10)) and lrs[40] == pytest.approx(0.001)
    with pytest.raises(ValueError, match="LR_SCHEDULER_NAME"):
        build_lr_scheduler(_cfg(LR_SCHEDULER_NAME="Nope"), build_optimizer(_cfg(), nn.Linear(2, 2)))


def test_bias_lr_factor_is_kept_by_the_schedule():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=10, WARMUP_ITERS=0, BIAS_LR_FACTOR=2.0)
    net = nn.Linear(2, 2)
    opt = build_optimizer(cfg, net)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(3):
        opt.step()
        sched.step()
    lr = _hyper(opt)
    assert lr[id(net.bias)][0] == pytest.approx(2 * lr[id(net.weight)][0])
    assert lr[id(net.weight)][0] == pytest.approx(0.01 * 0.7 ** 0.9)


def test_clipping_by_value_and_per_parameter_norm():
    assert GradientClipper.from_cfg(_cfg()) is None  # disabled by default
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 35.0
    clip = GradientClipper.from_cfg(cfg)
    a, b = nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([a, b], lr=0.1)
    a.grad = torch.tensor([-100.0, 5.0, 50.0])
    b.grad = torch.tensor([35.0, -35.5])
    clip(opt)
    assert a.grad.tolist() == [-35.0, 5.0, 35.0] and b.grad.tolist() == [35.0, -35.0]
    # Norm clipping acts on each parameter's own norm (detectron2's per-parameter clipper), not the global norm.
    norm = GradientClipper("norm", 2.0, 2.0)
    a.grad = torch.tensor([6.0, 8.0, 0.0])  # norm 10 -> scaled to 2
    b.grad = torch.tensor([1.0, 0.0])  # norm 1 -> untouched
    norm(opt)
    torch.testing.assert_close(a.grad, torch.tensor([1.2, 1.6, 0.0]), rtol=1e-5, atol=1e-6)
    assert b.grad.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="CLIP_TYPE"):
        GradientClipper("global", 1.0)


def test_resume_from_state_dicts_is_exact():
    cfg = _cfg(LR_SCHEDULER_NAME="WarmupPolyLR", MAX_ITER=20, WARMUP_ITERS=5)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    data = torch.randn(20, 8, generator=torch.Generator().manual_seed(0))

    def run(model, opt, sched, clip, steps):
        for i in steps:
            loss = model(data[i : i + 1]).pow(2).sum()
            opt.zero_grad()
            loss.backward()
            clip(opt)
            opt.step()
            sched.step()

    def make():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 1))
        opt = build_optimizer(cfg, model)
        return model, opt, build_lr_scheduler(cfg, opt), GradientClipper.from_cfg(cfg)

    ref = make()
    run(*ref, range(20))
    first = make()
    run(*first, range(8))
    saved = copy.deepcopy({"model": first[0].state_dict(), "opt": first[1].state_dict(),
                           "sched": first[2].state_dict()})
    resumed = make()
    resumed[0].load_state_dict(saved["model"])
    resumed[1].load_state_dict(saved["opt"])
    resumed[2].load_state_dict(saved["sched"])
    assert resumed[1].param_groups[0]["lr"] == first[1].param_groups[0]["lr"]
    run(*resumed, range(8, 20))
    for p, q in zip(ref[0].parameters(), resumed[0].parameters()):
        assert torch.equal(p, q)
    assert resumed[2].get_last_lr() == ref[2].get_last_lr()
