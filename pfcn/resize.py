"""Fixed-shape bilinear resizing with per-image sizes carried as tensors.

A batch holds images of different sizes in one canvas, and an exported graph must not change shape with the data.
Bilinear resizing (align_corners=False, PyTorch's rule) is separable: each output sample mixes two input samples
along one axis. ``linear_taps`` computes those two taps and weights as PyTorch's kernel does, per image from the sizes,
and a row pass applies them as two gathers of whole rows, two products and a sum (a column pass is a row pass of
the transposed maps): the per-image resize to the original size of the official post-processing
(``pfcn.inference``; its 4x upsampling, the same for every image, is ``F.interpolate`` itself).

The test-time image resize is different: detectron2 resizes uint8 images with PIL, whose bilinear filter works in
fixed point and antialiases when shrinking. ``pil_bilinear_resize`` reproduces it bit for bit with integer weights
(``pil_bilinear_matrix``, or only the non-zero window of each output pixel, ``pil_bilinear_taps``) applied by exact
float32 arithmetic.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

# PIL keeps 8-bit resampling weights in fixed point with 22 fraction bits (32-bit sums: 8 value bits, 2 spare bits).
PIL_PRECISION_BITS = 22
# Each weight is applied as hi * 2^11 + lo: both halves have at most 11 significant bits, so the matmuls stay exact
# even where a GPU multiplies in TF32 (11-bit significand, as TensorRT does for FP32 MatMul by default).
_SPLIT_BITS = 11
_FAR = 1 << 40  # farther than any tent reaches, small enough for int64 arithmetic


def static_shapes_required(t: torch.Tensor) -> bool:
    """Whether this code is being traced, exported or compiled (or runs on shapes only): then no value may pick a
    shape or a branch. Plain eager runs may take value-dependent shortcuts that give the same results."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and (compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)()):
        return True
    return type(t) is not torch.Tensor or t.device.type == "meta"  # fake/functional tensors of torch.export


def host_values_free(t: torch.Tensor) -> bool:
    """Whether a shortcut may read tensor values on the host: plain eager CPU tensors only. There a value costs no
    device synchronisation, so eager CPU runs skip work the values show to be void (empty slots) and call PyTorch's
    own kernels per image where the static graph needs fixed shapes. GPU runs keep the static path (no syncs, CUDA
    graphs can capture it)."""
    return not static_shapes_required(t) and t.device.type == "cpu"


def shortest_edge_size(sizes: torch.Tensor, short: int, max_size: int) -> torch.Tensor:
    """Resized (h, w) of each image by detectron2's ResizeShortestEdge rule, in exact integer arithmetic.

    detectron2 scales the shorter side to ``short``, caps the longer at ``max_size`` and rounds with
    ``int(x + 0.5)`` in float64. Here every quantity is a ratio of int64 products, rounded half up exactly, so the
    graph needs neither float64 (absent from TensorRT) nor float32 (which misrounds sizes that end in .5).

    Args:
        sizes: [B, 2] int64 original (h, w).
    Returns:
        [B, 2] int64 resized (h, w).
    """
    sizes = sizes.to(torch.int64)
    h, w = sizes[:, 0], sizes[:, 1]
    small, large = torch.minimum(h, w), torch.maximum(h, w)
    capped = short * large > max_size * small  # the longer side would exceed max_size
    # uncapped: short side = short, long side = short * large / small; capped: long = max_size, short scaled
    new_small = torch.where(capped, _round_ratio(max_size * small, large), torch.full_like(small, short))
    new_large = torch.where(capped, torch.full_like(large, max_size), _round_ratio(short * large, small))
    h_is_small = h < w
    new_h = torch.where(h_is_small, new_small, new_large)
    new_w = torch.where(h_is_small, new_large, new_small)
    return torch.clamp(torch.stack([new_h, new_w], dim=1), min=1)  # a 2x2000 image still keeps one row


def _round_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """floor(num / den + 0.5) for positive int64 tensors, exactly."""
    return torch.div(2 * num + den, 2 * den, rounding_mode="floor")


def shortest_edge_size_py(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """The same rule on Python ints (host side, e.g. to choose a canvas)."""
    out = shortest_edge_size(torch.tensor([[h, w]], dtype=torch.int64), short, max_size)
    return int(out[0, 0]), int(out[0, 1])


class LinearTaps(NamedTuple):
    """The two source samples and weights of every output sample of a 1-D bilinear resize, per image: [B, out]."""

    lo: torch.Tensor  # int64
    hi: torch.Tensor  # int64
    w_lo: torch.Tensor  # float32
    w_hi: torch.Tensor  # float32


# The source coordinate is computed as M * (2i + 1) - 2^_SRC_BITS in int64, with M = scale * 2^_SRC_BITS an integer
# for every float32 scale >= 2^(23 - _SRC_BITS) (upsampling by at most 1024x) and no overflow below 2^63.
_SRC_BITS = 33


def linear_taps(in_len: torch.Tensor, out_len: torch.Tensor, out_size: int | torch.Tensor) -> LinearTaps:
    """Taps of ``F.interpolate(mode="bilinear", align_corners=False)`` along one axis, as PyTorch's CPU kernel makes them.

    The kernel takes ``scale = in / out`` in float32 (a resize given by its size), the source coordinate
    ``src = max(0, scale * (i + 0.5) - 0.5)`` -- one fused multiply-add in PyTorch's x86-64 AVX2/AVX-512 builds, so
    rounded once --, ``lo = min(floor(src), in - 1)``, ``hi = lo + 1`` clamped, ``w_hi = clamp(src - lo, 0, 1)`` and
    ``w_lo = 1 - w_hi``. Here ``src`` is rounded once too: ``scale * 2^33`` is an integer, the exact value
    ``src * 2^34`` is computed in int64 and converted to float32 (round to nearest even), then scaled back exactly.

    Args:
        in_len, out_len: [B] int64 valid lengths (the kernel's input and output sizes).
        out_size: the output canvas length (an int, or a 0-d tensor in traced graphs with dynamic sizes).
    Returns:
        [B, out_size] taps; samples at or beyond ``out_len[b]`` read sample 0 with weight 0 (they come out zero).
    """
    in_len = in_len.to(torch.int64).reshape(-1, 1)
    out_len = out_len.to(torch.int64).reshape(-1, 1)
    ratio = in_len.to(torch.float32) / out_len.to(torch.float32).clamp(min=1.0)
    i = torch.arange(out_size, dtype=torch.int64, device=in_len.device).reshape(1, -1)
    m = (ratio * float(1 << _SRC_BITS)).to(torch.int64)
    src = (m * (2 * i + 1) - (1 << _SRC_BITS)).to(torch.float32) * (1.0 / (1 << (_SRC_BITS + 1)))
    src = torch.clamp(src, min=0.0)
    lo = torch.minimum(torch.floor(src), (in_len - 1).to(torch.float32))
    w_hi = torch.clamp(src - lo, 0.0, 1.0)
    w_lo = 1.0 - w_hi
    lo = lo.to(torch.int64)
    hi = torch.where(lo < in_len - 1, lo + 1, lo)
    valid = i < out_len
    zero = torch.zeros_like(w_lo)
    return LinearTaps(torch.where(valid, lo, torch.zeros_like(lo)), torch.where(valid, hi, torch.zeros_like(hi)),
                      torch.where(valid, w_lo, zero), torch.where(valid, w_hi, zero))


class RowPass(NamedTuple):
    """A per-image 1-D bilinear pass along the rows of channels-first [B, C, H, W] tensors."""

    lo: torch.Tensor  # [B, out] int64
    hi: torch.Tensor
    w_lo: torch.Tensor  # [B, 1, out, 1] float32
    w_hi: torch.Tensor


def row_pass(taps: LinearTaps) -> RowPass:
    """Prepare a row pass: the weights shaped to broadcast over [B, C, out, W]."""
    b = taps.lo.shape[0]
    return RowPass(taps.lo, taps.hi, taps.w_lo.reshape(b, 1, -1, 1), taps.w_hi.reshape(b, 1, -1, 1))


def apply_row_pass(x: torch.Tensor, p: RowPass) -> torch.Tensor:
    """``x[lo] * w_lo + x[hi] * w_hi`` along the rows of a channels-first [B, C, H, W] tensor.

    Two products and one sum, each rounded to float32: the order of PyTorch's bilinear kernel, without the fused
    multiply-add that its x86-64 builds contract ``lo * w_lo + hi * w_hi`` into (ONNX has no such operator).
    Channels-first, so that each gathered element is a whole [W] row and the result is in the layout of the
    outputs: row ``lo`` of channel c of image b is ``(b * C + c) * H + lo`` of [B * C * H, W] (an index of
    B x C x out rows, built per call since C is the chunk's).
    """
    b, c, h, w = x.shape
    base = (torch.arange(b, device=x.device).reshape(-1, 1, 1) * c
            + torch.arange(c, device=x.device).reshape(1, -1, 1)) * h  # [B, C, 1]
    flat = x.reshape(b * c * h, w)
    lo = (base + p.lo.unsqueeze(1)).reshape(-1)
    hi = (base + p.hi.unsqueeze(1)).reshape(-1)
    return (flat.index_select(0, lo).reshape(b, c, -1, w) * p.w_lo
            + flat.index_select(0, hi).reshape(b, c, -1, w) * p.w_hi)


def pil_bilinear_matrix(in_len: torch.Tensor, out_len: torch.Tensor, in_size: int | torch.Tensor,
                        out_size: int | torch.Tensor) -> torch.Tensor:
    """Per-image 1-D weights of PIL's ``Image.resize(..., BILINEAR)`` for 8-bit images, as PIL's fixed-point integers.

    PIL (libImaging/Resample.c) resamples each axis with a triangle filter whose half-width, in input pixels, is
    ``max(1, scale)`` with ``scale = in / out``: the plain 2-tap interpolation when enlarging, an antialiasing average
    over about ``2 * scale`` pixels when shrinking. Output sample i sits at ``c = (i + 0.5) * scale``; input pixel j
    weighs ``max(0, 1 - |j + 0.5 - c| / max(1, scale))``, the weights of the pixels inside the image are divided by
    their sum (so borders renormalise rather than clamp coordinates), and each is stored as
    ``round(weight * 2^22)`` (half up). PIL's window ``[round(c - support), round(c + support))`` holds every pixel
    with non-zero weight (and at most zero-weight ones besides), so a dense matrix over all pixels gives the same
    coefficients.

    PIL computes the weights in float64. Here they are exact ratios of integers: multiplied by ``2 * in * out``, the
    triangle is ``max(0, 2 * max(in, out) - |(2j + 1) * out - (2i + 1) * in|)``, and the rounding is an int64 floor
    division. Both agree because a fixed-point weight ``W_j * 2^22 / sum(W)`` can only be a tie (``k + 0.5``) when
    the sum is a multiple of 2^23, far beyond any image size, and otherwise lies at least ``1 / (2 * sum(W))`` from
    one, which float64's error never crosses; where float64 rounds a window bound the other way, the pixel gained
    or lost has weight zero.

    Args:
        in_len, out_len: [B] int64 valid lengths.
        in_size, out_size: canvas lengths (ints, or 0-d tensors in traced graphs with dynamic sizes).
    Returns:
        [B, out_size, in_size] int64 weights in units of 2^-22; rows at or beyond ``out_len[b]`` and columns at or
        beyond ``in_len[b]`` are zero.
    """
    n = in_len.to(torch.int64).reshape(-1, 1, 1)
    m_valid = out_len.to(torch.int64).reshape(-1, 1, 1)
    m = m_valid.clamp(min=1)
    i = torch.arange(out_size, dtype=torch.int64, device=n.device).reshape(1, -1, 1)
    j = torch.arange(in_size, dtype=torch.int64, device=n.device).reshape(1, 1, -1)
    # Pixel centres and sample positions in units of 1 / (2 * out) input pixels; pixels beyond the image and samples
    # beyond the output are moved out of every tent's reach, so padding rows and columns come out zero.
    centre = torch.where(j < n, (2 * j + 1) * m, torch.full_like(j, _FAR))  # [B, 1, in]
    sample = torch.where(i < m_valid, (2 * i + 1) * n, torch.full_like(i, -_FAR))  # [B, out, 1]
    tent = torch.clamp(2 * torch.maximum(n, m) - torch.abs(centre - sample), min=0)  # [B, out, in]
    total = tent.sum(dim=2, keepdim=True).clamp(min=1)
    return torch.div(tent * (2 << PIL_PRECISION_BITS) + total, 2 * total, rounding_mode="floor")  # round half up


def pil_bilinear_resize(images: torch.Tensor, sizes: torch.Tensor, out_sizes: torch.Tensor,
                        out_canvas: tuple[int | torch.Tensor, int | torch.Tensor],
                        max_shrink: float | None = None) -> torch.Tensor:
    """PIL's bilinear resize of each uint8 image of a canvas, exactly.

    PIL resamples one axis, rounds to 8 bits, then resamples the other, so the pass order changes results by one
    level here and there. Both orders are computed and each image takes the one ``pil_vertical_first`` picks (a pass
    over an unchanged axis is the identity either way).

    Args:
        images: [B, C, H, W] uint8 (or integer-valued float) canvas, image b top-left at ``sizes[b]``.
        sizes: [B, 2] int64 (h, w) of each image; out_sizes: [B, 2] int64 resized (h, w).
        out_canvas: (hn, wn) of the output canvas.
        max_shrink: a bound on ``size / out_size`` along either axis for every image this call can see (1 or less:
            no image shrinks); give it only for fixed canvases (in a traced graph their sizes become constants).
            With it, each output pixel reads a fixed window of ``pil_tap_count(max_shrink)`` input pixels
            (``pil_bilinear_taps``): a few gathers instead of a dense matmul over the whole axis (about 100x less
            arithmetic at 800x1333). Without it (or past 32 taps) the dense weight matrices are used; both give the
            same integers.
    Returns:
        [B, C, hn, wn] float32 holding integers 0..255; zero beyond ``out_sizes``. Exact while no output pixel reads
        more than 32 input pixels along an axis, i.e. for shrinking by up to 16x (see ``_fixed_point_pass``).
    """
    hn, wn = out_canvas
    x = images.to(torch.float32)
    taps = pil_tap_count(max_shrink) if max_shrink is not None else None
    if taps is not None and taps <= _MAX_EXACT_TAPS:  # a bound implies fixed canvases: shapes are graph constants
        in_h, in_w = int(images.shape[2]), int(images.shape[3])
        width = _tap_pass_fn(pil_bilinear_taps(sizes[:, 1], out_sizes[:, 1], in_w, int(wn), taps), in_w, True)
        height = _tap_pass_fn(pil_bilinear_taps(sizes[:, 0], out_sizes[:, 0], in_h, int(hn), taps), in_h, False)
    else:
        halves_w = _split_weights(pil_bilinear_matrix(sizes[:, 1], out_sizes[:, 1], images.shape[3], wn))
        halves_h = _split_weights(pil_bilinear_matrix(sizes[:, 0], out_sizes[:, 0], images.shape[2], hn))

        def width(t: torch.Tensor) -> torch.Tensor:
            return _fixed_point_pass(t, halves_w, along_width=True)

        def height(t: torch.Tensor) -> torch.Tensor:
            return _fixed_point_pass(t, halves_h, along_width=False)
    vertical_first = pil_vertical_first(sizes, out_sizes)
    # Eager runs compute only the pass order that the batch needs (the same arithmetic, half the work); a static
    # graph computes both and selects per image.
    order = "both"
    if max_shrink is not None and max_shrink <= 1:
        order = "width"  # no image shrinks, so pil_vertical_first is False for every image (dh <= 0)
    elif not static_shapes_required(vertical_first):
        n_vertical = int(vertical_first.sum())
        order = "height" if n_vertical == vertical_first.numel() else "width" if n_vertical == 0 else "both"
    if order != "height":
        width_first = height(width(x))
        if order == "width":
            return width_first
    height_first = width(height(x))
    if order == "height":
        return height_first
    return torch.where(vertical_first.reshape(-1, 1, 1, 1), height_first, width_first)


def pil_vertical_first(sizes: torch.Tensor, out_sizes: torch.Tensor) -> torch.Tensor:
    """[B] bool: whether PIL runs the vertical pass first, by Pillow 13's rule.

    Pillow 13 (python-pillow/Pillow#9549) resamples the height first when it shrinks by more than twice as many
    pixels as the width does: ``h - out_h > max(0, 2 * (w - out_w))``. Pillow 10 to 12.1 always start with the width
    (12.2/12.3 start with the height only for images over 100 times taller than wide). For detectron2's
    shortest-edge resize, where both sides scale alike, the rules differ only for shrunk images about twice as tall
    as wide or more; upscaling is width-first in every version.
    """
    dh = sizes[:, 0] - out_sizes[:, 0]
    dw = sizes[:, 1] - out_sizes[:, 1]
    return (dh > 0) & (dh > 2 * dw)


# x * lo summed over 32 taps stays below 255 * 2047 * 32 < 2^24: the most taps whose float32 sums are exact.
_MAX_EXACT_TAPS = 32


def pil_tap_count(max_shrink: float) -> int:
    """Input pixels per output pixel that cover PIL's bilinear window when no axis shrinks by more than
    ``max_shrink``: its tent reaches ``support = max(1, shrink)`` pixels on each side of the sample, so at most
    ``2 * support + 1`` pixel centres lie strictly inside it (3 when enlarging)."""
    return int(math.floor(2 * max(1.0, float(max_shrink)))) + 2 if max_shrink > 1 else 3


def pil_bilinear_taps(in_len: torch.Tensor, out_len: torch.Tensor, in_size: int, out_size: int,
                      taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``pil_bilinear_matrix``'s non-zero coefficients only: for each output pixel, ``taps`` consecutive input pixels
    starting at the first one its tent can reach, and their fixed-point weights (same integers, same rounding).

    The tent of output i is non-zero for input j only if ``(2j + 1) * out > (2i + 1) * in - 2 * max(in, out)``, so
    the window starts at ``floor(((2i + 1) * in - 2 * max(in, out)) / (2 * out))``; it holds every non-zero weight
    while ``taps >= 2 * max(in, out) / out + 1`` (``pil_tap_count``). Pixels past the image get weight 0 and a
    valid index.

    Returns:
        index [B, out_size, taps] int64 (into 0..in_size-1) and weights [B, out_size, taps] int64 (units of 2^-22).
    """
    n = in_len.to(torch.int64).reshape(-1, 1, 1)
    m_valid = out_len.to(torch.int64).reshape(-1, 1, 1)
    m = m_valid.clamp(min=1)
    big = torch.maximum(n, m)
    i = torch.arange(out_size, dtype=torch.int64, device=n.device).reshape(1, -1, 1)
    first = torch.div((2 * i + 1) * n - 2 * big, 2 * m, rounding_mode="floor").clamp(min=0)  # [B, out, 1]
    j = first + torch.arange(taps, dtype=torch.int64, device=n.device).reshape(1, 1, -1)  # [B, out, taps]
    centre = torch.where(j < n, (2 * j + 1) * m, torch.full_like(j, _FAR))
    sample = torch.where(i < m_valid, (2 * i + 1) * n, torch.full_like(i, -_FAR))
    tent = torch.clamp(2 * big - torch.abs(centre - sample), min=0)
    total = tent.sum(dim=2, keepdim=True).clamp(min=1)
    weights = torch.div(tent * (2 << PIL_PRECISION_BITS) + total, 2 * total, rounding_mode="floor")
    index = torch.where(j < n, j, torch.zeros_like(j))  # j < n <= in_size
    return index, weights


def _tap_pass_fn(taps: tuple[torch.Tensor, torch.Tensor], in_size: int, along_width: bool):
    """One PIL pass from ``pil_bilinear_taps`` as a function of [B, C, H, W] float32 integers 0..255.

    The resampled axis is moved first and flattened with the batch, so each tap is one gather of whole
    [C x other-axis] rows (per-image indices offset by ``b * length``), scaled by its hi and lo weight halves and
    summed: the same exact integer sums as ``_fixed_point_pass``, in any order.
    """
    index, weights = taps
    b, out, count = index.shape
    hi, lo = _split_weights(weights).split(out, dim=1)  # [B, out, taps] each
    rows = index + torch.arange(b, device=index.device).reshape(-1, 1, 1) * in_size  # rows of [B * in_size, ...]

    def apply(x: torch.Tensor) -> torch.Tensor:
        moved = x.permute(0, 3, 1, 2) if along_width else x.permute(0, 2, 1, 3)  # [B, in_size, C, other]
        flat = moved.reshape(b * in_size, -1)
        hi_sum = lo_sum = None
        for t in range(count):
            sample = flat.index_select(0, rows[..., t].reshape(-1))  # [B * out, C * other]
            h_t = sample * hi[..., t].reshape(-1, 1)
            l_t = sample * lo[..., t].reshape(-1, 1)
            hi_sum = h_t if hi_sum is None else hi_sum + h_t
            lo_sum = l_t if lo_sum is None else lo_sum + l_t
        y = _recombine(hi_sum, lo_sum).reshape(b, out, moved.shape[2], moved.shape[3])
        return y.permute(0, 2, 3, 1) if along_width else y.permute(0, 2, 1, 3)

    return apply


def _split_weights(mat: torch.Tensor) -> torch.Tensor:
    """[B, out, in] fixed-point weights -> [B, 2 * out, in] float32: the ``weight >> 11`` rows, then the low 11 bits.

    Weights are at most 2^22, so the float32 conversion is exact and so is every step here.
    """
    weights = mat.to(torch.float32)
    hi = torch.floor(weights * (1.0 / (1 << _SPLIT_BITS)))
    return torch.cat([hi, weights - hi * (1 << _SPLIT_BITS)], dim=1)


def _fixed_point_pass(x: torch.Tensor, halves: torch.Tensor, along_width: bool) -> torch.Tensor:
    """One PIL pass, ``clip8((sum_j x_j * k_j + 2^21) >> 22)``, in float32 without rounding error.

    The sum can reach 2^30, beyond float32's 24-bit integers, so each weight is split as ``hi * 2^11 + lo``
    (``_split_weights``) and both halves go through one matmul. ``x @ hi`` stays below 255 * 2049 and ``x @ lo``
    below 255 * 2047 * taps, so every partial sum is an exact float32 integer while an output reads at most 32
    input pixels. The halves then recombine with exact power-of-two scalings:
    ``floor((hi_sum * 2^11 + lo_sum + 2^21) / 2^22) = floor((hi_sum + floor(lo_sum / 2^11) + 2^10) / 2^11)``.
    PIL's clip to 0..255 never acts: the weights are non-negative and sum to 1 within ``taps / 2^23``.

    Args:
        x: [B, C, H, W] float32 integers 0..255.
        halves: [B, 2 * out, W] (along_width) or [B, 2 * out, H] from ``_split_weights``.
    Returns:
        [B, C, H, out] (along_width) or [B, C, out, W] float32 integers 0..255.
    """
    if along_width:
        sums = torch.matmul(x, halves.transpose(1, 2).unsqueeze(1)).unflatten(-1, (2, -1))  # [B, C, H, 2, out]
        hi_sum, lo_sum = sums[..., 0, :], sums[..., 1, :]
    else:
        sums = torch.matmul(halves.unsqueeze(1), x).unflatten(-2, (2, -1))  # [B, C, 2, out, W]
        hi_sum, lo_sum = sums[..., 0, :, :], sums[..., 1, :, :]
    return _recombine(hi_sum, lo_sum)


def _recombine(hi_sum: torch.Tensor, lo_sum: torch.Tensor) -> torch.Tensor:
    """``floor((hi_sum * 2^11 + lo_sum + 2^21) / 2^22)`` with exact power-of-two steps (see ``_fixed_point_pass``)."""
    unit = float(1 << _SPLIT_BITS)
    carry = torch.div(lo_sum, unit, rounding_mode="floor")
    return torch.div(hi_sum + carry + unit / 2, unit, rounding_mode="floor")
