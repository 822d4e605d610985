"""The one PanopticFCN inference implementation, written with fixed-size tensors only.

The official inference keeps a data-dependent number of candidates at every step (threshold filters, ``unique``,
boolean indexing, a Python merge loop with ``.item()``). Every count there is bounded (<= 50 peaks per level and 5
levels, <= S stuff classes, <= 100 instances), so this module carries every candidate slot to the end with a validity
flag instead of removing it. There is no host synchronisation and no Python branch on tensor values, which is what
lets eager PyTorch, the exported ONNX graph and TensorRT engines run this very code.

Eager runs on CPU tensors (``pfcn.resize.host_values_free``), where reading a value costs nothing, take three
shortcuts with the same results: the official ``F.interpolate`` calls per image for step 5, a merge scan over the
active slots only, and a histogram for the stuff areas. Tracing, export, compilation and GPU runs never take them.

Stages (per image, batched):
  1. ``thing_candidates``  peak extraction, per-level top-k, threshold, kernel gather          -> 5*50 slots
  2. ``fuse_thing_kernels`` score sort, 1x1 embedding, class-specific cosine kernel fusion
  3. ``stuff_kernels``      per-level argmax regions, mean scores, masked kernel sums, level fusion -> S slots
  4. ``thing_masks``        mask products, rescoring, 0.05 filter, top-100
  5. ``to_original_size``   4x upsample, crop, resize to the original size: the official two interpolations
  6. ``panoptic_merge``     the greedy merge as a fixed 100-step scan
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from .contract import POSTPROCESS_OUTPUTS
from .resize import RowPass, apply_row_pass, host_values_free, linear_taps, row_pass

POOL_SIZES = (3, 3, 3, 5, 5)  # official smoothing window of the centre heatmaps, per level P3..P7
NEG = -1.0  # sorts below every probability; used for empty slots
RESIZE_CHUNK = 20  # mask channels resized to the original size at a time: bounds the full-size temporaries


class HeadOutputs(NamedTuple):
    """Raw per-level network outputs (levels P3..P7)."""

    centers: list[torch.Tensor]  # [B, T, h, w] thing centre logits
    regions: list[torch.Tensor]  # [B, S, h, w] stuff region logits
    weights: list[torch.Tensor]  # [B, C, h, w] kernel-head output
    encoded: torch.Tensor  # [B, E, H/4, W/4] encoded feature


@dataclass(frozen=True)
class InferenceParams:
    """The thresholds and counts of the official inference (cfg.MODEL.POSITION_HEAD / INFERENCE)."""

    thing_thres: float = 0.05
    stuff_thres: float = 0.05
    top_num: int = 100
    inst_thres: float = 0.4
    similar_thres: float = 0.9
    class_specific: bool = True
    overlap_thresh: float = 0.5
    stuff_area_limit: int = 4096
    combine_inst_thresh: float = 0.2
    common_stride: int = 4
    score_floor: float = 0.05  # the hard-coded ``scores >= 0.05`` filter of the official process_inst

    @classmethod
    def from_cfg(cls, cfg) -> "InferenceParams":
        m = cfg.MODEL
        if m.INFERENCE.SIMILAR_TYPE != "cosine":
            raise ValueError(f"MODEL.INFERENCE.SIMILAR_TYPE={m.INFERENCE.SIMILAR_TYPE!r}: only 'cosine' is supported "
                             "(the official 'L2' branch does not compute a pairwise matrix)")
        if not m.POSITION_HEAD.STUFF.WITH_THING:
            raise ValueError("MODEL.POSITION_HEAD.STUFF.WITH_THING=False is not supported: pfcn's stuff head always "
                             "carries class 0 for 'things', as every official configuration does")
        return cls(
            thing_thres=float(m.POSITION_HEAD.THING.THRES),
            stuff_thres=float(m.POSITION_HEAD.STUFF.THRES),
            top_num=int(m.POSITION_HEAD.THING.TOP_NUM),
            inst_thres=float(m.INFERENCE.INST_THRES),
            similar_thres=float(m.INFERENCE.SIMILAR_THRES),
            class_specific=bool(m.INFERENCE.CLASS_SPECIFIC),
            overlap_thresh=float(m.INFERENCE.COMBINE.OVERLAP_THRESH),
            stuff_area_limit=int(m.INFERENCE.COMBINE.STUFF_AREA_LIMIT),
            combine_inst_thresh=float(m.INFERENCE.COMBINE.INST_THRESH),
            common_stride=int(m.SEMANTIC_FPN.COMMON_STRIDE),
        )


def _gather_rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, n]]`` for x [B, N, ...] and index [B, K] -> [B, K, ...]."""
    shape = index.shape + x.shape[2:]
    flat = index.reshape(index.shape + (1,) * (x.dim() - 2)).expand(shape)
    return torch.gather(x, 1, flat)


def thing_candidates(centers: list[torch.Tensor], weights: list[torch.Tensor], p: InferenceParams):
    """Peak extraction and per-level top-k, as the official ``inference_single_level`` + ``topk_score``.

    Each level keeps K = TOP_NUM/2 slots. The official K is min(h*w, TOP_NUM/2); here every level is padded with K
    scores of -1 and the slots past h*w are marked invalid, which selects exactly the same candidates.

    Returns:
        scores [B, N] float, classes [B, N] int64, kernels [B, N, C] float, valid [B, N] bool, with N = 5 * K.
    """
    k = p.top_num // 2
    out_scores, out_classes, out_kernels, out_valid = [], [], [], []
    for level, (center, weight) in enumerate(zip(centers, weights)):
        b, t, h, w = center.shape
        pool = POOL_SIZES[level]
        prob = torch.sigmoid(center)
        prob = (prob + F.avg_pool2d(prob, pool, stride=1, padding=(pool - 1) // 2)) / 2.0
        prob = prob * (F.max_pool2d(prob, 3, stride=1, padding=1) == prob).to(prob.dtype)
        # K empty (-1) entries are always appended so that a level smaller than K never breaks the constant-K
        # TopK, whatever the input size of an exported graph.
        flat = F.pad(prob.reshape(b, t, h * w), (0, k), value=NEG)
        cls_scores, cls_index = torch.topk(flat, k, dim=2)  # [B, T, K] per-class top-k
        scores, sel = torch.topk(cls_scores.reshape(b, t * k), k, dim=1)  # [B, K] across classes
        classes = torch.div(sel, k, rounding_mode="floor")
        position = torch.gather(cls_index.reshape(b, t * k), 1, sel)
        valid = (scores > p.thing_thres) & (torch.arange(k, device=center.device) < h * w).unsqueeze(0)
        c = weight.shape[1]
        padded = F.pad(weight.reshape(b, c, h * w), (0, k))  # positions of padding entries gather zeros
        kern = torch.gather(padded, 2, position.unsqueeze(1).expand(b, c, k))
        out_scores.append(scores)
        out_classes.append(classes)
        out_kernels.append(kern.transpose(1, 2))  # [B, K, C]
        out_valid.append(valid)
    return (torch.cat(out_scores, 1), torch.cat(out_classes, 1), torch.cat(out_kernels, 1),
            torch.cat(out_valid, 1))


def fuse_thing_kernels(scores, classes, kernels, valid, embed, p: InferenceParams):
    """Sort candidates by score, embed them, and fuse near-duplicate kernels (official ``kernel_fusion``).

    A kernel j is claimed by every earlier (higher-scored) kernel i of the same class with cosine(i, j) >= SIMILAR_THRES;
    i survives if no earlier kernel claims it (column cumsum < 2 on the diagonal), and its new kernel is the mean
    of the kernels it claims that no other earlier kernel claimed.

    Args:
        embed: callable mapping [..., C] kernel weights to [..., E] mask kernels (the thing generator).
    Returns:
        scores [B, N], classes [B, N], kernels [B, N, E], valid [B, N], sorted by descending score.
    """
    n = int(scores.shape[1])  # 5 levels x TOP_NUM/2 slots, whatever the image size: a constant in the graph
    key = torch.where(valid, scores, torch.full_like(scores, NEG))
    order = torch.topk(key, n, dim=1).indices  # a full descending sort as a constant-K TopK
    scores, classes, valid = (torch.gather(x, 1, order) for x in (scores, classes, valid))
    kernels = embed(_gather_rows(kernels, order))  # [B, N, E]

    unit = kernels / kernels.norm(dim=2, keepdim=True).clamp(min=1e-8)
    similarity = torch.matmul(unit, unit.transpose(1, 2))  # [B, N, N]
    index = torch.arange(n, device=scores.device)
    upper = index.reshape(-1, 1) <= index.reshape(1, -1)  # triu(diagonal=0) as a constant mask
    label = torch.where(upper, similarity, torch.zeros_like(similarity)) >= p.similar_thres
    if p.class_specific:
        label = label & (classes.unsqueeze(2) == classes.unsqueeze(1))
    label = label & valid.unsqueeze(2) & valid.unsqueeze(1)
    first_claim = torch.cumsum(label.to(kernels.dtype), dim=1) < 2
    diagonal = index.reshape(-1, 1) == index.reshape(1, -1)
    keep = (first_claim & diagonal).any(dim=2) & valid
    rows = (label & first_claim).to(kernels.dtype)
    fused = torch.matmul(rows, kernels) / rows.sum(dim=2, keepdim=True).clamp(min=1.0)
    return scores, classes, fused, keep


def stuff_kernels(regions: list[torch.Tensor], weights: list[torch.Tensor], embed, p: InferenceParams):
    """Per-level stuff regions and kernels, fused across levels (official stuff path + StuffGenerator.kernel_fusion).

    Per level: label = argmax of the region probabilities; a class present there scores the mean probability over its
    pixels and, above STUFF.THRES, contributes the kernel sum over its pixels divided by *all* h*w pixels of the level
    (the official ``adaptive_avg_pool2d`` of the masked weights). Across levels a class's kernel and score are the
    means over the levels that kept it. Slot s is stuff class s.

    Returns:
        scores [B, S], kernels [B, S, E], valid [B, S].
    """
    emb_sum = score_sum = count = None
    for region, weight in zip(regions, weights):
        b, s, h, w = region.shape
        prob = torch.sigmoid(region)
        label = torch.argmax(prob, dim=1, keepdim=True)  # [B, 1, h, w]
        onehot = (label == torch.arange(s, device=region.device).reshape(1, s, 1, 1)).to(prob.dtype)
        pixels = onehot.sum(dim=(2, 3))  # [B, S]
        score = (prob * onehot).sum(dim=(2, 3)) / pixels.clamp(min=1.0)
        keep = (pixels > 0) & (score > p.stuff_thres)
        kern = torch.matmul(onehot.reshape(b, s, h * w), weight.reshape(b, -1, h * w).transpose(1, 2)) / (h * w)
        emb = embed(kern)  # [B, S, E]
        keep_f = keep.to(prob.dtype)
        emb_sum = emb * keep_f.unsqueeze(2) if emb_sum is None else emb_sum + emb * keep_f.unsqueeze(2)
        score_sum = score * keep_f if score_sum is None else score_sum + score * keep_f
        count = keep_f if count is None else count + keep_f
    denom = count.clamp(min=1.0)
    return score_sum / denom, emb_sum / denom.unsqueeze(2), count > 0


def mask_logits(kernels: torch.Tensor, encoded: torch.Tensor) -> torch.Tensor:
    """Kernels [B, N, E] times the encoded feature [B, E, h, w] -> mask logits [B, N, h, w]."""
    b, e, h, w = encoded.shape
    return torch.matmul(kernels, encoded.reshape(b, e, h * w)).reshape(b, -1, h, w)


def thing_masks(scores, classes, kernels, valid, encoded, p: InferenceParams):
    """Mask products, rescoring by mean mask probability, the 0.05 filter and the top-100 (official process_inst).

    Returns (all [B, TOP_NUM] except probs): scores, classes, valid, probs [B, TOP_NUM, H/4, W/4] soft masks.
    """
    probs = torch.sigmoid(mask_logits(kernels, encoded))
    binary = (probs > p.inst_thres).to(probs.dtype)
    seg_score = (probs * binary).sum(dim=(2, 3)) / (binary.sum(dim=(2, 3)) + 1e-6)
    scores = scores * seg_score
    valid = valid & (scores >= p.score_floor)
    key = torch.where(valid, scores, torch.full_like(scores, NEG))
    order = torch.topk(key, p.top_num, dim=1).indices
    scores, classes, valid = (torch.gather(x, 1, order) for x in (scores, classes, valid))
    scores = torch.where(valid, scores, torch.zeros_like(scores))
    return scores, classes, valid, _gather_rows(probs, order)


class OriginalSizeResize(NamedTuple):
    """The official resize to the original size, its per-image passes prepared (``original_size_passes``)."""

    stride: int  # the 4x upsampling, the same for every image
    columns: RowPass  # then the resize to the original width, per image, at the stride-4 rows (maps transposed)
    rows: RowPass  # and to the original height, per image, at full size


def original_size_passes(resized: torch.Tensor, original: torch.Tensor, canvas_hw,
                         stride: int) -> OriginalSizeResize:
    """The official resize of stride-4 maps back to the original image, prepared for ``to_original_size``.

    The official post-processing runs ``F.interpolate(scale_factor=stride)``, crops to the resized image, then
    ``F.interpolate(size=original)``. Bilinear interpolation is separable, each output mixing two samples along
    each axis. The upsampling is the same for every image (``F.interpolate`` itself, one axis at a time); the
    resize to the original size differs per image, so it runs as gathers of whole rows with the kernel's own taps
    (``pfcn.resize.linear_taps``), the sizes being tensors (no host sync); the crop is implicit, the resize reading
    only the first ``resized`` samples. The column passes run first, on the transposed stride-4 maps (columns as
    rows, so that they too gather whole rows), so that only the two row passes touch full-size maps: row and column
    passes commute, in float32 up to the last bit, the kind of difference the graph already has against PyTorch's
    fused multiply-adds.

    Args:
        resized, original: [B, 2] int64 (h, w) of the resized and the original images.
        canvas_hw: the output canvas (H, W); ints or 0-d tensors.
    """
    down_rows = linear_taps(resized[:, 0], original[:, 0], canvas_hw[0])
    down_cols = linear_taps(resized[:, 1], original[:, 1], canvas_hw[1])
    return OriginalSizeResize(stride, row_pass(down_cols), row_pass(down_rows))


def to_original_size(maps: torch.Tensor, resize: OriginalSizeResize,
                     chunk: int = RESIZE_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """Resize [B, N, h, w] stride-4 maps to the original size, ``chunk`` channels at a time.

    Yields (first channel, [B, c, H, W] float32 maps): callers reduce each chunk (threshold, argmax) before the
    next is computed, so the full-size temporaries hold ``chunk`` channels, not N.
    """
    n = int(maps.shape[1])  # TOP_NUM or the stuff class count: a constant of the graph
    up = float(resize.stride)
    for start in range(0, n, chunk):
        # width first, on [B, c, w, h]: the transpose moves stride-4 maps, 1/16 of the full size
        part = maps[:, start:start + chunk].transpose(2, 3)
        part = F.interpolate(part, scale_factor=(up, 1.0), mode="bilinear", align_corners=False)
        part = apply_row_pass(part, resize.columns).transpose(2, 3)  # [B, c, h, W]
        part = F.interpolate(part, scale_factor=(up, 1.0), mode="bilinear", align_corners=False)
        yield start, apply_row_pass(part, resize.rows)


def interpolate_to_original(maps: torch.Tensor, shapes: list[tuple[list[int], list[int]]],
                            canvas_hw: tuple[int, int], stride: int,
                            chunk: int = RESIZE_CHUNK) -> Iterator[tuple[int, torch.Tensor]]:
    """``to_original_size`` for eager CPU runs: the official two ``F.interpolate`` calls themselves, per image.

    Same chunks as ``to_original_size`` ([B, c, H, W], zero outside each image), and the official values to the
    last bit: PyTorch's kernel with its fused multiply-adds, which the static passes cannot express. It needs each
    image's resized and original (h, w) as Python ints (``shapes``), so only ``host_values_free`` tensors take it.
    """
    b, n = maps.shape[:2]
    for start in range(0, n, chunk):
        part = maps[:, start:start + chunk]
        resized_parts = []
        for i, ((rh, rw), (oh, ow)) in enumerate(shapes):
            up = F.interpolate(part[i:i + 1], scale_factor=stride, mode="bilinear", align_corners=False)
            y = F.interpolate(up[..., :rh, :rw], size=(oh, ow), mode="bilinear", align_corners=False)
            resized_parts.append(F.pad(y, (0, canvas_hw[1] - ow, 0, canvas_hw[0] - oh)))  # no-op when it fills
        yield start, torch.cat(resized_parts) if b > 1 else resized_parts[0]


def panoptic_merge(masks: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, semantic: torch.Tensor,
                   inside: torch.Tensor, num_stuff: int, p: InferenceParams):
    """The official greedy merge (``combine_thing_and_stuff``) as a fixed-length scan.

    Things with score >= COMBINE.INST_THRESH, in score order: skip a thing that is empty or whose overlap with the
    already-assigned pixels exceeds OVERLAP_THRESH of its area, else it takes its free pixels. Then each stuff label
    (ascending, except 0) takes its free pixels if they number at least STUFF_AREA_LIMIT. Segment ids count from 1 in
    that order; unassigned pixels are 0.

    Args:
        masks: [B, K, H, W] bool thing masks in score order; scores, valid: [B, K].
        semantic: [B, H, W] int64 stuff-head labels; inside: [B, H, W] bool, the image's own pixels in the canvas.
    Returns:
        panoptic [B, H, W] int32 and the segment table as [B, K + S] tensors (slot order: things, then stuff labels
        0..S-1): ids int32, areas int64, valid bool.
    """
    b, k, h, w = masks.shape
    active = valid & (scores >= p.combine_inst_thresh)
    # Eager CPU runs scan the active slots only: an inactive slot takes no pixel and changes nothing.
    scanned = active.any(0).tolist() if host_values_free(masks) else [True] * k  # (the source guard reads the call)
    no, zero = torch.zeros_like(active[:, 0]), torch.zeros(b, dtype=torch.int64, device=masks.device)
    # Each accepted thing paints its id on the pixels it is the first to take: the segment map is built during the
    # scan, with [B, H, W] steps, instead of an argmax over [B, K, H, W] masks afterwards. A step counts the
    # thing's pixels and its still-free ones (overlap = area - free), so it reads the unassigned pixels once.
    unassigned = torch.ones_like(masks[:, 0])
    thing_map = torch.zeros(b, h, w, dtype=torch.int32, device=masks.device)
    count = zero
    accepted, areas = [], []
    for i in range(k):  # fixed trip count: the loop unrolls into a static graph
        if not scanned[i]:
            accepted.append(no)
            areas.append(zero)
            continue
        mask = masks[:, i]
        new = mask & unassigned
        area, free = _count_pixels(mask), _count_pixels(new)
        overlap = area - free
        ok = active[:, i] & (area > 0) & ~(overlap.to(torch.float32) > p.overlap_thresh * area.to(torch.float32))
        take = new & ok.reshape(b, 1, 1)
        count = count + ok.to(torch.int64)
        thing_map = torch.where(take, count.to(torch.int32).reshape(b, 1, 1), thing_map)
        unassigned = unassigned ^ take  # take holds unassigned pixels only
        accepted.append(ok)
        areas.append(free * ok.to(free.dtype))
    thing_ok = torch.stack(accepted, 1)  # [B, K]
    thing_area = torch.stack(areas, 1)
    thing_ids = torch.cumsum(thing_ok.to(torch.int64), 1) * thing_ok.to(torch.int64)

    free = unassigned & inside
    labels = torch.arange(num_stuff, device=masks.device)
    if host_values_free(semantic):  # a histogram of the free pixels' labels: the same counts, no [B, S, H, W] masks
        stuff_area = torch.stack([torch.bincount(semantic[i][free[i]], minlength=num_stuff) for i in range(b)])
    else:
        stuff_area = _label_counts(semantic, free, num_stuff)
    stuff_ok = (stuff_area >= p.stuff_area_limit) & (stuff_area > 0) & (labels > 0).unsqueeze(0)
    n_things = thing_ok.sum(dim=1, keepdim=True)
    stuff_ids = (n_things + torch.cumsum(stuff_ok.to(torch.int64), 1)) * stuff_ok.to(torch.int64)
    stuff_map = torch.gather(stuff_ids, 1, semantic.reshape(b, -1)).reshape(b, h, w) * free.to(torch.int64)
    panoptic = thing_map + stuff_map.to(torch.int32)
    ids = torch.cat([thing_ids, stuff_ids], 1).to(torch.int32)
    areas = torch.cat([thing_area, stuff_area * stuff_ok.to(stuff_area.dtype)], 1).to(torch.int64)
    return panoptic, ids, areas, torch.cat([thing_ok, stuff_ok], 1)


def _count_pixels(mask: torch.Tensor) -> torch.Tensor:
    """True pixels of bool masks [..., H, W] -> int64 [...], exactly and fast: each row is summed in float32 (exact
    for rows shorter than 2^24 pixels), the row counts in int64. A bool -> int64 cast of the whole mask moves 8 bytes
    a pixel and ONNX Runtime's int64 ReduceSum is ~16x slower than its float one; the merge scan does this 200 times.
    Eager CPU sums the bytes into int32 (exact below 2^31 pixels) without any copy: twice as fast as
    ``count_nonzero``, which casts the mask to int64 first.
    """
    if host_values_free(mask):
        return mask.view(torch.uint8).sum(dim=(-2, -1), dtype=torch.int32).to(torch.int64)
    return mask.to(torch.float32).sum(dim=-1).to(torch.int64).sum(dim=-1)


def _label_counts(labels: torch.Tensor, keep: torch.Tensor, num: int) -> torch.Tensor:
    """How many ``keep`` pixels carry each label 0..num-1: labels [B, H, W] int64, keep [B, H, W] bool -> [B, num]
    int64, exactly, without the [B, num, H, W] one-hot masks of a direct count.

    A label l = q * side + r (side = ceil(sqrt(num))) is counted as entry (q, r) of ``Q @ R^T``, where Q [side, W]
    marks a row's kept pixels whose label has quotient q and R [side, W] its pixels whose remainder is r: two
    one-hots of ``side`` rows (8 for COCO's 54 stuff labels) instead of one of ``num`` rows. One matmul per image
    row: its float32 sums of ones stay exact (a row is far shorter than 2^24 pixels), the rows add up in int64.
    """
    b = labels.shape[0]
    side = math.isqrt(max(num - 1, 0)) + 1
    digits = torch.arange(side, device=labels.device).reshape(1, 1, side, 1)
    flat = labels.unsqueeze(2)  # [B, H, 1, W]
    quotient = torch.div(flat, side, rounding_mode="floor")
    q = ((quotient == digits) & keep.unsqueeze(2)).to(torch.float32)  # [B, H, side, W]
    r = ((flat - quotient * side) == digits).to(torch.float32)
    counts = torch.matmul(q, r.transpose(2, 3)).to(torch.int64).sum(dim=1)  # [B, side, side]
    return counts.reshape(b, side * side)[:, :num]


class PanopticMerge(nn.Module):
    """``panoptic_merge`` as a module, so that export can emit it as the ONNX local function ``pfcn::PanopticMerge``.

    Its body is standard ONNX ops (every runtime inlines it); a TensorRT plugin registered as "PanopticMerge" in
    namespace "pfcn" can replace the 100-step scan with one kernel without re-exporting.
    """

    def __init__(self, params: InferenceParams, num_stuff: int):
        super().__init__()
        self.params = params
        self.num_stuff = num_stuff

    def forward(self, masks, scores, valid, semantic, inside):
        return panoptic_merge(masks, scores, valid, semantic, inside, self.num_stuff, self.params)


def generate_kernels(heads: HeadOutputs, thing_embed, stuff_embed, p: InferenceParams):
    """The kernel stage: thing candidates fused by similarity, and one kernel per stuff class.

    Returns:
        thing scores, classes, kernels, valid ([B, N], [B, N], [B, N, C], [B, N], sorted by score) and stuff scores,
        kernels, valid ([B, S], [B, S, C], [B, S]; slot = stuff-head class).
    """
    scores, classes, kernels, valid = thing_candidates(heads.centers, heads.weights, p)
    scores, classes, kernels, valid = fuse_thing_kernels(scores, classes, kernels, valid, thing_embed, p)
    st_scores, st_kernels, st_valid = stuff_kernels(heads.regions, heads.weights, stuff_embed, p)
    return scores, classes, kernels, valid, st_scores, st_kernels, st_valid


def postprocess(heads: HeadOutputs, thing_embed, stuff_embed, resized: torch.Tensor, original: torch.Tensor,
                canvas_hw: tuple[int, int], p: InferenceParams, merge: PanopticMerge | None = None,
                shapes: list[tuple[list[int], list[int]]] | None = None) -> dict[str, torch.Tensor]:
    """From network outputs to the full panoptic result at the original image sizes, with fixed shapes.

    Args:
        heads: network outputs for a batch whose images were resized to ``resized`` [B, 2] (h, w) inside the padded
            network canvas.
        thing_embed, stuff_embed: the 1x1 kernel generators, as callables on [..., C] rows.
        original: [B, 2] original (h, w) of each image; results are placed top-left in a ``canvas_hw`` canvas.
        merge: the model's PanopticMerge module (default: one built from ``p``).
        shapes: each image's resized and original (h, w) as Python ints, when the caller knows them without reading
            the device (the GPU fast path, from the host-side sizes): the official two ``F.interpolate`` calls then
            resize the maps to the original size, static for those sizes. Eager CPU runs read them from
            ``resized`` and ``original``; without them the static gather passes run.
    Returns:
        dict of tensors, see ``OUTPUT_NAMES`` (K = TOP_NUM instance slots, S stuff classes):
        panoptic [B, H, W] int32; semantic [B, H, W] int64; instance_masks [B, K, H, W] bool; instance_scores,
        instance_classes, instance_valid [B, K]; segment_ids, segment_classes, segment_isthing, segment_scores,
        segment_areas, segment_valid [B, K + S].
    """
    scores, classes, kernels, valid, st_scores, st_kernels, st_valid = generate_kernels(heads, thing_embed,
                                                                                        stuff_embed, p)
    scores, classes, valid, thing_probs = thing_masks(scores, classes, kernels, valid, heads.encoded, p)
    st_probs = torch.sigmoid(mask_logits(st_kernels, heads.encoded)) * st_valid.to(st_kernels.dtype)[..., None, None]

    if shapes is None and host_values_free(thing_probs):
        shapes = list(zip(resized.tolist(), original.tolist()))
    if shapes is not None:
        def full_size(maps):
            return interpolate_to_original(maps, shapes, canvas_hw, p.common_stride)
    else:
        resize = original_size_passes(resized, original, canvas_hw, p.common_stride)

        def full_size(maps):
            return to_original_size(maps, resize)
    # empty slots resize to zero, which no threshold passes: masking at stride 4 costs 1/16 of masking the result
    thing_probs = thing_probs * valid.to(thing_probs.dtype)[..., None, None]
    masks = torch.cat([part > p.inst_thres for _, part in full_size(thing_probs)], dim=1)  # [B, K, H, W]
    if p.inst_thres < 0:  # then zero passes too
        masks = masks & valid[..., None, None]
    semantic = None  # argmax over the stuff channels, the first maximum on ties (as torch.argmax)
    for start, part in full_size(st_probs):
        value, index = torch.max(part, dim=1)
        if semantic is None:
            best, semantic = value, index
        else:
            better = value > best
            best, semantic = torch.where(better, value, best), torch.where(better, index + start, semantic)
    # semantic: [B, H, W]; 0 where no stuff class survived

    b, num_stuff = st_scores.shape
    rows = torch.arange(canvas_hw[0], device=original.device).reshape(1, -1, 1)
    cols = torch.arange(canvas_hw[1], device=original.device).reshape(1, 1, -1)
    inside = (rows < original[:, 0].reshape(-1, 1, 1)) & (cols < original[:, 1].reshape(-1, 1, 1))
    merge = merge if merge is not None else PanopticMerge(p, num_stuff)
    panoptic, seg_ids, seg_areas, seg_valid = merge(masks, scores, valid, semantic, inside)
    k = scores.shape[1]
    stuff_labels = torch.arange(num_stuff, device=scores.device).unsqueeze(0).expand(b, num_stuff)
    return {
        "panoptic": panoptic,
        "semantic": semantic,
        "instance_masks": masks,
        "instance_scores": scores,
        "instance_classes": classes,
        "instance_valid": valid,
        "segment_ids": seg_ids,
        "segment_classes": torch.cat([classes, stuff_labels], 1),
        "segment_isthing": torch.cat([torch.ones(b, k, dtype=torch.bool, device=scores.device),
                                      torch.zeros(b, num_stuff, dtype=torch.bool, device=scores.device)], 1),
        "segment_scores": torch.cat([scores, st_scores], 1),
        "segment_areas": seg_areas,
        "segment_valid": seg_valid,
    }


OUTPUT_NAMES = POSTPROCESS_OUTPUTS


def dataset_category_ids(out: dict[str, torch.Tensor], thing_ids: torch.Tensor,
                         stuff_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dataset category ids of the instance and segment slots (0 in unused slots).

    Args:
        out: the outputs of ``postprocess``.
        thing_ids: [T] int64 dataset id of each thing class; stuff_ids: [S] of each stuff-head label (0 first).
    Returns:
        ``instance_category_ids`` [B, K] and ``segment_category_ids`` [B, K + S], int64.
    """
    k = out["instance_classes"].shape[1]
    inst = thing_ids[out["instance_classes"]] * out["instance_valid"].to(torch.int64)
    cls = out["segment_classes"]
    seg = torch.cat([thing_ids[cls[:, :k]], stuff_ids[cls[:, k:]]], dim=1) * out["segment_valid"].to(torch.int64)
    return inst, seg
