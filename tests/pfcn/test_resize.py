"""PIL-exact bilinear resizing: the fixed-point weight matrices and the two-pass resize, against Pillow itself."""

from __future__ import annotations

import warnings

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from pfcn.resize import (PIL_PRECISION_BITS, _fixed_point_pass, _split_weights, pil_bilinear_matrix,
                         pil_bilinear_resize, pil_bilinear_taps, pil_tap_count, pil_vertical_first)

# Pillow 13 picks the pass order by the sizes (pfcn.resize.pil_vertical_first); older releases start with the width.
PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13
NEEDS_PILLOW_13 = pytest.mark.skipif(not PILLOW_13, reason=f"Pillow {PIL.__version__}: pass order before Pillow 13")


def pil_resize(img: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))


def resize_in_canvas(images: list[np.ndarray], out: list[tuple[int, int]], pad: int = 3,
                     taps: bool = False) -> list[np.ndarray]:
    """pil_bilinear_resize on a batch canvas with spare room around every image; checks the padding stays zero.
    ``taps``: through the fixed-window gathers, with the batch's true largest shrink as the bound."""
    b = len(images)
    canvas = torch.zeros(b, 3, max(i.shape[0] for i in images) + pad, max(i.shape[1] for i in images) + pad,
                         dtype=torch.uint8)
    for k, im in enumerate(images):
        canvas[k, :, : im.shape[0], : im.shape[1]] = torch.from_numpy(im).permute(2, 0, 1)
    sizes = torch.tensor([i.shape[:2] for i in images], dtype=torch.int64)
    out_sizes = torch.tensor(out, dtype=torch.int64)
    shrink = max(max(i.shape[0] / o[0], i.shape[1] / o[1]) for i, o in zip(images, out)) if taps else None
    y = pil_bilinear_resize(canvas, sizes, out_sizes, (max(o[0] for o in out) + pad, max(o[1] for o in out) + pad),
                            max_shrink=shrink)
    results = []
    for k, (oh, ow) in enumerate(out):
        assert torch.count_nonzero(y[k, :, oh:]) == 0 and torch.count_nonzero(y[k, :, :, ow:]) == 0
        results.append(y[k, :, :oh, :ow].permute(1, 2, 0).numpy())
    return results


def random_case(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = (int(v) for v in rng.integers(1, 120, 2))
    kind = rng.integers(3)
    if kind == 0:  # enlarge both sides
        out = (int(rng.integers(h, 3 * h + 2)), int(rng.integers(w, 3 * w + 2)))
    elif kind == 1:  # shrink both sides, up to 12x
        out = (max(1, h // int(rng.integers(1, 13))), max(1, w // int(rng.integers(1, 13))))
    else:  # anything
        out = (int(rng.integers(1, 200)), int(rng.integers(1, 200)))
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if rng.random() < 0.2:
        img[:] = 255  # saturated: the largest sums
    return img, out


def test_weights_are_pils_fixed_point_coefficients_along_each_axis():
    """One-axis resizes (a single row or column) isolate one set of coefficients, enlarging and shrinking."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, m = (int(v) for v in rng.integers(1, 300, 2))
        rows = rng.integers(0, 256, (7, n, 3), dtype=np.uint8)
        want = pil_resize(rows, 7, m)  # width only
        weights = _split_weights(pil_bilinear_matrix(torch.tensor([n]), torch.tensor([m]), n, m))
        got = _fixed_point_pass(torch.from_numpy(rows).permute(2, 0, 1)[None].float(), weights, along_width=True)
        np.testing.assert_array_equal(got[0].permute(1, 2, 0).numpy(), want, err_msg=f"width {n} -> {m}")
        cols = rows.transpose(1, 0, 2).copy()  # n x 7
        want = pil_resize(cols, m, 7)  # height only
        got = _fixed_point_pass(torch.from_numpy(cols).permute(2, 0, 1)[None].float(), weights, along_width=False)
        np.testing.assert_array_equal(got[0].permute(1, 2, 0).numpy(), want, err_msg=f"height {n} -> {m}")


def test_weight_matrix_layout():
    in_len, out_len = torch.tensor([5, 40, 1]), torch.tensor([12, 9, 3])
    mat = pil_bilinear_matrix(in_len, out_len, 45, 14)
    assert mat.shape == (3, 14, 45) and mat.dtype == torch.int64 and (mat >= 0).all()
    for b in range(3):
        n, m = int(in_len[b]), int(out_len[b])
        assert not mat[b, m:].any() and not mat[b, :, n:].any()  # padding rows and columns are zero
        sums = mat[b, :m].sum(1)
        assert ((sums - (1 << PIL_PRECISION_BITS)).abs() <= mat[b, :m].count_nonzero(1)).all()  # each row sums to 1
    # enlarging 5 -> 12 reads two neighbours at most; shrinking 40 -> 9 averages over about 2 * 40/9 pixels
    assert mat[0, :12].count_nonzero(1).max() == 2
    assert mat[1, :9].count_nonzero(1).max() == 9
    assert (mat[2, :3, 0] == 1 << PIL_PRECISION_BITS).all()  # one input pixel: every output copies it


def test_weight_halves_fit_tf32():
    """hi and lo have at most 11 significant bits, so a TF32 MatMul (as TensorRT runs FP32) is still exact."""
    halves = _split_weights(pil_bilinear_matrix(torch.tensor([640, 427, 4000]), torch.tensor([1199, 800, 1333]),
                                                4000, 1333))
    assert halves.min() >= 0 and halves.max() <= 2048 and (halves == torch.round(halves)).all()


def test_taps_hold_exactly_the_non_zero_weights():
    """pil_bilinear_taps scattered back into a dense matrix is pil_bilinear_matrix, for enlarging and shrinking."""
    rng = np.random.default_rng(3)
    for _ in range(400):
        n, m = (int(v) for v in rng.integers(1, 300, 2))
        in_len, out_len = torch.tensor([n, max(1, n // 2)]), torch.tensor([m, m])
        count = pil_tap_count(max(n / m, in_len[1].item() / m))
        index, weights = pil_bilinear_taps(in_len, out_len, n + 2, m + 3, count)
        dense = pil_bilinear_matrix(in_len, out_len, n + 2, m + 3)
        rebuilt = torch.zeros_like(dense).scatter_add_(2, index, weights)
        assert torch.equal(rebuilt, dense), (n, m, count)
    assert pil_tap_count(1.0) == 3 and pil_tap_count(0.5) == 3 and pil_tap_count(2.0) == 6


@pytest.mark.parametrize("taps", [False, True], ids=["dense", "taps"])
def test_resize_equals_pil_on_random_images(taps):
    rng = np.random.default_rng(1)
    cases = [random_case(rng) for _ in range(120)]
    if not PILLOW_13:
        cases = [(img, out) for img, out in cases
                 if not pil_vertical_first(torch.tensor([img.shape[:2]]), torch.tensor([out]))[0]]
    for start in range(0, len(cases), 4):  # batches of 4 different sizes in one canvas
        batch = cases[start:start + 4]
        got = resize_in_canvas([c[0] for c in batch], [c[1] for c in batch], taps=taps)
        for (img, (oh, ow)), g in zip(batch, got):
            np.testing.assert_array_equal(g, pil_resize(img, oh, ow), err_msg=f"{img.shape[:2]} -> {(oh, ow)}")


@pytest.mark.parametrize("h,w,oh,ow", [(640, 480, 40, 30), (2000, 300, 125, 19), (77, 1600, 77, 100)])
def test_resize_equals_pil_when_shrinking_16x(h, w, oh, ow):
    """The most input pixels per output for which the float32 sums are guaranteed exact; bright images included."""
    rng = np.random.default_rng(h)
    yy, xx = np.mgrid[:h, :w]
    smooth = np.stack([(yy * 7 + xx * 3) % 256, (yy // 3) % 256, np.full_like(yy, 255)], -1).astype(np.uint8)
    for img in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), smooth, np.full((h, w, 3), 255, np.uint8)):
        for taps in (False, True):
            (got,) = resize_in_canvas([img], [(oh, ow)], pad=0, taps=taps)
            np.testing.assert_array_equal(got, pil_resize(img, oh, ow))


@NEEDS_PILLOW_13
def test_pass_order_follows_pillow():
    """Where the two orders differ, Pillow's result is the order pil_vertical_first names."""
    rng = np.random.default_rng(2)
    checked = 0
    for h, w, oh, ow in [(60, 60, 10, 35), (60, 60, 10, 36), (80, 40, 20, 10), (80, 40, 20, 11), (30, 90, 10, 40),
                         (50, 20, 49, 100), (20, 50, 100, 49), (90, 30, 89, 27), (90, 30, 85, 28)]:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        width_first = pil_resize(pil_resize(img, h, ow), oh, ow)
        height_first = pil_resize(pil_resize(img, oh, w), oh, ow)
        vertical = bool(pil_vertical_first(torch.tensor([[h, w]]), torch.tensor([[oh, ow]]))[0])
        assert vertical == (h - oh > max(0, 2 * (w - ow)))
        pil = pil_resize(img, oh, ow)
        np.testing.assert_array_equal(pil, height_first if vertical else width_first, err_msg=f"{(h, w, oh, ow)}")
        (got,) = resize_in_canvas([img], [(oh, ow)])
        np.testing.assert_array_equal(got, pil)
        checked += not np.array_equal(width_first, height_first)
    assert checked >= 6  # the cases do tell the orders apart


def test_resize_traces_with_tensor_canvas_sizes():
    """The output canvas may be 0-d tensors (dynamic-size graphs): tracing keeps it symbolic."""
    img = np.random.default_rng(3).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    canvas = torch.from_numpy(img).permute(2, 0, 1)[None].contiguous()

    def fn(images: torch.Tensor, sizes: torch.Tensor, out_sizes: torch.Tensor) -> torch.Tensor:
        hw = torch._shape_as_tensor(images)[2:] * 2
        return pil_bilinear_resize(images, sizes, out_sizes, (hw[0], hw[1]))

    sizes = torch.tensor([[30, 50]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic
        traced = torch.jit.trace(fn, (canvas, sizes, torch.tensor([[45, 90]])))
    other = torch.from_numpy(np.ascontiguousarray(img[:20, :40])).permute(2, 0, 1)[None].contiguous()
    got = traced(other, torch.tensor([[20, 40]]), torch.tensor([[7, 33]]))
    assert got.shape == (1, 3, 40, 80)
    np.testing.assert_array_equal(got[0, :, :7, :33].permute(1, 2, 0).numpy(), pil_resize(img[:20, :40], 7, 33))



def test_model_shrink_bound_covers_every_image_of_its_canvas():
    """PanopticFCN.max_shrink bounds size / resized size for any image in the canvas (rounding and squeeze included),
    so the fixed tap window of the in-graph resize always holds every PIL weight."""
    from types import SimpleNamespace

    from pfcn.model import PanopticFCN, _ceil_to
    from pfcn.resize import shortest_edge_size

    rng = np.random.default_rng(5)
    for short, max_size, canvas in [(800, 1333, (800, 1333)), (800, 1333, (1080, 1920)), (128, 213, (500, 90)),
                                    (512, 853, (3000, 40))]:
        cfg = SimpleNamespace(min_size_test=short, max_size_test=max_size)
        net = tuple(_ceil_to(v, 32) for v in shortest_edge_size(torch.tensor([canvas]), short, max_size)[0].tolist())
        bound = PanopticFCN.max_shrink(cfg, canvas, net)
        sizes = torch.tensor([[int(rng.integers(1, canvas[0] + 1)), int(rng.integers(1, canvas[1] + 1))]
                              for _ in range(3000)] + [list(canvas)])
        resized = torch.minimum(shortest_edge_size(sizes, short, max_size), torch.tensor([net]))
        worst = (sizes / resized).max().item()
        assert worst <= bound, (canvas, worst, bound)
        if bound == 1.0:
            assert (resized >= sizes).all()
