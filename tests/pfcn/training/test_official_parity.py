"""pfcn.training against the official GenerateGT and PanopticFCN.losses, executed from a clone named by PFCN_OFFICIAL_REPO.

Targets must be identical (after expanding pfcn's compact layout to the official per-level tensors); losses and
gradients must agree to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from pfcn.training import generate_targets, panoptic_losses
from pfcn.training.targets import Targets

from .official_code import SourcesNotConfigured, load_official, official_losses, official_targets
from .synthetic import random_heads, random_sample, small_cfg


@pytest.fixture(scope="module")
def official():
    try:
        return load_official()
    except SourcesNotConfigured as err:
        pytest.skip(str(err))


def _official_layout(tg: Targets, tensor_dim: int, ignore: float) -> dict[str, list[torch.Tensor]]:
    """Expand pfcn's compact targets into the official gt_dict tensors."""
    b, _, h4, w4 = tg.inst_masks.shape
    out: dict[str, list[torch.Tensor]] = {k: [] for k in ("center", "inst", "index", "index_mask", "class",
                                                           "sem_scores", "sem_labels", "sem_masks", "sem_index")}
    for lv in tg.levels:
        valid = lv.slot_valid
        rows = tg.inst_masks[torch.arange(b).unsqueeze(1), lv.slot_inst]  # [B, D, h4, w4]
        inst = torch.where(valid[:, :, None, None], rows, ignore)
        out["center"].append(lv.center)
        out["inst"].append(inst)
        out["index"].append(lv.slot_index.float())
        out["index_mask"].append(valid.float())
        out["class"].append(lv.slot_class.float())
        out["sem_scores"].append(lv.sem_scores)
        sv = lv.sem_slot_valid[:, :, None, None]
        labels = tg.sem_masks[torch.arange(b).unsqueeze(1), lv.sem_slot_class]
        out["sem_labels"].append(torch.where(sv, labels, 0.0))
        masks = lv.sem_scores[torch.arange(b).unsqueeze(1), lv.sem_slot_class] > 0
        out["sem_masks"].append(torch.where(sv, masks.float(), 0.0))
        out["sem_index"].append(lv.sem_slot_valid.float())
    return out


CASES = [
    # (seed, image sizes, instances per image, padded batch size, POS_NUM, CENTER_TYPE)
    (1, [(150, 180), (160, 130)], [9, 6], (160, 192), 3, "mass"),
    (2, [(128, 128)], [12], (128, 160), 2, "mass"),
    (3, [(121, 157), (97, 160), (160, 99)], [7, 0, 10], (160, 160), 3, "box"),
]


@pytest.mark.parametrize("seed,sizes,counts,padded,pos_num,center_type", CASES)
def test_targets_and_losses_match_official(official, seed, sizes, counts, padded, pos_num, center_type):
    gen = torch.Generator().manual_seed(seed)
    cfg = small_cfg(pos_num)
    cfg.MODEL.POSITION_HEAD.THING.CENTER_TYPE = center_type
    samples = [random_sample(gen, h, w, n) for (h, w), n in zip(sizes, counts)]
    big_h, big_w = padded
    heads = random_heads(gen, len(samples), big_h, big_w)
    shapes = [tuple(w.shape[-2:]) for w in heads.weights]

    gt = official_targets(official, cfg, samples, torch.zeros(len(samples), 3, big_h, big_w),
                          [w.detach() for w in heads.weights], heads.encoded.detach())
    ours = generate_targets(samples, (big_h, big_w), shapes, tuple(heads.encoded.shape[-2:]), cfg)
    assert sum(int(x.sum()) for x in gt["index_mask"]) > 0
    mine = _official_layout(ours, cfg.MODEL.TENSOR_DIM, float(cfg.MODEL.IGNORE_VALUE))
    for key, levels in gt.items():
        for level, expected in enumerate(levels):
            got = mine[key][level]
            assert got.shape == expected.shape, (key, level)
            assert torch.equal(got, expected.to(got.dtype)), f"{key} level {level}: max diff " \
                f"{(got - expected).abs().max().item()}"

    thing_embed = torch.nn.Conv2d(heads.weights[0].shape[1], heads.encoded.shape[1], 1)
    stuff_embed = torch.nn.Conv2d(heads.weights[0].shape[1], heads.encoded.shape[1], 1)
    leaves = list(heads.centers) + list(heads.regions) + list(heads.weights) + [heads.encoded] \
        + list(thing_embed.parameters()) + list(stuff_embed.parameters())

    expected = official_losses(official, cfg, heads, gt, thing_embed, stuff_embed)
    exp_grads = torch.autograd.grad(sum(expected.values()), leaves, allow_unused=True)
    got = panoptic_losses(heads, ours, thing_embed, stuff_embed, cfg)
    got_grads = torch.autograd.grad(sum(got.values()), leaves, allow_unused=True)
    assert set(got) == set(expected)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key].to(torch.float32), rtol=1e-5, atol=1e-6, msg=key)
    for i, (g, e) in enumerate(zip(got_grads, exp_grads)):
        if e is None:
            assert g is None or not g.abs().any(), i
            continue
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6, msg=lambda m: f"grad {i}: {m}")
