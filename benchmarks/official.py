"""The official *dynamic* PanopticFCN inference, ported op for op: the baseline of pfcn-bench and the oracle of
pfcn's tests.

pfcn's own inference is a static (fixed-shape) reformulation; this module is the yardstick it is compared against,
for results (tests/pfcn/test_oracle.py, test_static_vs_oracle.py) and for speed (the "official" row of pfcn-bench).
It reproduces, in the official order and with the official tensor ops, the behaviour of `yanwei-li/PanopticFCN`:

- `panopticfcn/panoptic_seg.py`: `inference`, `inference_single_level`, `process_inst`,
  `combine_thing_and_stuff`;
- `panopticfcn/head.py`: `ThingGenerator` / `StuffGenerator` `forward`, `kernel_fusion`, `cal_similarity`;
- `panopticfcn/utils.py`: `topk_score`, `gather_feature`;
- detectron2's test-time input path (`OfficialBaseline`): PIL bilinear shortest-edge resize of the uint8 image on
  the host, normalisation, zero padding to a multiple of 32 (`ImageList`).

Same ops matter because ties (top-k, argsort, argmax) and float rounding at thresholds are decided by them.
Facts worth knowing when reading the official code:

- the centre average pool counts the zero padding (`F.avg_pool2d` default `count_include_pad=True`);
- the cross-class top-k of a level keeps `min(h*w, TOP_NUM // 2)`, not `TOP_NUM // 2`;
- a stuff kernel is `adaptive_avg_pool2d(one_hot * weights)`: the sum over the class's pixels divided by
  *all* h*w pixels of the level, not a masked mean;
- in thing kernel fusion a kernel claimed by several survivors is averaged into the first claimant only;
- the instance score filter `>= 0.05` is a literal, independent of `THING.THRES`;
- when no stuff class passes `STUFF.THRES` on any level the official code crashes (it feeds a Python list to
  the stuff 1x1 conv). The oracle then, by default, continues as if the stuff candidates were empty tensors
  (all-zero semantic map, no stuff segment); `strict=True` raises instead.

Only batch size 1 is handled, as in the official inference.
"""

from __future__ import annotations

import time
from typing import Any, MutableMapping, Protocol, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["OfficialBaseline", "OfficialInferenceError", "oracle_inference", "POOL_SIZES"]

# Per-level centre smoothing kernel sizes for P3..P7 (official `inference`: `pool_size = [3,3,3,5,5]`).
POOL_SIZES: tuple[int, ...] = (3, 3, 3, 5, 5)
# Literal instance score floor of official `process_inst` (not a config key).
_MIN_INSTANCE_SCORE = 0.05


class OfficialInferenceError(RuntimeError):
    """Raised with `strict=True` where the official code itself would fail."""


class HeadOutputsLike(Protocol):
    """Anything shaped like pfcn's `HeadOutputs` (B = 1)."""

    centers: Sequence[Tensor]  # 5 x [1, T, h_l, w_l] logits
    regions: Sequence[Tensor]  # 5 x [1, S, h_l, w_l] logits
    weights: Sequence[Tensor]  # 5 x [1, Cw, h_l, w_l] kernel-head output
    encoded: Tensor  # [1, C, H/4, W/4]



def _topk_score(scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """Official `utils.topk_score`: top k per class, then top k over all classes' candidates.

    Args:
        scores: [B, T, h, w] peak-filtered centre scores.
    Returns:
        (score [B, k], flat position index [B, k] int64, class [B, k] int64).
    """
    batch, channel, height, width = scores.shape
    cls_scores, cls_index = torch.topk(scores.reshape(batch, channel, -1), k)  # [B, T, k]
    cls_index = cls_index % (height * width)
    top_scores, flat = torch.topk(cls_scores.reshape(batch, -1), k)  # [B, k]
    top_classes = flat // k  # candidates are grouped k per class
    # official gather_feature: gather along dim 1 of a [B, T*k, 1] view
    top_index = cls_index.view(batch, -1, 1).gather(1, flat.unsqueeze(-1).expand(batch, k, 1))
    return top_scores, top_index.reshape(batch, k), top_classes


def _level_things(
    center_logits: Tensor, weights: Tensor, pool_size: int, top_num: int, thres: float
) -> tuple[Tensor | None, Tensor, Tensor]:
    """Thing candidates of one level (first half of official `inference_single_level`).

    Args:
        center_logits: [1, T, h, w]; weights: [1, Cw, h, w].
    Returns:
        (kernels [1, Cw, n, 1] or None when n == 0, classes [n] int64, scores [n]).
    """
    prob = center_logits.sigmoid()
    pooled = F.avg_pool2d(prob, kernel_size=pool_size, stride=1, padding=(pool_size - 1) // 2)
    prob = (prob + pooled) / 2.0
    local_max = F.max_pool2d(prob, 3, stride=1, padding=1)
    prob = prob * (local_max == prob).float()  # keep peaks (plateaus keep every tie)

    _, _, height, width = prob.shape
    k = min(height * width, top_num // 2)
    score, index, classes = _topk_score(prob, k)
    keep = score > thres
    score, classes, index = score[keep], classes[keep], index[keep]
    if int(keep.sum()) == 0:
        return None, classes, score
    flat_w = weights.reshape(*weights.shape[:2], -1)  # [1, Cw, h*w]
    gather_index = index.unsqueeze(0).unsqueeze(1).expand(*weights.shape[:2], -1)
    kernels = torch.gather(flat_w, dim=2, index=gather_index).unsqueeze(-1)  # [1, Cw, n, 1]
    return kernels, classes, score


def _level_stuff(
    region_logits: Tensor, weights: Tensor, num_classes: int, thres: float, with_thing: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Stuff candidates of one level (second half of official `inference_single_level`).

    Args:
        region_logits: [1, S, h, w]; weights: [1, Cw, h, w].
    Returns:
        (kernels [n, Cw, 1, 1], scores [n], labels [n] int64 ascending; +1 when not `with_thing`).
        A kernel is sum(weights over the class's pixels) / (h * w): `adaptive_avg_pool2d` of the
        one-hot-masked weights averages over the whole level.
    """
    prob = region_logits.sigmoid()
    label = prob.argmax(dim=1)  # [1, h, w]
    present, counts = torch.unique(label, return_counts=True)
    one_hot = F.one_hot(label, num_classes=num_classes).permute(0, 3, 1, 2).contiguous()  # [1, S, h, w]

    score = (prob * one_hot).reshape(1, num_classes, -1)
    score = (score.sum(dim=-1)[:, present] / counts).squeeze(0)  # mean prob over the class's pixels
    one_hot = one_hot[:, present]
    keep = score > thres
    score, present, one_hot = score[keep], present[keep], one_hot[:, keep]

    masked = one_hot.unsqueeze(2) * weights.unsqueeze(1)  # [1, n, Cw, h, w]
    masked = masked.reshape(-1, *weights.shape[-3:])
    kernels = F.adaptive_avg_pool2d(masked, output_size=1)  # [n, Cw, 1, 1]
    if not with_thing:
        present = present + 1
    return kernels, score, present



def _cosine_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Official `cal_similarity(..., "cosine")`: [N, C] x [M, C] -> [N, M], norms clamped at 1e-8."""
    a_unit = a / a.norm(dim=1).unsqueeze(-1).clamp(min=1e-8)
    b_unit = b / b.norm(dim=1).unsqueeze(-1).clamp(min=1e-8)
    return torch.mm(a_unit, b_unit.transpose(0, 1))


def _fuse_thing_kernels(
    meta: Tensor, classes: Tensor, scores: Tensor, sim_thres: float, class_specific: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Official `ThingGenerator.kernel_fusion` on score-sorted kernels.

    Kernel j survives when no earlier kernel claims it (claim: upper-triangular similarity >= thres, and
    same class if class-specific); each survivor becomes the mean of the kernels it claims first.

    Args:
        meta: [N, C] embedded kernels sorted by descending score; classes [N]; scores [N].
    Returns:
        (fused kernels [N', C], classes [N'], scores [N']).
    """
    claims = _cosine_similarity(meta, meta).triu(diagonal=0) >= sim_thres
    if class_specific:
        claims = claims & (classes.unsqueeze(-1) == classes.unsqueeze(0))
    first_claim = torch.cumsum(claims.float(), dim=0) < 2  # column count of claimants so far
    survivors = first_claim.diagonal(0)
    groups = (claims[survivors] & first_claim[survivors]).float()  # [N', N]
    fused = torch.mm(groups, meta) / groups.sum(dim=1, keepdim=True)
    return fused, classes[survivors], scores[survivors]


def _fuse_stuff_kernels(meta: Tensor, labels: Tensor, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Official `StuffGenerator.kernel_fusion`: one kernel and score per label, means over levels.

    Args:
        meta: [M, C]; labels [M]; scores [M].
    Returns:
        (kernels [U, C], unique labels [U] ascending, scores [U]).
    """
    unique = torch.unique(labels)
    groups = (labels.unsqueeze(0) == unique.unsqueeze(1)).float()  # [U, M]
    norm = groups.sum(dim=1, keepdim=True)
    fused = torch.mm(groups, meta) / norm
    fused_scores = torch.mm(groups, scores.unsqueeze(-1)) / norm
    return fused, unique, fused_scores.squeeze(-1)



def _to_original(maps: Tensor, stride: int, img_shape: tuple[int, int], ori_shape: tuple[int, int]) -> Tensor:
    """Official 2-step resize of [1, N, h, w]: stride-x bilinear, crop to img_shape, bilinear to ori_shape.

    Returns [N, H, W] at ori_shape (align_corners=False throughout, as the official code).
    """
    up = F.interpolate(maps, scale_factor=stride, mode="bilinear", align_corners=False)
    up = up[..., : img_shape[0], : img_shape[1]]
    return F.interpolate(up, size=ori_shape, mode="bilinear", align_corners=False)[0]


def _process_instances(
    classes: Tensor,
    scores: Tensor,
    mask_logits: Tensor,
    inst_thres: float,
    top_num: int,
    stride: int,
    img_shape: tuple[int, int],
    ori_shape: tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor] | None:
    """Official `process_inst`: mask rescoring, 0.05 score floor, top `TOP_NUM`, resize, binarise.

    Args:
        classes [N], scores [N], mask_logits [1, N, H/4, W/4].
    Returns:
        (masks bool [K, H, W], classes [K], scores [K]) in descending score order, or None when no
        instance reaches the score floor (the official code then returns empty Instances).
    """
    prob = mask_logits.sigmoid()[0]
    binary = prob > inst_thres
    area = binary.sum((1, 2)).float() + 1e-6
    scores = scores * ((prob * binary.float()).sum((1, 2)) / area)

    order = torch.argsort(scores, descending=True)
    prob, scores, classes = prob[order], scores[order], classes[order]
    keep = scores >= _MIN_INSTANCE_SCORE
    if int(keep.sum()) == 0:
        return None
    prob, scores, classes = prob[keep], scores[keep], classes[keep]

    order = torch.argsort(scores, descending=True)[:top_num]
    prob = prob[order]
    scores = scores[order].reshape(-1)
    classes = classes[order].reshape(-1)
    prob = _to_original(prob.unsqueeze(0), stride, img_shape, ori_shape)
    return prob > inst_thres, classes, scores


def _combine_thing_and_stuff(
    masks: Tensor | None,
    classes: Tensor | None,
    scores: Tensor | None,
    semantic: Tensor,
    overlap_thresh: float,
    stuff_area_limit: int,
    inst_thresh: float,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Official `combine_thing_and_stuff` (panopticapi-style greedy merge).

    Args:
        masks bool [N, H, W], classes [N], scores [N] sorted by descending score (all None: no things);
        semantic: [H, W] int64 argmax of the semantic map (0 = things).
    Returns:
        (panoptic int32 [H, W], segments_info with the official fields).
    """
    panoptic = torch.zeros_like(semantic, dtype=torch.int32)
    segment_id = 0
    segments: list[dict[str, Any]] = []
    if classes is not None and masks is not None and scores is not None:
        keep = scores >= inst_thresh
        if int(keep.sum()) > 0:
            for idx, (mask, cls, score) in enumerate(zip(masks[keep], classes[keep], scores[keep])):
                mask_area = mask.sum().item()
                overlap_area = (mask & (panoptic > 0)).sum().item()
                if mask_area == 0 or overlap_area * 1.0 / mask_area > overlap_thresh:
                    continue
                if overlap_area > 0:
                    mask = mask & (panoptic == 0)
                segment_id += 1
                panoptic[mask] = segment_id
                segments.append(
                    {
                        "id": segment_id,
                        "isthing": True,
                        "score": score.item(),
                        "category_id": int(cls.item()),
                        "instance_id": idx,
                    }
                )
    for label in torch.unique(semantic):
        if label == 0:  # stuff-head label 0 stands for "any thing"
            continue
        mask = (semantic == label) & (panoptic == 0)
        area = mask.sum()
        if area < stuff_area_limit:
            continue
        segment_id += 1
        panoptic[mask] = segment_id
        segments.append(
            {"id": segment_id, "isthing": False, "category_id": int(label.item()), "area": int(area.item())}
        )
    return panoptic, segments



def _check_inputs(feats: HeadOutputsLike, num_stuff: int) -> None:
    """Fail early, naming the offending field, on inputs the official B=1 inference cannot take."""
    for name in ("centers", "regions", "weights"):
        levels = getattr(feats, name)
        if len(levels) != len(POOL_SIZES):
            raise ValueError(f"feats.{name}: expected {len(POOL_SIZES)} levels (P3..P7), got {len(levels)}")
        for lvl, t in enumerate(levels):
            if t.dim() != 4 or t.shape[0] != 1:
                raise ValueError(f"feats.{name}[{lvl}]: expected shape [1, C, h, w], got {tuple(t.shape)}")
            if t.dtype != torch.float32:
                raise ValueError(f"feats.{name}[{lvl}]: expected float32, got {t.dtype}")
            if t.shape[-2:] != feats.centers[lvl].shape[-2:]:
                raise ValueError(
                    f"feats.{name}[{lvl}]: spatial size {tuple(t.shape[-2:])} differs from "
                    f"feats.centers[{lvl}] {tuple(feats.centers[lvl].shape[-2:])}"
                )
        if name == "regions" and any(t.shape[1] != num_stuff for t in levels):
            raise ValueError(
                f"feats.regions: channels {[t.shape[1] for t in levels]} differ from "
                f"cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES={num_stuff}"
            )
    enc = feats.encoded
    if enc.dim() != 4 or enc.shape[0] != 1 or enc.dtype != torch.float32:
        raise ValueError(f"feats.encoded: expected float32 [1, C, H/4, W/4], got {enc.dtype} {tuple(enc.shape)}")


@torch.no_grad()
def oracle_inference(
    thing_embed: nn.Module,
    stuff_embed: nn.Module,
    feats: HeadOutputsLike,
    img_shape: tuple[int, int],
    ori_shape: tuple[int, int],
    cfg: Any,
    *,
    strict: bool = False,
    timings: MutableMapping[str, float] | None = None,
) -> dict[str, Any]:
    """Run the official dynamic PanopticFCN post-processing on one image's head outputs.

    Args:
        thing_embed: the thing generator's 1x1 conv (`thing_generator.embed_extractor`, Cw -> C).
        stuff_embed: the stuff generator's 1x1 conv (`stuff_generator.embed_extractor`, Cw -> C).
        feats: `HeadOutputs`-like with B = 1: centers / regions / weights (5 levels each, float32) and
            encoded [1, C, H/4, W/4].
        img_shape: (h, w) of the resized image before padding (official `instances.image_size`).
        ori_shape: (height, width) of the original image; every output is at this size.
        cfg: object with the official keys MODEL.POSITION_HEAD.THING.{THRES,TOP_NUM},
            MODEL.POSITION_HEAD.STUFF.{THRES,NUM_CLASSES,WITH_THING}, MODEL.INFERENCE.{INST_THRES,
            SIMILAR_THRES,SIMILAR_TYPE,CLASS_SPECIFIC}, MODEL.INFERENCE.COMBINE.{OVERLAP_THRESH,
            STUFF_AREA_LIMIT,INST_THRESH}, MODEL.SEMANTIC_FPN.COMMON_STRIDE.
        strict: raise `OfficialInferenceError` where the official code would crash (no stuff candidate on
            any level) instead of continuing with empty stuff.
        timings: if given, receives the seconds spent in the merge (``"merge"``) and before it
            (``"postprocess"``), for pfcn-bench's stage split.
    Returns:
        {"panoptic_seg": int32 [H, W] (0 = void),
         "segments_info": list of official dicts (things: id, isthing, score, category_id = thing index,
             instance_id = row in "instances"; stuff: id, isthing, category_id = stuff-head label, area),
         "instances": {"masks": bool [N, H, W], "scores": float32 [N], "classes": int64 [N]},
         "sem_seg": float32 [S, H, W] (S + 1 channels when STUFF.WITH_THING is False)}.
    """
    start = time.perf_counter()
    pos = cfg.MODEL.POSITION_HEAD
    inf = cfg.MODEL.INFERENCE
    comb = inf.COMBINE
    num_stuff = int(pos.STUFF.NUM_CLASSES)
    with_thing = bool(pos.STUFF.WITH_THING)
    top_num = int(pos.THING.TOP_NUM)
    stride = int(cfg.MODEL.SEMANTIC_FPN.COMMON_STRIDE)
    if inf.SIMILAR_TYPE != "cosine":
        # Official "L2" similarity returns a vector and `triu` in kernel_fusion fails on it.
        raise ValueError(
            f"cfg.MODEL.INFERENCE.SIMILAR_TYPE={inf.SIMILAR_TYPE!r}: only 'cosine' is reproduced "
            "(the official 'L2' path does not run)"
        )
    _check_inputs(feats, num_stuff)
    img_shape = (int(img_shape[0]), int(img_shape[1]))
    ori_shape = (int(ori_shape[0]), int(ori_shape[1]))

    # per-level candidates
    th_kernels, th_classes, th_scores = [], [], []
    st_kernels, st_scores, st_labels = [], [], []
    for center, region, weight, pool_size in zip(feats.centers, feats.regions, feats.weights, POOL_SIZES):
        kern, cls, score = _level_things(center, weight, pool_size, top_num, float(pos.THING.THRES))
        if kern is not None:
            th_kernels.append(kern)
            th_classes.append(cls)
            th_scores.append(score)
        kern, score, label = _level_stuff(region, weight, num_stuff, float(pos.STUFF.THRES), with_thing)
        if len(kern) > 0:
            st_kernels.append(kern)
            st_scores.append(score)
            st_labels.append(label)

    enc = feats.encoded
    enc_shape = enc.shape
    enc_flat = enc.reshape(*enc_shape[:2], -1)  # [1, C, H/4 * W/4]

    # things: concatenate levels, sort, embed, fuse, masks
    masks = classes = scores = None
    if th_kernels:
        kernels = torch.cat(th_kernels, dim=2)  # [1, Cw, N, 1]
        classes = torch.cat(th_classes, dim=0)
        scores = torch.cat(th_scores, dim=0)
        order = torch.argsort(scores, descending=True)
        kernels, scores, classes = kernels[:, :, order], scores[order], classes[order]
        meta = thing_embed(kernels)
        meta = meta.reshape(*meta.shape[:2], -1).permute(0, 2, 1).squeeze(0)  # [N, C]
        meta, classes, scores = _fuse_thing_kernels(
            meta, classes, scores, float(inf.SIMILAR_THRES), bool(inf.CLASS_SPECIFIC)
        )
        mask_logits = torch.matmul(meta, enc_flat).reshape(enc_shape[0], -1, *enc_shape[2:])
        processed = _process_instances(
            classes, scores, mask_logits, float(inf.INST_THRES), top_num, stride, img_shape, ori_shape
        )
        if processed is None:
            masks = classes = scores = None
        else:
            masks, classes, scores = processed

    # stuff: concatenate levels, embed, fuse per label, semantic map
    sem_channels = num_stuff if with_thing else num_stuff + 1
    sem_seg = torch.zeros(sem_channels, *ori_shape, dtype=enc.dtype, device=enc.device)
    if st_kernels:
        kernels = torch.cat(st_kernels, dim=0)  # [M, Cw, 1, 1]
        labels = torch.cat(st_labels, dim=0)
        st_score = torch.cat(st_scores, dim=0)
        meta = stuff_embed(kernels)
        meta = meta.reshape(enc_shape[0], -1, meta.shape[1]).squeeze(0)  # [M, C]
        meta, labels, _ = _fuse_stuff_kernels(meta, labels, st_score)
        stuff_prob = torch.matmul(meta, enc_flat).reshape(enc_shape[0], -1, *enc_shape[2:]).sigmoid()
        sem_seg[labels] += _to_original(stuff_prob, stride, img_shape, ori_shape)
    elif strict:
        raise OfficialInferenceError(
            "no stuff class passed cfg.MODEL.POSITION_HEAD.STUFF.THRES on any level; the official "
            "StuffGenerator fails on this input"
        )

    merge_start = time.perf_counter()
    panoptic, segments = _combine_thing_and_stuff(
        masks,
        classes,
        scores,
        sem_seg.argmax(dim=0),
        float(comb.OVERLAP_THRESH),
        comb.STUFF_AREA_LIMIT,
        float(comb.INST_THRESH),
    )
    if timings is not None:
        timings["postprocess"] = merge_start - start
        timings["merge"] = time.perf_counter() - merge_start
    if masks is None or classes is None or scores is None:
        masks = torch.zeros(0, *ori_shape, dtype=torch.bool, device=enc.device)
        classes = torch.zeros(0, dtype=torch.int64, device=enc.device)
        scores = torch.zeros(0, dtype=enc.dtype, device=enc.device)
    return {
        "panoptic_seg": panoptic,
        "segments_info": segments,
        "instances": {"masks": masks, "scores": scores, "classes": classes.to(torch.int64)},
        "sem_seg": sem_seg,
    }


class OfficialBaseline:
    """The official test-time path on a pfcn model's weights, one image at a time, as detectron2 runs it.

    Host: detectron2's ``ResizeShortestEdge`` (PIL bilinear on the uint8 HxWx3 array, channel order of INPUT.FORMAT),
    ``torch.as_tensor`` of the CHW copy. Model: normalisation and zero padding to a multiple of 32 on the device
    (``PanopticFCN.normalize``, detectron2's ``ImageList``), the network (``forward_features``, the same modules and
    weights as every pfcn row), then ``oracle_inference``: dynamic candidate counts, ``.item()`` host syncs, the
    Python merge loop. Only batch size 1, as the official inference.
    """

    name = "official"

    def __init__(self, model: nn.Module, cfg: Any, device: str | torch.device = "cpu"):
        self.model = model
        self.cfg = cfg
        self.device = torch.device(device)

    def preprocess(self, image: Any) -> tuple[Tensor, tuple[int, int]]:
        """HxWx3 uint8 RGB -> the padded normalised [1, 3, Hn, Wn] batch and the resized (h, w)."""
        import numpy as np
        from PIL import Image

        from pfcn.resize import shortest_edge_size_py

        h, w = int(image.shape[0]), int(image.shape[1])
        rh, rw = shortest_edge_size_py(h, w, self.model.min_size_test, self.model.max_size_test)
        if self.model.input_format == "BGR":
            image = image[:, :, ::-1]
        if (rh, rw) != (h, w):
            image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((rw, rh), Image.BILINEAR))
        chw = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1))).to(self.device)
        batch, _ = self.model.normalize([chw])
        return batch, (rh, rw)

    @torch.no_grad()
    def __call__(self, image: Any, timings: MutableMapping[str, float] | None = None) -> dict[str, Any]:
        """One image through the official path; ``timings`` receives the seconds of each stage."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        batch, resized = self.preprocess(image)
        sync()
        t1 = time.perf_counter()
        heads = self.model.forward_features(batch)
        sync()
        t2 = time.perf_counter()
        post: dict[str, float] = {}
        out = oracle_inference(self.model.thing_generator.embed_extractor, self.model.stuff_generator.embed_extractor,
                               heads, resized, (int(image.shape[0]), int(image.shape[1])), self.cfg, timings=post)
        t3 = time.perf_counter()
        out["panoptic_seg"] = out["panoptic_seg"].cpu().numpy()
        if timings is not None:
            timings.update(preprocess=t1 - t0, network=t2 - t1, postprocess=post["postprocess"],
                           merge=post["merge"], host_copies=time.perf_counter() - t3)
        return out
