"""The static (fixed-shape) inference equals a port of the official dynamic inference.

Both run on the same head outputs of calibrated random-weight models, over seeds, image sizes and threshold settings,
including the empty cases. The oracle is tests/pfcn/oracle.py.

Expectations: the same segments, categories and instances, and at least 99.998 % identical panoptic pixels (on the
small images of the default run that means every pixel). What may still differ is rounding at a true tie: the
resize back to the original size follows the official two interpolations with PyTorch's own taps, but PyTorch's
x86-64 kernel fuses each ``a * w0 + b * w1`` into one multiply-add, which a static ONNX graph cannot express, so a
value may differ in its last bit and flip a pixel sitting exactly on the 0.4 mask threshold or on a stuff argmax tie
(``test_resize_rounding_differs_only_in_the_last_bit`` measures it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfcn.config import load_config
from pfcn.inference import InferenceParams, original_size_passes, postprocess, to_original_size
from pfcn.model import build_model
from pfcn.predictor import to_canvas
from pfcn.random_init import calibrate_random_model

from .oracle import _to_original, oracle_inference
from .parity import (R50_CONFIG, REPO, SMALL_CONFIG, calibrated_model, match_panoptic, sample_images,
                     synthetic_image)

# Panoptic pixels identical after matching segment ids. The R50 cases reach 99.9989-99.9998 % at the official size
# and 99.9985 % on the real photo at size 400: the rest comes from the stride-4 thing probabilities, which differ in
# their last bits because pfcn embeds kernels with F.linear where the official code runs the 1x1 Conv2d.
PIXEL_AGREEMENT = 0.99998
SEMANTIC_AGREEMENT = 0.9999  # random-weight stuff maps are near-tied in many pixels: the fused multiply-add shows there
MASK_DISAGREEMENT = 1e-5  # thing-mask pixels differing, over all instances

THRESHOLD_SETS = [
    [],  # official defaults of the config
    ["MODEL.POSITION_HEAD.THING.THRES", "0.2", "MODEL.POSITION_HEAD.STUFF.THRES", "0.1"],  # FAST
    ["MODEL.INFERENCE.INST_THRES", "0.5", "MODEL.INFERENCE.SIMILAR_THRES", "0.8"],
    ["MODEL.INFERENCE.COMBINE.INST_THRESH", "0.5", "MODEL.INFERENCE.COMBINE.OVERLAP_THRESH", "0.3",
     "MODEL.INFERENCE.CLASS_SPECIFIC", "False"],
    ["MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT", "2000", "MODEL.INFERENCE.SIMILAR_THRES", "0.97"],
]
EMPTY_SETS = {
    "no_things": ["MODEL.POSITION_HEAD.THING.THRES", "0.999"],
    "no_stuff": ["MODEL.POSITION_HEAD.STUFF.THRES", "0.999"],
    "nothing": ["MODEL.POSITION_HEAD.THING.THRES", "0.999", "MODEL.POSITION_HEAD.STUFF.THRES", "0.999"],
    "no_instance_after_rescore": ["MODEL.INFERENCE.INST_THRES", "1.0"],  # empty masks -> rescored to 0
}


def run_both(model, cfg, image: np.ndarray):
    """Static outputs and oracle outputs for one image, from the same head outputs."""
    canvas, sizes = to_canvas([image])
    net = model.network_size(*image.shape[:2])
    with torch.no_grad():
        x, resized = model.preprocess(canvas, sizes, net)
        heads = model.forward_features(x)
        static = postprocess(heads, model.thing_generator, model.stuff_generator, resized, sizes,
                             tuple(image.shape[:2]), InferenceParams.from_cfg(cfg))
        oracle = oracle_inference(model.thing_generator.embed_extractor, model.stuff_generator.embed_extractor,
                                  heads, tuple(resized[0].tolist()), tuple(image.shape[:2]), cfg)
    return {k: v[0].numpy() for k, v in static.items()}, oracle


def compare(static: dict, oracle: dict, label: str) -> dict:
    """Assert the tightened agreement and return the measured differences (pixel counts)."""
    valid = static["instance_valid"]
    o_inst = oracle["instances"]
    o_classes = np.asarray(o_inst["classes"]).reshape(-1)
    assert valid.sum() == len(o_classes), f"{label}: {valid.sum()} instances vs oracle {len(o_classes)}"
    np.testing.assert_array_equal(static["instance_classes"][valid], o_classes, err_msg=label)
    np.testing.assert_allclose(static["instance_scores"][valid], np.asarray(o_inst["scores"]).reshape(-1),
                               rtol=1e-4, atol=1e-6, err_msg=label)
    masks_static, masks_oracle = static["instance_masks"][valid], np.asarray(o_inst["masks"])
    mask_diff = int(np.logical_xor(masks_static, masks_oracle).sum())
    assert mask_diff <= MASK_DISAGREEMENT * max(masks_oracle.size, 1), f"{label}: {mask_diff} mask pixels differ"

    sem_oracle = oracle["sem_seg"].argmax(0).numpy()
    v = static["segment_valid"]
    segs_static = {int(i): (int(c), bool(t)) for i, c, t in
                   zip(static["segment_ids"][v], static["segment_classes"][v], static["segment_isthing"][v])}
    segs_oracle = {int(s["id"]): (int(s["category_id"]), bool(s["isthing"])) for s in oracle["segments_info"]}
    agreement = match_panoptic(static["panoptic"], segs_static, oracle["panoptic_seg"].numpy(), segs_oracle,
                               static["semantic"], sem_oracle)
    assert agreement.unmatched_a == 0 and agreement.unmatched_b == 0, f"{label}: {agreement}"
    assert agreement.category_mismatch == 0, f"{label}: {agreement}"
    assert agreement.pixel_agreement >= PIXEL_AGREEMENT, f"{label}: {agreement}"
    assert agreement.semantic_agreement >= SEMANTIC_AGREEMENT, f"{label}: {agreement}"
    # the segment table agrees with the id map it describes
    for sid, area in zip(static["segment_ids"][v], static["segment_areas"][v]):
        assert (static["panoptic"] == sid).sum() == area, f"{label}: segment {sid} area"
    pixels = static["panoptic"].size
    return {"panoptic": round((1 - agreement.pixel_agreement) * pixels), "semantic": int((static["semantic"]
            != sem_oracle).sum()), "masks": mask_diff, "pixels": pixels}


SIZES = [(96, 128), (130, 97), (64, 200), (160, 160), (45, 61)]


@pytest.mark.parametrize("seed", range(10))
def test_small_model_matches_oracle(seed):
    rng = np.random.default_rng(seed)
    h, w = SIZES[seed % len(SIZES)]
    images = [synthetic_image(h, w, seed), synthetic_image(h, w, seed + 100)]
    thresholds = THRESHOLD_SETS[seed % len(THRESHOLD_SETS)]
    model, cfg = calibrated_model(SMALL_CONFIG, seed, images, thresholds)
    total_instances = 0
    for k, image in enumerate(images):
        static, oracle = run_both(model, cfg, image)
        compare(static, oracle, f"seed {seed} image {k} size {image.shape[:2]} {thresholds}")
        total_instances += int(static["instance_valid"].sum())
    assert total_instances > 0 or rng is None  # the calibrated model must exercise the thing path


@pytest.mark.parametrize("case", sorted(EMPTY_SETS))
def test_empty_cases_match_oracle(case):
    image = synthetic_image(120, 150, 7)
    model, cfg = calibrated_model(SMALL_CONFIG, 7, [image], EMPTY_SETS[case])
    static, oracle = run_both(model, cfg, image)
    compare(static, oracle, case)
    if case in ("no_things", "nothing", "no_instance_after_rescore"):
        assert not static["instance_valid"].any()
    if case in ("no_stuff", "nothing"):
        assert (static["semantic"] == 0).all()
    if case == "nothing":
        assert (static["panoptic"] == 0).all()


def test_r50_matches_oracle_on_real_photo():
    images = sample_images()
    # a smaller test size keeps the R50 forward to a few seconds on 2 cores; the algorithm is the same
    model, cfg = calibrated_model(R50_CONFIG, 0, images, ["INPUT.MIN_SIZE_TEST", "400", "INPUT.MAX_SIZE_TEST", "666",
                                                          "MODEL.INFERENCE.COMBINE.STUFF_AREA_LIMIT", "1024"])
    for k, image in enumerate(images):
        static, oracle = run_both(model, cfg, image)
        assert static["segment_valid"].sum() >= 2, "the calibrated R50 should produce several segments"
        compare(static, oracle, f"R50 photo {k}")


def calibrated_r50(config, image: np.ndarray, seed: int):
    """An R50-type model calibrated on ``image`` at test size 400 (a fraction of the memory), run at the config's."""
    cfg = load_config(config, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    keep = model.min_size_test, model.max_size_test
    model.min_size_test, model.max_size_test = 400, 666
    calibrate_random_model(model, [image], seed=seed)
    model.min_size_test, model.max_size_test = keep
    return model, cfg


# Original sizes at the official test size (shortest edge 800): measured differences with pfcn's embedding as of
# this test (panoptic / semantic / thing-mask pixels): 2 / 7 / 5, 1 / 6 / 5, 3 / 16 / 7, Star 1 / 15 / 6.
R50_CASES = {"480x640": (R50_CONFIG, (480, 640), 0), "600x900": (R50_CONFIG, (600, 900), 1),
             "512x512": (R50_CONFIG, (512, 512), 2),
             "star_photo": (REPO / "configs" / "PanopticFCN-Star-R50-3x.yaml", None, 3)}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(R50_CASES))
def test_r50_at_official_size_matches_oracle(case):
    config, size, seed = R50_CASES[case]
    image = synthetic_image(*size, seed) if size is not None else sample_images()[0]
    model, cfg = calibrated_r50(config, image, seed)
    static, oracle = run_both(model, cfg, image)
    assert static["segment_valid"].sum() >= 2, "the calibrated model should produce several segments"
    compare(static, oracle, f"R50 {case}")


def test_resize_rounding_differs_only_in_the_last_bit():
    """The static resize against the official two ``F.interpolate`` calls, on the very same stride-4 maps.

    Same taps: every value is within a few float32 ulps of the official one (the fused multiply-add of PyTorch's
    kernel rounds once where the gathers round twice, and the graph runs both column passes before the row
    passes); thresholded masks agree but for values on the threshold. Measured here: 42 % of the values differ in
    the last bits (at most 2 ulps of 1.0), no mask pixel flips.
    """
    gen = torch.Generator().manual_seed(0)
    resized, original, feat = (150, 220), (171, 250), (40, 56)
    maps = torch.rand(1, 30, *feat, generator=gen)
    passes = original_size_passes(torch.tensor([resized]), torch.tensor([original]), (180, 256), 4)
    ours = torch.cat([part for _, part in to_original_size(maps, passes)], dim=1)[0]
    assert not ours[:, original[0]:].any() and not ours[:, :, original[1]:].any()  # padding stays zero
    ours = ours[:, : original[0], : original[1]]
    official = _to_original(maps, 4, resized, original)
    assert (ours - official).abs().max() <= 4 * torch.finfo(torch.float32).eps  # maps in [0, 1]: a few last bits
    assert torch.equal(ours > 0.4, official > 0.4)
    differing = (ours != official).float().mean().item()
    assert differing < 0.5, differing


def test_batch_equals_single_images():
    """Images sharing a network canvas give in a batch exactly what they give alone."""
    a, b = synthetic_image(100, 150, 1), synthetic_image(98, 147, 2)
    model, _ = calibrated_model(SMALL_CONFIG, 3, [a, b])
    assert model.network_size(100, 150) == model.network_size(98, 147)
    canvas, sizes = to_canvas([a, b])
    net = model.network_size(100, 150)
    with torch.no_grad():
        batch = model(canvas, sizes, net)
        singles = [model(*to_canvas([im]), net) for im in (a, b)]
    for i, (single, im) in enumerate(zip(singles, (a, b))):
        h, w = im.shape[:2]
        for name in ("panoptic", "semantic"):
            np.testing.assert_array_equal(batch[name][i, :h, :w].numpy(), single[name][0].numpy(), err_msg=name)
        assert (batch["panoptic"][i, h:, :] == 0).all() and (batch["panoptic"][i, :, w:] == 0).all()
        for name in ("instance_scores", "instance_classes", "instance_valid", "segment_ids", "segment_areas"):
            np.testing.assert_allclose(batch[name][i].numpy(), single[name][0].numpy(), rtol=1e-5, err_msg=name)
