"""Transforms: detectron2's resize rounding, size sampling, nearest ids, flip consistency, config wiring."""

from __future__ import annotations

import numpy as np
import pytest

from pfcn.config import get_cfg
from pfcn.data import RandomFlip, ResizeShortestEdge, apply_transforms, build_transforms, resized_shape


@pytest.mark.parametrize("h, w, short, max_size, expected", [
    (480, 640, 800, 1333, (800, 1067)),  # 1066.67 rounds up
    (427, 640, 800, 1333, (800, 1199)),  # 1199.06
    (360, 640, 800, 1333, (750, 1333)),  # longest side capped: 800 * 1333 / 1422.2 = 749.86
    (640, 360, 800, 1333, (1333, 750)),
    (500, 500, 400, 666, (400, 400)),  # square: the "h >= w" branch
    (60, 30, 800, 1333, (1333, 667)),  # 666.5 in float64 rounds up (float32 arithmetic gives 666)
    (22, 44, 800, 1333, (666, 1333)),  # 666.4999... in float64
    (100, 200, 50, 10_000, (50, 100)),  # downscaling
])
def test_resized_shape_matches_detectron2(h, w, short, max_size, expected):
    assert resized_shape(h, w, short, max_size) == expected


def test_resized_shape_is_detectron2_formula_on_a_grid():
    """The rule written out as detectron2's get_output_shape states it, over many sizes."""
    def d2(oldh, oldw, size, max_size):
        size = size * 1.0
        scale = size / min(oldh, oldw)
        newh, neww = (size, scale * oldw) if oldh < oldw else (scale * oldh, size)
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)

    rng = np.random.default_rng(0)
    for h, w in rng.integers(8, 3000, (2000, 2)).tolist():
        for short, mx in ((800, 1333), (400, 666), (512, 854), (128, 213)):
            assert resized_shape(h, w, short, mx) == d2(h, w, short, mx)


def test_resized_shape_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive"):
        resized_shape(0, 10, 8, 100)
    with pytest.raises(ValueError, match="short edge"):
        resized_shape(10, 10, 0, 100)


def test_sampling_choice_and_range():
    rng = np.random.default_rng(0)
    choice = ResizeShortestEdge((352, 384, 416), 854, "choice")
    assert {choice.draw_short(rng) for _ in range(200)} == {352, 384, 416}
    rng_ = ResizeShortestEdge((100, 104), 854, "range")
    assert {rng_.draw_short(rng) for _ in range(300)} == {100, 101, 102, 103, 104}
    with pytest.raises(ValueError, match="exactly"):
        ResizeShortestEdge((1, 2, 3), 10, "range")
    with pytest.raises(ValueError, match="sampling"):
        ResizeShortestEdge((1,), 10, "uniform")


def _scene(h=30, w=50):
    ids = np.zeros((h, w), np.int32)
    ids[5:20, 10:30] = 7_000_001  # an id that needs more than 16 bits
    ids[15:28, 25:45] = 42
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.arange(w, dtype=np.uint8)[None, :] * 5
    image[..., 1] = np.arange(h, dtype=np.uint8)[:, None] * 8
    return image, ids


def test_resize_keeps_ids_and_size():
    image, ids = _scene()
    out_img, out_ids = apply_transforms(image, ids, [ResizeShortestEdge((75,), 1000)], None)
    assert out_img.shape == (75, 125, 3) and out_ids.shape == (75, 125)
    assert set(np.unique(out_ids)) == set(np.unique(ids))  # nearest: no blended ids
    assert out_img.dtype == np.uint8 and out_ids.dtype == np.int32
    # an integer 2.5x upscale by nearest keeps each region where it was, within one source pixel
    frac = (out_ids == 42).mean()
    assert abs(frac - (ids == 42).mean()) < 0.02


def test_size_zero_is_a_no_op():
    image, ids = _scene()
    out_img, out_ids = apply_transforms(image, ids, [ResizeShortestEdge((0,), 1000)], None)
    assert np.array_equal(out_img, image) and np.array_equal(out_ids, ids)


def test_flip_is_applied_to_both():
    image, ids = _scene()
    img_h, ids_h = apply_transforms(image, ids, [RandomFlip(1.0, "horizontal")], None)
    assert np.array_equal(img_h, image[:, ::-1]) and np.array_equal(ids_h, ids[:, ::-1])
    img_v, ids_v = apply_transforms(image, ids, [RandomFlip(1.0, "vertical")], None)
    assert np.array_equal(img_v, image[::-1]) and np.array_equal(ids_v, ids[::-1])


def test_random_flip_is_a_function_of_the_rng():
    image, ids = _scene()
    flips = []
    for seed in range(40):
        a, b = (apply_transforms(image, ids, [RandomFlip(0.5)], np.random.default_rng(seed)) for _ in range(2))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        flipped = np.array_equal(a[1], ids[:, ::-1])
        assert flipped == np.array_equal(a[0], image[:, ::-1])
        flips.append(flipped)
    assert 5 < sum(flips) < 35


def test_random_transforms_need_an_rng():
    image, ids = _scene()
    with pytest.raises(ValueError, match="rng"):
        apply_transforms(image, ids, [RandomFlip(0.5)], None)
    with pytest.raises(ValueError, match="rng"):
        apply_transforms(image, ids, [ResizeShortestEdge((10, 20), 100)], None)


def test_build_transforms_from_config():
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (352, 384)
    cfg.INPUT.MAX_SIZE_TRAIN = 854
    cfg.INPUT.MIN_SIZE_TEST = 400
    cfg.INPUT.MAX_SIZE_TEST = 666
    train = build_transforms(cfg, True)
    assert train == [ResizeShortestEdge((352, 384), 854, "choice"), RandomFlip(0.5, "horizontal")]
    assert build_transforms(cfg, False) == [ResizeShortestEdge((400,), 666, "choice")]
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "range"
    assert build_transforms(cfg, True) == [ResizeShortestEdge((352, 384), 854, "range")]
    cfg.INPUT.RANDOM_FLIP = "diagonal"
    with pytest.raises(ValueError, match="RANDOM_FLIP"):
        build_transforms(cfg, True)
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.CROP.ENABLED = True
    with pytest.raises(ValueError, match="CROP"):
        build_transforms(cfg, True)
