"""The static (fixed-shape) inference equals a port of the official dynamic inference.

Both run on the same head outputs of calibrated random-weight models, over seeds, image sizes and threshold settings,
including the empty cases. The oracle is tests/pfcn/oracle.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pfcn.inference import InferenceParams, postprocess
from pfcn.predictor import to_canvas

from .oracle import oracle_inference
from .parity import (R50_CONFIG, SMALL_CONFIG, calibrated_model, mask_iou, match_panoptic, sample_images,
                     synthetic_image)

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


def compare(static: dict, oracle: dict, label: str) -> None:
    valid = static["instance_valid"]
    o_inst = oracle["instances"]
    o_classes = np.asarray(o_inst["classes"]).reshape(-1)
    assert valid.sum() == len(o_classes), f"{label}: {valid.sum()} instances vs oracle {len(o_classes)}"
    np.testing.assert_array_equal(static["instance_classes"][valid], o_classes, err_msg=label)
    np.testing.assert_allclose(static["instance_scores"][valid], np.asarray(o_inst["scores"]).reshape(-1),
                               rtol=1e-4, atol=1e-6, err_msg=label)
    for i, (a, b) in enumerate(zip(static["instance_masks"][valid], np.asarray(o_inst["masks"]))):
        assert mask_iou(a, b) >= 0.99, f"{label}: instance {i} mask IoU {mask_iou(a, b):.4f}"

    sem_oracle = oracle["sem_seg"].argmax(0).numpy()
    v = static["segment_valid"]
    segs_static = {int(i): (int(c), bool(t)) for i, c, t in
                   zip(static["segment_ids"][v], static["segment_classes"][v], static["segment_isthing"][v])}
    segs_oracle = {int(s["id"]): (int(s["category_id"]), bool(s["isthing"])) for s in oracle["segments_info"]}
    agreement = match_panoptic(static["panoptic"], segs_static, oracle["panoptic_seg"].numpy(), segs_oracle,
                               static["semantic"], sem_oracle)
    assert agreement.unmatched_a == 0 and agreement.unmatched_b == 0, f"{label}: {agreement}"
    assert agreement.category_mismatch == 0, f"{label}: {agreement}"
    assert agreement.pixel_agreement >= 0.999, f"{label}: {agreement}"
    assert agreement.semantic_agreement >= 0.999, f"{label}: {agreement}"
    # the segment table agrees with the id map it describes
    for sid, area in zip(static["segment_ids"][v], static["segment_areas"][v]):
        assert (static["panoptic"] == sid).sum() == area, f"{label}: segment {sid} area"


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
