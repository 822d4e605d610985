"""Fixed-shape bilinear resizing with per-image sizes carried as tensors.

A batch holds images of different sizes in one canvas, and an exported graph must not change shape with the data.
Bilinear resizing (align_corners=False, PyTorch's rule) is separable, so resizing the valid top-left ``h x w`` region
of a canvas to ``out_h x out_w`` inside another canvas is ``M_h @ X @ M_w^T`` with per-image interpolation matrices
built from the sizes. Two successive resizes (the official 4x upsample, crop, then resize to the original size)
compose into one matrix per axis, which is exact in real arithmetic and a single MatMul pair in the graph.

The test-time image resize is different: detectron2 resizes uint8 images with PIL, whose bilinear filter works in
fixed point and antialiases when shrinking. ``pil_bilinear_resize`` reproduces it bit for bit with integer weight
matrices (``pil_bilinear_matrix``) applied by exact float32 matmuls.
"""

from __future__ import annotations

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


def interp_matrix(in_len: torch.Tensor, out_len: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Per-image 1-D bilinear interpolation matrices (align_corners=False).

    Row ``i < out_len[b]`` holds the weights with which output sample i reads the first ``in_len[b]`` input samples;
    rows at or beyond ``out_len[b]`` are zero (padding). The source position follows PyTorch's upsample kernels in
    float32: ``max(0, (i + 0.5) * in/out - 0.5)``, the lower index clamped to ``in - 1``.

    Args:
        in_len, out_len: [B] int64 valid lengths.
        in_size, out_size: static canvas lengths.
    Returns:
        [B, out_size, in_size] float32.
    """
    in_len = in_len.to(torch.float32).reshape(-1, 1)
    out_len_f = out_len.to(torch.float32).reshape(-1, 1)
    dst = torch.arange(out_size, dtype=torch.float32, device=in_len.device).reshape(1, -1)
    scale = in_len / out_len_f.clamp(min=1.0)
    src = torch.clamp(scale * (dst + 0.5) - 0.5, min=0.0)  # [B, out]
    lo = torch.minimum(torch.floor(src), in_len - 1)
    hi = torch.minimum(lo + 1, in_len - 1)
    frac = torch.clamp(src - lo, 0.0, 1.0)
    cols = torch.arange(in_size, dtype=torch.float32, device=in_len.device).reshape(1, 1, -1)
    lo, hi, frac = lo.unsqueeze(-1), hi.unsqueeze(-1), frac.unsqueeze(-1)
    mat = (cols == lo).to(torch.float32) * (1.0 - frac) + (cols == hi).to(torch.float32) * frac
    valid_rows = (dst < out_len_f).to(torch.float32).unsqueeze(-1)  # [B, out, 1]
    return mat * valid_rows


def upsample_matrix(in_size: int, factor: int, batch: int, device: torch.device) -> torch.Tensor:
    """The matrix of ``F.interpolate(scale_factor=factor, mode="bilinear")`` along one axis: [B, in*factor, in]."""
    n = torch.full((batch,), in_size, dtype=torch.int64, device=device)
    return interp_matrix(n, n * factor, in_size, in_size * factor)


def apply_separable(x: torch.Tensor, mat_h: torch.Tensor, mat_w: torch.Tensor) -> torch.Tensor:
    """``M_h @ x @ M_w^T`` per image and channel.

    Args:
        x: [B, C, H_in, W_in]
        mat_h: [B, H_out, H_in]; mat_w: [B, W_out, W_in]
    Returns:
        [B, C, H_out, W_out]
    """
    y = torch.matmul(x, mat_w.transpose(1, 2).unsqueeze(1))  # [B, C, H_in, W_out]
    return torch.matmul(mat_h.unsqueeze(1), y)  # [B, C, H_out, W_out]


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
                        out_canvas: tuple[int | torch.Tensor, int | torch.Tensor]) -> torch.Tensor:
    """PIL's bilinear resize of each uint8 image of a canvas, exactly.

    PIL resamples one axis, rounds to 8 bits, then resamples the other, so the pass order changes results by one
    level here and there. Both orders are computed and each image takes the one ``pil_vertical_first`` picks (a pass
    over an unchanged axis is the identity either way).

    Args:
        images: [B, C, H, W] uint8 (or integer-valued float) canvas, image b top-left at ``sizes[b]``.
        sizes: [B, 2] int64 (h, w) of each image; out_sizes: [B, 2] int64 resized (h, w).
        out_canvas: (hn, wn) of the output canvas.
    Returns:
        [B, C, hn, wn] float32 holding integers 0..255; zero beyond ``out_sizes``. Exact while no output pixel reads
        more than 32 input pixels along an axis, i.e. for shrinking by up to 16x (see ``_fixed_point_pass``).
    """
    hn, wn = out_canvas
    halves_w = _split_weights(pil_bilinear_matrix(sizes[:, 1], out_sizes[:, 1], images.shape[3], wn))  # [B, 2wn, W]
    halves_h = _split_weights(pil_bilinear_matrix(sizes[:, 0], out_sizes[:, 0], images.shape[2], hn))  # [B, 2hn, H]
    x = images.to(torch.float32)
    vertical_first = pil_vertical_first(sizes, out_sizes)
    # Eager runs compute only the pass order that the batch needs (the same arithmetic, half the work); a static
    # graph computes both and selects per image.
    order = "both"
    if not static_shapes_required(vertical_first):
        n_vertical = int(vertical_first.sum())
        order = "height" if n_vertical == vertical_first.numel() else "width" if n_vertical == 0 else "both"
    if order != "height":
        width_first = _fixed_point_pass(_fixed_point_pass(x, halves_w, along_width=True), halves_h, along_width=False)
        if order == "width":
            return width_first
    height_first = _fixed_point_pass(_fixed_point_pass(x, halves_h, along_width=False), halves_w, along_width=True)
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
    unit = float(1 << _SPLIT_BITS)
    carry = torch.div(lo_sum, unit, rounding_mode="floor")
    return torch.div(hi_sum + carry + unit / 2, unit, rounding_mode="floor")
