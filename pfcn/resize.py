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
    """Resized (h, w) of each image by detectron2's ResizeShortestEdge rule, as tensors.

    Args:
        sizes: [B, 2] int64 original (h, w).
        short: target length of the shorter side (INPUT.MIN_SIZE_TEST).
        max_size: cap on the longer side (INPUT.MAX_SIZE_TEST).
    Returns:
        [B, 2] int64 resized (h, w): ``int(x + 0.5)`` of the scaled sizes, as detectron2 rounds.
    """
    hw = sizes.to(torch.float32)
    h, w = hw[:, 0], hw[:, 1]
    scale = short / torch.minimum(h, w)
    newh = torch.where(h < w, torch.full_like(h, float(short)), scale * h)
    neww = torch.where(h < w, scale * w, torch.full_like(w, float(short)))
    longest = torch.maximum(newh, neww)
    cap = torch.where(longest > max_size, max_size / longest, torch.ones_like(longest))
    newh, neww = newh * cap, neww * cap
    return torch.stack([torch.floor(newh + 0.5), torch.floor(neww + 0.5)], dim=1).to(torch.int64)


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
