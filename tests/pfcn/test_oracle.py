"""Sanity tests of the official-inference oracle on hand-built head outputs with known answers.

Scene (padded and resized image 64x64 unless a test says otherwise; levels 8x8, 4x4, 2x2, 1x1, 1x1; encoded
16x16; kernels and embeddings 8-d with identity 1x1 convs, so a thing kernel e_k selects encoded channel k):
- thing A: class 0 peak (logit 6) at P3 (5, 1), kernel e_0; encoded channel 0 = +20 on rows 8..11;
- thing B: class 1 peak (logit 5) at P3 (5, 5), kernel e_1; encoded channel 1 = +20 on rows 12..13;
- stuff label 0 ("things") kept only on P5 where all kernels are 0 -> probability 0.5 everywhere;
- stuff label 1 on P3 rows 0..3 (32 of 64 pixels), kernel weights 2 * e_4 there -> level kernel
  32 * 2 / 64 = e_4 (official: sum over the class pixels / all h*w); encoded channel 4 = +1 on rows 0..7,
  -1 below, so label 1 has probability sigmoid(1) on the top half and wins there;
- stuff label 2 on P3 pixel (7, 7), kernel weights 64 * e_5 -> e_5; encoded channel 5 = +20 on rows 14..15
  -> the last 8 rows (512 pixels) at full resolution.
Everything else has logits -12. The regions are full-width stripes: a step of the stride-4 map resizes to an
exact 4x step for thresholds 0.4 and 0.5, whereas the inner corner of a 2-D block would be cut off.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from .oracle import OfficialInferenceError, _fuse_thing_kernels, _level_stuff, oracle_inference

NEG = -12.0
C = 8  # kernel and embedding width in these tests
LEVEL_SIZES = [(8, 8), (4, 4), (2, 2), (1, 1), (1, 1)]


def make_cfg(**over: object) -> SimpleNamespace:
    """Official inference keys with official defaults, except a small stuff area limit and 3 stuff classes."""
    ns = SimpleNamespace
    return ns(
        MODEL=ns(
            SEMANTIC_FPN=ns(COMMON_STRIDE=4),
            POSITION_HEAD=ns(
                THING=ns(THRES=0.05, TOP_NUM=over.get("top_num", 100)),
                STUFF=ns(THRES=0.05, NUM_CLASSES=over.get("num_stuff", 3), WITH_THING=over.get("with_thing", True)),
            ),
            INFERENCE=ns(
                INST_THRES=0.4,
                SIMILAR_THRES=0.9,
                SIMILAR_TYPE=over.get("sim_type", "cosine"),
                CLASS_SPECIFIC=over.get("class_specific", True),
                COMBINE=ns(OVERLAP_THRESH=0.5, STUFF_AREA_LIMIT=over.get("area_limit", 100), INST_THRESH=0.2),
            ),
        )
    )


def identity_conv(bias: float = 0.0) -> nn.Conv2d:
    conv = nn.Conv2d(C, C, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(C).reshape(C, C, 1, 1))
        conv.bias.fill_(bias)
    return conv


def empty_feats(num_things: int = 3, num_stuff: int = 3, enc_hw: tuple[int, int] = (16, 16)) -> SimpleNamespace:
    """Every logit far below threshold, every kernel and encoded value zero."""
    return SimpleNamespace(
        centers=[torch.full((1, num_things, h, w), NEG) for h, w in LEVEL_SIZES],
        regions=[torch.full((1, num_stuff, h, w), NEG) for h, w in LEVEL_SIZES],
        weights=[torch.zeros(1, C, h, w) for h, w in LEVEL_SIZES],
        encoded=torch.zeros(1, C, *enc_hw),
    )


def scene() -> SimpleNamespace:
    f = empty_feats()
    p3c, p3r, p3w, enc = f.centers[0], f.regions[0], f.weights[0], f.encoded
    # things
    p3c[0, 0, 5, 1] = 6.0
    p3w[0, 0, 5, 1] = 1.0
    p3c[0, 1, 5, 5] = 5.0
    p3w[0, 1, 5, 5] = 1.0
    enc[0, 0] = -20.0
    enc[0, 0, 8:12, :] = 20.0
    enc[0, 1] = -20.0
    enc[0, 1, 12:14, :] = 20.0
    # stuff label 0: kept on P5 only, zero kernel there
    f.regions[2][0, 0] = 4.0
    # stuff label 1: top half of P3
    p3r[0, 1, 0:4, :] = 10.0
    p3w[0, 4, 0:4, :] = 2.0
    enc[0, 4] = -1.0
    enc[0, 4, 0:8, :] = 1.0
    # stuff label 2: one P3 pixel
    p3r[0, 2, 7, 7] = 10.0
    p3w[0, 5, 7, 7] = 64.0
    enc[0, 5] = -20.0
    enc[0, 5, 14:16, :] = 20.0
    return f


def block(rows: slice, cols: slice, shape: tuple[int, int] = (64, 64)) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    m[rows, cols] = True
    return m


def peak_score(logit: float, pool: int) -> float:
    """Centre score of an isolated peak: (p + avgpool(p)) / 2 with the zero padding counted."""
    sig = 1.0 / (1.0 + math.exp(-logit))
    return (sig + sig / pool**2) / 2.0


def run(feats: SimpleNamespace, cfg: SimpleNamespace | None = None, img=(64, 64), ori=(64, 64), **kw) -> dict:
    return oracle_inference(identity_conv(), identity_conv(), feats, img, ori, cfg or make_cfg(), **kw)


THING_A = block(slice(32, 48), slice(0, 64))
THING_B = block(slice(48, 56), slice(0, 64))
STUFF_1 = block(slice(0, 32), slice(0, 64))
STUFF_2 = block(slice(56, 64), slice(0, 64))


def test_two_peaks_give_two_instances_and_full_panoptic() -> None:
    out = run(scene())
    inst = out["instances"]
    # isolated P3 peaks; P3 pool 3x3 (the 8 neighbours are sigmoid(-12), negligible)
    assert inst["classes"].tolist() == [0, 1]
    assert inst["scores"].tolist() == pytest.approx([peak_score(6, 3), peak_score(5, 3)], abs=1e-4)
    assert torch.equal(inst["masks"][0], THING_A)
    assert torch.equal(inst["masks"][1], THING_B)

    pan = out["panoptic_seg"]
    assert pan.dtype == torch.int32 and pan.shape == (64, 64)
    segs = out["segments_info"]
    assert [(s["id"], s["isthing"], s["category_id"]) for s in segs] == [
        (1, True, 0),
        (2, True, 1),
        (3, False, 1),
        (4, False, 2),
    ]
    assert [s["instance_id"] for s in segs[:2]] == [0, 1]
    assert segs[2]["area"] == 2048 and segs[3]["area"] == 512
    expected = torch.zeros(64, 64, dtype=torch.int32)
    expected[THING_A], expected[THING_B], expected[STUFF_1], expected[STUFF_2] = 1, 2, 3, 4
    assert torch.equal(pan, expected)


def test_semantic_map_uses_sum_over_all_level_pixels_for_stuff_kernels() -> None:
    # label 1 kernel = 32 pixels * 2 / 64 = e_4 -> sigmoid(+-1); a masked mean would give sigmoid(+-2)
    sem = run(scene())["sem_seg"]
    assert sem.shape == (3, 64, 64)
    s1 = 1.0 / (1.0 + math.exp(-1.0))
    assert sem[1, 4:28, :].min().item() == pytest.approx(s1, abs=1e-6)
    assert sem[1, 36:60, :].max().item() == pytest.approx(1.0 - s1, abs=1e-6)
    assert torch.allclose(sem[0], torch.full((64, 64), 0.5))
    assert sem[2][STUFF_2].min().item() > 0.6 and sem[2][~STUFF_2].max().item() < 0.4
    assert (sem.argmax(0) == 1).sum().item() == 2048 and (sem.argmax(0)[STUFF_2] == 2).all()


def test_level_stuff_kernel_is_class_sum_over_all_pixels_and_score_is_class_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 4, 5, 6, generator=gen) * 3
    weights = torch.randn(1, 7, 5, 6, generator=gen)
    kernels, scores, labels = _level_stuff(logits, weights, num_classes=4, thres=0.0, with_thing=True)
    prob = logits.sigmoid()[0]
    label_map = prob.argmax(0)
    present = sorted(set(label_map.flatten().tolist()))
    assert labels.tolist() == present
    for k, lab in enumerate(present):
        pix = label_map == lab
        assert torch.allclose(kernels[k, :, 0, 0], weights[0][:, pix].sum(1) / 30, atol=1e-6)
        assert scores[k].item() == pytest.approx(prob[lab][pix].mean().item(), abs=1e-6)
    kernels_nt, _, labels_nt = _level_stuff(logits, weights, num_classes=4, thres=0.0, with_thing=False)
    assert labels_nt.tolist() == [p + 1 for p in present]  # labels shift when the stuff head has no thing class
    assert torch.equal(kernels_nt, kernels)


def test_stuff_region_below_area_limit_is_dropped() -> None:
    out = run(scene(), make_cfg(area_limit=513))
    stuff = [s for s in out["segments_info"] if not s["isthing"]]
    assert [(s["category_id"], s["area"]) for s in stuff] == [(1, 2048)]
    assert (out["panoptic_seg"][STUFF_2] == 0).all()  # the 512-pixel stripe stays void
    out = run(scene(), make_cfg(area_limit=512))  # area == limit is kept (official: skip if area < limit)
    assert [s["category_id"] for s in out["segments_info"] if not s["isthing"]] == [1, 2]


def test_identical_kernels_of_one_class_are_fused() -> None:
    f = scene()
    f.centers[1][0, 0, 3, 0] = 4.0  # class 0 again, on P4, weaker, kernel parallel to thing A's
    f.weights[1][0, 0, 3, 0] = 2.0
    out = run(f)
    assert out["instances"]["classes"].tolist() == [0, 1]
    assert out["instances"]["scores"].tolist() == pytest.approx([peak_score(6, 3), peak_score(5, 3)], abs=1e-4)
    assert torch.equal(out["instances"]["masks"][0], THING_A)


def test_identical_kernels_of_two_classes_stay_apart_but_overlap_rule_drops_one() -> None:
    f = scene()
    f.centers[1][0, 2, 3, 0] = 4.0  # class 2, same kernel direction as thing A
    f.weights[1][0, 0, 3, 0] = 2.0
    out = run(f)
    inst = out["instances"]
    assert inst["classes"].tolist() == [0, 1, 2]
    assert torch.equal(inst["masks"][2], THING_A)
    things = [(s["category_id"], s["instance_id"]) for s in out["segments_info"] if s["isthing"]]
    assert things == [(0, 0), (1, 1)]  # instance 2 lies fully on instance 0 (overlap 1.0 > 0.5)
    # without class-specific fusion the same input fuses into thing A
    out = run(f, make_cfg(class_specific=False))
    assert out["instances"]["classes"].tolist() == [0, 1]


def test_fusion_gives_a_shared_kernel_to_its_first_claimant_only() -> None:
    deg = math.pi / 180
    a = [1.0, 0.0]
    b = [math.cos(50 * deg), math.sin(50 * deg)]  # cos(a, b) = 0.64: both survive
    c = [math.cos(25 * deg), math.sin(25 * deg)]  # cos 0.906 to both a and b: claimed by both
    meta = torch.tensor([a, b, c])
    fused, classes, scores = _fuse_thing_kernels(
        meta, torch.tensor([3, 3, 3]), torch.tensor([0.9, 0.8, 0.7]), sim_thres=0.9, class_specific=True
    )
    assert torch.allclose(fused, torch.stack([(meta[0] + meta[2]) / 2, meta[1]]))
    assert classes.tolist() == [3, 3]
    assert scores.tolist() == pytest.approx([0.9, 0.8])


def test_small_levels_keep_at_most_h_times_w_candidates_and_count_padding_in_avgpool() -> None:
    f = scene()
    f.centers[0].fill_(NEG)
    # P6 and P7 (1x1, pool 5, zero padding counted): several classes fire at the single position
    f.centers[3][0, :, 0, 0] = torch.tensor([5.0, 4.0, 3.0])
    f.weights[3][0, 0, 0, 0] = 1.0
    f.centers[4][0, :, 0, 0] = torch.tensor([1.0, 3.0, 2.0])
    f.weights[4][0, 1, 0, 0] = 1.0
    out = run(f)
    inst = out["instances"]
    # K = min(h*w, TOP_NUM // 2) = 1 per level: one candidate each, the best class
    assert inst["classes"].tolist() == [0, 1]
    assert inst["scores"].tolist() == pytest.approx([peak_score(5, 5), peak_score(3, 5)], abs=1e-4)
    assert torch.equal(inst["masks"][0], THING_A) and torch.equal(inst["masks"][1], THING_B)


def test_only_3x3_local_maxima_are_candidates() -> None:
    f = scene()
    f.centers[0][0, 1, 5, 5] = NEG  # drop thing B
    f.centers[0][0, 0, 5, 2] = 5.0  # a weaker class-0 neighbour of thing A's peak, with thing B's kernel
    f.weights[0][0, 1, 5, 2] = 1.0
    out = run(f)
    assert out["instances"]["classes"].tolist() == [0]
    assert torch.equal(out["instances"]["masks"][0], THING_A)


def test_top_num_caps_candidates_per_level() -> None:
    f = scene()
    f.centers[0][0, 2, 0, 7] = 7.0  # a third, strongest peak whose mask is thing B's region
    f.weights[0][0, 1, 0, 7] = 1.0
    out = run(f, make_cfg(top_num=4))  # K = 2 per level: the class-1 peak (weakest) is lost
    assert out["instances"]["classes"].tolist() == [2, 0]


def test_no_instance_survives_rescoring() -> None:
    f = scene()
    f.encoded[0, 0:2] = -20.0  # both thing masks empty -> seg score 0 -> below the 0.05 floor
    out = run(f)
    assert out["instances"]["masks"].shape == (0, 64, 64)
    assert out["instances"]["scores"].numel() == 0 and out["instances"]["classes"].numel() == 0
    assert [(s["isthing"], s["category_id"]) for s in out["segments_info"]] == [(False, 1), (False, 2)]
    assert (out["panoptic_seg"][THING_A | THING_B] == 0).all()


def test_no_thing_and_only_the_thing_stuff_class_gives_an_empty_panoptic_map() -> None:
    f = empty_feats()
    f.regions[2][0, 0] = 4.0  # stuff label 0 only: the official code handles this
    out = run(f, strict=True)
    assert out["segments_info"] == []
    assert not out["panoptic_seg"].any()
    assert out["instances"]["masks"].shape == (0, 64, 64)
    assert torch.allclose(out["sem_seg"][0], torch.full((64, 64), 0.5)) and not out["sem_seg"][1:].any()


def test_everything_below_thresholds() -> None:
    # no stuff candidate at all: the official StuffGenerator fails; strict mode says so
    with pytest.raises(OfficialInferenceError, match="STUFF.THRES"):
        run(empty_feats(), strict=True)
    out = run(empty_feats())
    assert out["segments_info"] == [] and not out["panoptic_seg"].any()
    assert out["sem_seg"].shape == (3, 64, 64) and not out["sem_seg"].any()
    assert out["instances"]["masks"].shape == (0, 64, 64)


def test_stuff_head_without_thing_class_shifts_labels() -> None:
    f = empty_feats(num_stuff=2)
    f.regions[0][0, 0] = 10.0  # stuff-head channel 0 -> label 1
    out = run(f, make_cfg(num_stuff=2, with_thing=False))
    sem = out["sem_seg"]
    assert sem.shape == (3, 64, 64)
    assert torch.allclose(sem[1], torch.full((64, 64), 0.5)) and not sem[0].any() and not sem[2].any()
    assert out["segments_info"] == [{"id": 1, "isthing": False, "category_id": 1, "area": 4096}]


def test_outputs_are_cropped_to_image_and_resized_to_original() -> None:
    # the padded 64x64 input holds a 48x64 image shown at 96x128: thing A (rows 32..47) ends up on rows 64..95,
    # thing B (rows 48..55) lies in the padding; it stays an instance (rescoring happens at stride 4) with an
    # empty mask, which the panoptic merge skips
    out = run(scene(), img=(48, 64), ori=(96, 128))
    assert out["panoptic_seg"].shape == (96, 128) and out["sem_seg"].shape == (3, 96, 128)
    masks = out["instances"]["masks"]
    assert masks.shape == (2, 96, 128) and out["instances"]["classes"].tolist() == [0, 1]
    rows = masks[0].any(1).nonzero().flatten()
    assert rows.min().item() == pytest.approx(64, abs=1) and rows.max().item() == 95
    assert masks[0][65:].all()  # full width below the top edge
    assert not masks[1].any()
    assert [s["category_id"] for s in out["segments_info"] if s["isthing"]] == [0]
    assert [s["category_id"] for s in out["segments_info"] if not s["isthing"]] == [1]


def test_embedding_width_is_taken_from_the_convs() -> None:
    f = scene()
    wide = nn.Conv2d(C, 16, kernel_size=1)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:C, :, 0, 0] = torch.eye(C)
        wide.bias.zero_()
    f.encoded = torch.cat([f.encoded, torch.zeros(1, 8, 16, 16)], dim=1)
    out = oracle_inference(wide, wide, f, (64, 64), (64, 64), make_cfg())
    assert torch.equal(out["instances"]["masks"][0], THING_A)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: setattr(f, "encoded", f.encoded.repeat(2, 1, 1, 1)), "feats.encoded"),
        (lambda f: f.centers.pop(), "feats.centers: expected 5 levels"),
        (lambda f: f.regions.__setitem__(1, f.regions[1][:, :2]), "NUM_CLASSES=3"),
        (lambda f: f.weights.__setitem__(0, f.weights[0].double()), r"feats.weights\[0\]: expected float32"),
    ],
)
def test_bad_inputs_name_the_field(mutate, match: str) -> None:
    f = scene()
    mutate(f)
    with pytest.raises(ValueError, match=match):
        run(f)


def test_l2_similarity_is_refused() -> None:
    with pytest.raises(ValueError, match="SIMILAR_TYPE='L2'"):
        run(scene(), make_cfg(sim_type="L2"))
