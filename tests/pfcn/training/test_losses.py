"""Checks of pfcn/training/losses.py against direct formulas, hand-made masks, and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from pfcn.config import load_config
from pfcn.inference import HeadOutputs
from pfcn.model import build_model
from pfcn.training import generate_targets, panoptic_losses, sigmoid_focal_loss, weighted_dice_loss

from .synthetic import REPO_ROOT, random_heads, random_sample, small_cfg

LOSS_KEYS = {"loss_pos_th", "loss_pos_st", "loss_seg_th", "loss_seg_st"}


def _focal_reference(x: float, t: float, alpha: float, gamma: float) -> float:
    p = 1 / (1 + math.exp(-x))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    a_t = alpha * t + (1 - alpha) * (1 - t)
    return a_t * ce * (1 - p_t) ** gamma


def test_focal_loss_matches_float64_formula():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 5, generator=gen) * 3
    t = torch.rand(2, 3, 4, 5, generator=gen)
    t[0, 0] = 1.0
    t[1, 2] = 0.0
    ref = torch.tensor([_focal_reference(a, b, 0.25, 2.0) for a, b in zip(x.flatten().tolist(), t.flatten().tolist())],
                       dtype=torch.float64).reshape(x.shape)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 2.0, "thing", "none").double(), ref, rtol=1e-5,
                               atol=1e-7)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 2.0, "thing", "sum").double(), ref.sum(), rtol=1e-5,
                               atol=1e-6)
    # Stuff mode: mean over the pixels of each (image, class) map, then the reduction.
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 0.25, 2.0, "stuff", "sum").double(),
                               ref.mean(dim=(2, 3)).sum(), rtol=1e-5, atol=1e-6)
    # alpha < 0: no class weighting.
    noalpha = sigmoid_focal_loss(x, t, -1, 2.0, "thing", "none").double()
    ref_noalpha = ref / (0.25 * t.double() + 0.75 * (1 - t.double()))
    torch.testing.assert_close(noalpha, ref_noalpha, rtol=1e-5, atol=1e-7)


def test_focal_and_dice_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 2, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.rand(1, 2, 3, 3, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: sigmoid_focal_loss(v, t, 0.25, 2.0, "stuff", "sum"), (x,))
    logits = torch.randn(3, 2, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.rand(3, 10, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: weighted_dice_loss(a, target, b), (logits, w))


def test_dice_identical_disjoint_and_weights():
    target = torch.zeros(2, 16)
    target[:, :6] = 1.0
    same = torch.where(target > 0, 60.0, -60.0)  # sigmoid saturates to exactly 1 / ~0 in float32
    disjoint = -same
    logits = torch.stack([same, disjoint], dim=1)  # [G=2, K=2, P]
    per_k = weighted_dice_loss(logits[:, :1], target)  # identical only, weights None
    assert per_k.tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert weighted_dice_loss(logits[:, 1:], target).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    weights = torch.tensor([[3.0, 1.0], [0.0, 2.0]])
    # Weights are normalised per object: 3/4 * 0 + 1/4 * 1, and 0 * 0 + 1 * 1.
    assert weighted_dice_loss(logits, target, weights).tolist() == pytest.approx([0.25, 1.0], abs=1e-6)
    # All-zero weights contribute nothing (and stay finite).
    assert weighted_dice_loss(logits, target, torch.zeros(2, 2)).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="K=2"):
        weighted_dice_loss(logits, target)


def _batch(seed: int, sizes, counts, padded, pos_num=3):
    gen = torch.Generator().manual_seed(seed)
    cfg = small_cfg(pos_num)
    samples = [random_sample(gen, h, w, n) for (h, w), n in zip(sizes, counts)]
    heads = random_heads(gen, len(samples), *padded)
    targets = generate_targets(samples, padded, [tuple(w.shape[-2:]) for w in heads.weights],
                               tuple(heads.encoded.shape[-2:]), cfg)
    c, e = heads.weights[0].shape[1], heads.encoded.shape[1]
    torch.manual_seed(seed)
    return cfg, samples, heads, targets, torch.nn.Conv2d(c, e, 1), torch.nn.Conv2d(c, e, 1)


def test_losses_backprop_into_every_head_output():
    cfg, _, heads, targets, th_embed, st_embed = _batch(3, [(150, 170), (128, 160)], [8, 6], (160, 192))
    losses = panoptic_losses(heads, targets, th_embed, st_embed, cfg)
    assert set(losses) == LOSS_KEYS
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for name, tensors in (("centers", heads.centers), ("regions", heads.regions), ("weights", heads.weights)):
        for level, t in enumerate(tensors):
            assert t.grad is not None and t.grad.abs().sum() > 0, (name, level)
    assert heads.encoded.grad.abs().sum() > 0
    for p in list(th_embed.parameters()) + list(st_embed.parameters()):
        assert p.grad.abs().sum() > 0
    # The thing dice loss reaches the center logits through the POS_NUM weights (not detached, as official).
    centers = [c.detach().requires_grad_(True) for c in heads.centers]
    seg = panoptic_losses(heads._replace(centers=centers), targets, th_embed, st_embed, cfg)["loss_seg_th"]
    grads = torch.autograd.grad(seg, centers)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_losses_are_normalised_per_object_not_per_batch():
    """A batch of the same image twice gives the same four losses as the image alone."""
    cfg, samples, heads, targets, th_embed, st_embed = _batch(4, [(140, 150)], [7], (160, 160))
    single = panoptic_losses(heads, targets, th_embed, st_embed, cfg)
    twice = HeadOutputs(*[[torch.cat([t, t]) for t in f] for f in heads[:3]], torch.cat([heads.encoded] * 2))
    t2 = generate_targets(samples * 2, (160, 160), [tuple(w.shape[-2:]) for w in heads.weights],
                          tuple(heads.encoded.shape[-2:]), cfg)
    double = panoptic_losses(twice, t2, th_embed, st_embed, cfg)
    for key in LOSS_KEYS:
        torch.testing.assert_close(double[key], single[key], rtol=1e-5, atol=1e-6)
    # Loss weights scale linearly.
    cfg.MODEL.LOSS_WEIGHT.SEGMENT = 6.0
    cfg.MODEL.LOSS_WEIGHT.POSITION = 0.5
    scaled = panoptic_losses(heads, targets, th_embed, st_embed, cfg)
    for key, factor in (("loss_seg_th", 2), ("loss_seg_st", 2), ("loss_pos_th", 0.5), ("loss_pos_st", 0.5)):
        torch.testing.assert_close(scaled[key], single[key] * factor)


def test_no_instances_and_levels_smaller_than_pos_num():
    # 64 x 96 input: P7 is 1 x 1, smaller than POS_NUM = 3 (the official topk would fail there).
    gen = torch.Generator().manual_seed(5)
    cfg = small_cfg(3)
    samples = [random_sample(gen, 64, 96, 4, min_size=8), random_sample(gen, 60, 90, 0)]
    heads = random_heads(gen, 2, 64, 96)
    assert tuple(heads.centers[-1].shape[-2:]) == (1, 1)
    targets = generate_targets(samples, (64, 96), [tuple(w.shape[-2:]) for w in heads.weights], (16, 24), cfg)
    embeds = [torch.nn.Conv2d(heads.weights[0].shape[1], heads.encoded.shape[1], 1) for _ in range(2)]
    losses = panoptic_losses(heads, targets, *embeds, cfg)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(torch.isfinite(t.grad).all() for t in heads.weights)

    empty = [random_sample(gen, 64, 96, 0)]
    heads = random_heads(gen, 1, 64, 96)
    targets = generate_targets(empty, (64, 96), [tuple(w.shape[-2:]) for w in heads.weights], (16, 24), cfg)
    losses = panoptic_losses(heads, targets, *embeds, cfg)
    assert losses["loss_seg_th"].item() == 0.0
    assert losses["loss_pos_th"].item() > 0  # all-negative heatmaps, normalised by max(0, 1)
    sum(losses.values()).backward()


def test_with_the_real_model():
    """Targets and losses on the actual network's outputs (a narrow R18 variant of the official config)."""
    torch.manual_seed(0)
    cfg = load_config(REPO_ROOT / "configs" / "PanopticFCN-R50-1x.yaml", overrides=[
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 16, "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
        "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.SEMANTIC_FPN.CONVS_DIM", 32, "MODEL.POSITION_HEAD.CONVS_DIM", 32,
        "MODEL.KERNEL_HEAD.CONVS_DIM", 32, "MODEL.FEATURE_ENCODER.CONVS_DIM", 16,
        "MODEL.POSITION_HEAD.THING.NUM_CLASSES", 5, "MODEL.POSITION_HEAD.STUFF.NUM_CLASSES", 6,
        "MODEL.POSITION_HEAD.THING.POS_NUM", 3, "MODEL.KERNEL_HEAD.INSTANCE_SCALES",
        ((1, 16), (8, 32), (16, 64), (32, 128), (64, 2048))])
    model = build_model(cfg).train()
    gen = torch.Generator().manual_seed(6)
    samples = [random_sample(gen, 64, 80, 5), random_sample(gen, 70, 60, 3)]
    batch, sizes = model.normalize([s["image"] for s in samples])
    heads = model.forward_features(batch)
    targets = generate_targets(samples, tuple(batch.shape[-2:]), [tuple(w.shape[-2:]) for w in heads.weights],
                               tuple(heads.encoded.shape[-2:]), cfg, device=batch.device)
    losses = panoptic_losses(heads, targets, model.thing_generator.embed_extractor,
                             model.stuff_generator.embed_extractor, cfg)
    sum(losses.values()).backward()
    for name in ("position_head", "kernel_head", "feature_encoder", "thing_generator", "stuff_generator"):
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0, name
    # The generator module itself works as the embed too (same numbers).
    again = panoptic_losses(heads, targets, model.thing_generator, model.stuff_generator, cfg)
    for key in LOSS_KEYS:
        torch.testing.assert_close(again[key], losses[key])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_targets_and_losses_match_cpu():
    cfg, samples, heads, targets, th_embed, st_embed = _batch(7, [(150, 170), (128, 160)], [8, 6], (160, 192))
    cpu = panoptic_losses(heads, targets, th_embed, st_embed, cfg)
    dev = torch.device("cuda")
    on_dev = generate_targets(samples, (160, 192), [tuple(w.shape[-2:]) for w in heads.weights], (40, 48), cfg,
                              device=dev)
    for a, b in zip(targets.levels, on_dev.levels):
        for name in ("center", "slot_inst", "slot_class", "slot_valid", "sem_scores", "sem_slot_class"):
            assert torch.equal(getattr(a, name), getattr(b, name).cpu()), name
    assert torch.equal(targets.inst_masks, on_dev.inst_masks.cpu())
    heads_dev = HeadOutputs(*[[t.detach().to(dev) for t in f] for f in heads[:3]], heads.encoded.detach().to(dev))
    got = panoptic_losses(heads_dev, on_dev, th_embed.to(dev), st_embed.to(dev), cfg)
    for key in LOSS_KEYS:
        torch.testing.assert_close(got[key].cpu(), cpu[key].detach(), rtol=1e-4, atol=1e-5)
