"""Fixed-shape bilinear resizing with per-image sizes carried as tensors.

A batch holds images of different sizes in one canvas, and an exported graph must not change shape with the data.
Bilinear resizing (align_corners=False, PyTorch's rule) is separable, so resizing the valid top-left ``h x w`` region
of a canvas to ``out_h x out_w`` inside another canvas is ``M_h @ X @ M_w^T`` with per-image interpolation matrices
built from the sizes. Two successive resizes (the official 4x upsample, crop, then resize to the original size)
compose into one matrix per axis, which is exact in real arithmetic and a single MatMul pair in the graph.
"""

from __future__ import annotations

import torch


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
