"""Hand-made checks of pfcn/training/targets.py: radius formula, heatmaps, level assignment, stuff targets, errors."""

from __future__ import annotations

import math

import pytest
import torch

from pfcn.training.targets import TargetParams, gaussian_radius, generate_targets

OFFICIAL_SCALES = ((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))


def _params(**kw) -> TargetParams:
    base = dict(num_things=3, num_stuff=4, instance_scales=OFFICIAL_SCALES)
    base.update(kw)
    return TargetParams(**base)


def _levels(h: int, w: int) -> list[tuple[int, int]]:
    shapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    for _ in range(2):
        shapes.append(((shapes[-1][0] + 1) // 2, (shapes[-1][1] + 1) // 2))
    return shapes


def _sample(h: int, w: int, rects: list[tuple[int, int, int, int]], classes: list[int], stuff: int = 1) -> dict:
    """Instances are filled rectangles (x0, y0, x1, y1), boxes equal to them; the rest is one stuff class."""
    masks = torch.zeros(len(rects), h, w, dtype=torch.bool)
    sem = torch.full((h, w), stuff, dtype=torch.int64)
    for i, (x0, y0, x1, y1) in enumerate(rects):
        masks[i, y0:y1, x0:x1] = True
        sem[y0:y1, x0:x1] = 0
    return {"image_id": 7, "sem_seg": sem,
            "instances": {"masks": masks, "classes": torch.tensor(classes, dtype=torch.int64),
                          "boxes": torch.tensor(rects, dtype=torch.float32).reshape(-1, 4)}}


def _generate(samples, h, w, params):
    return generate_targets(samples, (h, w), _levels(h, w), (h // 4, w // 4), params)


def _centernet_radius(w: float, h: float, overlap: float) -> float:
    """CenterNet's gaussian_radius, written out in float64 (each root (b + sqrt(b^2 - 4ac)) / 2)."""
    roots = []
    for a, b, c in ((1.0, h + w, w * h * (1 - overlap) / (1 + overlap)),
                    (4.0, 2 * (h + w), (1 - overlap) * w * h),
                    (4 * overlap, -2 * overlap * (h + w), (overlap - 1) * w * h)):
        roots.append((b + math.sqrt(b * b - 4 * a * c)) / 2)
    return min(roots)


@pytest.mark.parametrize("overlap", [0.7, 0.5])
def test_gaussian_radius_matches_centernet_formula(overlap):
    wh = [(10.0, 10.0), (3.0, 40.0), (0.5, 0.25), (123.4, 56.7), (1.0, 1.0)]
    got = gaussian_radius(torch.tensor(wh, dtype=torch.float64), overlap)
    for (w, h), r in zip(wh, got.tolist()):
        assert r == pytest.approx(_centernet_radius(w, h, overlap), rel=1e-12)
    # 10 x 10 at overlap 0.7: the third case binds, (-28 + sqrt(28^2 + 4 * 2.8 * 30)) / 2.
    assert gaussian_radius(torch.tensor([[10.0, 10.0]]), 0.7).item() == pytest.approx((-28 + math.sqrt(1120)) / 2,
                                                                                       rel=1e-6)


def test_single_square_peaks_at_its_mass_center_on_its_level_only():
    # A 24 px square; scale ranges that do not overlap, so only P4 (17..32) takes it.
    scales = ((1, 16), (17, 32), (33, 64), (65, 128), (129, 2048))
    h = w = 128
    x0, y0 = 48, 40
    sample = _sample(h, w, [(x0, y0, x0 + 24, y0 + 24)], [2])
    tg = _generate([sample], h, w, _params(instance_scales=scales))
    for level, lv in enumerate(tg.levels):
        if level != 1:
            assert not lv.center.any(), level
            assert not lv.slot_valid.any(), level
    lv = tg.levels[1]
    stride = 16
    cx, cy = int((x0 + 12) / stride), int((y0 + 12) / stride)  # true centroid (60, 52) -> (3, 3)
    heat = lv.center[0]
    assert heat[2, cy, cx] == 1.0
    assert not heat[[0, 1]].any()  # other classes empty
    # Expected gaussian: radius from the box size in level units, sigma = diameter / 3.
    r = int(_centernet_radius(24 / stride, 24 / stride, 0.7))
    sigma = (2 * r + 1) / 3
    expect = torch.zeros(lv.center.shape[-2:])
    for yy in range(expect.shape[0]):
        for xx in range(expect.shape[1]):
            if abs(yy - cy) <= r and abs(xx - cx) <= r:
                expect[yy, xx] = math.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma * sigma))
    torch.testing.assert_close(heat[2], expect)
    assert lv.slot_valid[0].tolist() == [True] + [False] * 99
    assert lv.slot_class[0, 0] == 2 and lv.slot_index[0, 0] == cy * lv.center.shape[-1] + cx


def test_gaussian_extent_and_overlap_takes_the_max():
    # Two same-class 120 px squares on P5 (64..256): radius > 0, overlapping windows combine by max.
    h = w = 256
    sample = _sample(h, w, [(0, 0, 120, 120), (64, 64, 184, 184)], [1, 1])
    tg = _generate([sample], h, w, _params())
    heat = tg.levels[2].center[0, 1]  # stride 32, 8 x 8
    assert heat.max() == 1.0
    peaks = (heat == 1.0).nonzero().tolist()
    assert peaks == [[1, 1], [3, 3]]  # centroids (59.5, 59.5)/32 and (123.5, 123.5)/32, truncated
    r = int(_centernet_radius(120 / 32, 120 / 32, 0.7))
    assert r >= 1
    sigma = (2 * r + 1) / 3
    g1 = math.exp(-1 / (2 * sigma * sigma))
    assert heat[2, 2].item() == pytest.approx(math.exp(-2 / (2 * sigma * sigma)))  # diagonal neighbour of both
    assert heat[1, 2].item() == pytest.approx(g1)
    assert heat[7, 7].item() == 0.0  # outside both windows


def test_level_assignment_uses_sqrt_of_box_area_inclusive_ranges():
    h = w = 512
    rects = [
        (0, 0, 20, 20),  # 20 -> P3
        (30, 0, 78, 48),  # 48 -> P3, P4
        (100, 0, 164, 64),  # 64 exactly -> P3, P4, P5 (both ends inclusive)
        (200, 0, 216, 100),  # 16 x 100 box, sqrt(area) = 40 -> P3, P4 (not its 100 px side)
        (0, 150, 300, 450),  # 300 -> P6 (128..512) and P7 (256..2048)
    ]
    tg = _generate([_sample(h, w, rects, [0, 1, 2, 0, 1])], h, w, _params())
    assigned = [lv.slot_inst[0, : int(lv.slot_valid[0].sum())].tolist() for lv in tg.levels]
    assert assigned == [[0, 1, 2, 3], [1, 2, 3], [2], [4], [4]]
    # Slots carry the instance's class and index its stride-4 mask.
    assert tg.levels[1].slot_class[0, :3].tolist() == [1, 2, 0]
    assert torch.equal(tg.inst_masks[0, 3, 0:25, 50:54], torch.ones(25, 4))


def test_tensor_dim_caps_slots_but_heatmap_keeps_every_instance():
    h = w = 128
    rects = [(8 + 40 * i, 8, 28 + 40 * i, 28) for i in range(3)]
    tg = _generate([_sample(h, w, rects, [0, 0, 0])], h, w, _params(tensor_dim=2))
    lv = tg.levels[0]
    assert lv.slot_valid.shape == (1, 2) and lv.slot_valid.all()
    assert lv.slot_inst[0].tolist() == [0, 1]
    assert int((lv.center[0, 0] == 1.0).sum()) == 3


def test_box_center_type_and_vanished_mask_fallback():
    h = w = 128
    # An L-shaped mask: its mass center differs from its box center.
    masks = torch.zeros(1, h, w, dtype=torch.bool)
    masks[0, 0:48, 0:16] = True
    masks[0, 32:48, 0:48] = True
    box = torch.tensor([[0.0, 0.0, 48.0, 48.0]])
    sample = {"image_id": 1, "sem_seg": torch.where(masks[0], 0, 1),
              "instances": {"masks": masks, "classes": torch.tensor([0]), "boxes": box}}
    peak = lambda tg: (tg.levels[0].center[0, 0] == 1.0).nonzero().tolist()  # noqa: E731
    assert peak(_generate([sample], h, w, _params(center_type="box"))) == [[3, 3]]  # (24, 24) / 8
    mass = peak(_generate([sample], h, w, _params(center_type="mass")))
    assert mass != [[3, 3]] and len(mass) == 1
    # A 1-pixel mask at a position the stride-4 resampling does not see: the box center is used instead.
    tiny = torch.zeros(1, h, w, dtype=torch.bool)
    tiny[0, 40, 40] = True
    sample = {"image_id": 2, "sem_seg": torch.ones(h, w, dtype=torch.int64),
              "instances": {"masks": tiny, "classes": torch.tensor([1]), "boxes": torch.tensor([[40.0, 40, 41, 41]])}}
    tg = _generate([sample], h, w, _params())
    assert not tg.inst_masks.any()
    assert peak(tg) == [] and (tg.levels[0].center[0, 1] == 1.0).nonzero().tolist() == [[5, 5]]


def test_stuff_targets_and_ignore():
    h, w = 64, 96
    sem = torch.full((h, w), 1, dtype=torch.int64)
    sem[:, 48:] = 3
    sem[:16, :16] = 255  # ignore: no class at all
    sample = {"image_id": 3, "sem_seg": sem,
              "instances": {"masks": torch.zeros(0, h, w, dtype=torch.bool),
                            "classes": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}}
    tg = generate_targets([sample], (h, w), _levels(h, w), (h // 4, w // 4), _params())
    # Stride-4 soft maps: exact halves, ignore corner empty everywhere.
    assert tg.sem_masks.shape == (1, 4, 16, 24)
    assert torch.equal(tg.sem_masks[0, 1, 4:, :12], torch.ones(12, 12))
    assert torch.equal(tg.sem_masks[0, 3, :, 12:], torch.ones(16, 12))
    assert not tg.sem_masks[0, :, :4, :4].any()
    assert not tg.sem_masks[0, [0, 2]].any()
    lv = tg.levels[0]  # 8 x 12
    assert lv.sem_slot_valid[0].tolist() == [True, True, False, False]
    assert lv.sem_slot_class[0, :2].tolist() == [1, 3]
    assert torch.equal(lv.sem_scores[0, 3, :, 6:], torch.ones(8, 6)) and not lv.sem_scores[0, 3, :, :6].any()
    assert not lv.sem_scores[0, 1, :2, :2].any() and (lv.sem_scores[0, 1, 2:, :6] == 1).all()
    # No thing anywhere: empty heatmaps and slots.
    assert all(not lv.center.any() and not lv.slot_valid.any() for lv in tg.levels)


def test_images_smaller_than_the_batch_are_placed_top_left():
    samples = [_sample(64, 64, [(8, 8, 40, 40)], [1]), _sample(96, 128, [(64, 32, 96, 64)], [2], stuff=2)]
    tg = _generate(samples, 96, 128, _params())
    assert tg.inst_masks.shape == (2, 1, 24, 32)
    assert not tg.inst_masks[0, :, 16:].any() and not tg.inst_masks[0, :, :, 16:].any()
    assert not tg.sem_masks[0, :, 16:].any()
    assert tg.num_instances.tolist() == [1, 1]


def test_invalid_samples_name_the_culprit():
    good = _sample(32, 32, [(0, 0, 8, 8)], [0])
    bad = dict(good, sem_seg=torch.full((32, 32), 9, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"image_id=7.*sem_seg labels"):
        _generate([bad], 32, 32, _params())
    bad = dict(good, instances=dict(good["instances"], classes=torch.tensor([5])))
    with pytest.raises(ValueError, match="thing classes"):
        _generate([bad], 32, 32, _params())
    bad = {"image_id": 4, "sem_seg": good["sem_seg"]}
    with pytest.raises(KeyError, match="instances"):
        _generate([bad], 32, 32, _params())
    with pytest.raises(ValueError, match="larger than the batch"):
        generate_targets([good], (16, 32), _levels(16, 32), (4, 8), _params())
