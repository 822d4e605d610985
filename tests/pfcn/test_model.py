"""The static end-to-end forward: output contract, batching, traceability, preprocessing and the resize rule."""

from __future__ import annotations

import ast
import io
import linecache
import re
import tokenize
import warnings
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from pfcn.config import load_config
from pfcn.inference import OUTPUT_NAMES
from pfcn.model import PanopticFCN, build_model
from pfcn.predictor import to_canvas
from pfcn.resize import shortest_edge_size

from .parity import SAMPLE, SMALL_CONFIG, calibrated_model, mask_iou, synthetic_image

PFCN_DIR = Path(__file__).resolve().parents[2] / "pfcn"
PHOTOS = sorted((SAMPLE / "input_images").glob("*.jpg"))


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    # Different sizes, same network canvas (256 x 352 for the small config), so that they can share a batch exactly.
    return [synthetic_image(120, 160, 3), synthetic_image(110, 150, 4)]


@pytest.fixture(scope="module")
def small(images):
    model, cfg = calibrated_model(SMALL_CONFIG, 0, images)
    return model, cfg


# ----------------------------------------------------------------------------------------------- output contract
def test_static_forward_contract(small, images):
    model, cfg = small
    canvas, sizes = to_canvas(images)
    b, _, h, w = canvas.shape
    k = cfg.MODEL.POSITION_HEAD.THING.TOP_NUM
    s = cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES
    with torch.no_grad():
        out = model(canvas, sizes)
    assert tuple(out) == OUTPUT_NAMES
    expected = {
        "panoptic": ((b, h, w), torch.int32), "semantic": ((b, h, w), torch.int64),
        "instance_masks": ((b, k, h, w), torch.bool), "instance_scores": ((b, k), torch.float32),
        "instance_classes": ((b, k), torch.int64), "instance_valid": ((b, k), torch.bool),
        "segment_ids": ((b, k + s), torch.int32), "segment_classes": ((b, k + s), torch.int64),
        "segment_isthing": ((b, k + s), torch.bool), "segment_scores": ((b, k + s), torch.float32),
        "segment_areas": ((b, k + s), torch.int64), "segment_valid": ((b, k + s), torch.bool),
    }
    for name, (shape, dtype) in expected.items():
        assert tuple(out[name].shape) == shape and out[name].dtype == dtype, name
    for i, (ih, iw) in enumerate(sizes.tolist()):
        # Nothing outside the image's own top-left region of the canvas.
        assert not out["panoptic"][i, ih:].any() and not out["panoptic"][i, :, iw:].any()
        assert not out["instance_masks"][i, :, ih:].any() and not out["instance_masks"][i, :, :, iw:].any()
        # Segment table consistent with the id map.
        valid = out["segment_valid"][i]
        ids = out["segment_ids"][i][valid]
        assert sorted(ids.tolist()) == list(range(1, int(valid.sum()) + 1))
        assert set(torch.unique(out["panoptic"][i]).tolist()) <= {0, *ids.tolist()}
        for sid, area in zip(ids.tolist(), out["segment_areas"][i][valid].tolist()):
            assert int((out["panoptic"][i] == sid).sum()) == area
        classes = out["instance_classes"][i][out["instance_valid"][i]]
        assert ((classes >= 0) & (classes < cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES)).all()
    assert out["instance_valid"].any() and out["segment_valid"].any(), "calibrated model predicts nothing"


def test_batch_member_equals_image_alone(small, images):
    """Two images of different sizes sharing one canvas get the results they get alone (same network canvas)."""
    model, _ = small
    canvas, sizes = to_canvas(images)
    net = model.network_size(*canvas.shape[2:])
    assert all(model.network_size(*im.shape[:2]) == net for im in images)
    with torch.no_grad():
        both = model(canvas, sizes)
        for i, im in enumerate(images):
            h, w = im.shape[:2]
            c, s = to_canvas([im])
            alone = model(c, s, net)
            agree = (both["panoptic"][i, :h, :w] == alone["panoptic"][0]).float().mean().item()
            assert agree >= 0.999, f"image {i}: only {agree:.4%} of panoptic pixels agree"
            assert torch.equal(both["instance_valid"][i], alone["instance_valid"][0])
            assert torch.equal(both["instance_classes"][i], alone["instance_classes"][0])
            torch.testing.assert_close(both["instance_scores"][i], alone["instance_scores"][0], rtol=1e-4, atol=1e-5)
            valid = alone["instance_valid"][0]
            for a, b in zip(both["instance_masks"][i, valid, :h, :w], alone["instance_masks"][0, valid]):
                assert mask_iou(a.numpy(), b.numpy()) >= 0.99


def test_eager_cpu_shortcuts_equal_the_static_path(small, images, monkeypatch):
    """The eager-CPU shortcuts (official F.interpolate per image, the merge over active slots, the stuff-area
    histogram) give what the static path gives, on a batch of two sizes whose original size differs from the
    resized one: same segments and areas, the same pixels but for float32 last-bit ties at the mask threshold."""
    import pfcn.inference

    model, _ = small
    canvas, sizes = to_canvas(images)
    with torch.no_grad():
        eager = model(canvas, sizes)
        monkeypatch.setattr(pfcn.inference, "host_values_free", lambda t: False)
        static = model(canvas, sizes)
    for name in ("instance_valid", "instance_classes", "segment_valid", "segment_ids", "segment_classes"):
        assert torch.equal(eager[name], static[name]), name
    assert (eager["segment_areas"] - static["segment_areas"]).abs().max() <= 2
    for name in ("panoptic", "semantic", "instance_masks"):
        agree = (eager[name] == static[name]).float().mean().item()
        assert agree >= 0.9999, f"{name}: {agree:.5%}"
    assert eager["segment_valid"].sum() >= 2


@pytest.mark.parametrize("num", [1, 2, 9, 54, 55, 133])
def test_static_label_counts_equal_a_histogram(num):
    """The static stuff-area count (two sqrt(num)-row one-hots and a matmul per row) is the exact histogram of the
    kept pixels' labels, for label counts that are and are not perfect squares, with wide rows of one label."""
    from pfcn.inference import _label_counts

    gen = torch.Generator().manual_seed(num)
    labels = torch.randint(0, num, (2, 37, 3001), generator=gen)
    labels[0, :5] = num - 1  # whole rows of one label: the largest per-row sums
    keep = torch.rand(2, 37, 3001, generator=gen) > 0.3
    counts = _label_counts(labels, keep, num)
    assert counts.dtype == torch.int64 and counts.shape == (2, num)
    for i in range(2):
        assert torch.equal(counts[i], torch.bincount(labels[i][keep[i]], minlength=num))


# ----------------------------------------------------------------------------------------------- no host sync
# value reads and shape-from-data ops; bincount and repeat_interleave read a maximum or a total on the host (CUDA)
FORBIDDEN_NAMES = {"item", "tolist", "nonzero", "unique", "unique_consecutive", "argwhere", "masked_select", "numpy",
                   "bincount", "repeat_interleave"}


def code_names(path: Path) -> set[str]:
    """Identifiers used in a module's code (docstrings and comments excluded)."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.string for t in tokens if t.type == tokenize.NAME}


def unguarded_nodes(path: Path) -> list[ast.AST]:
    """A module's AST nodes outside the eager-CPU shortcuts: the body of ``if host_values_free(...):`` and the first
    branch of ``a if host_values_free(...) else b`` (where reading values on the host is free and tracing, export,
    compilation and GPU runs never go)."""
    def guarded(test: ast.expr) -> bool:
        return any(isinstance(n, ast.Call) and getattr(n.func, "id", None) == "host_values_free" for n in ast.walk(test))

    found: list[ast.AST] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and guarded(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.IfExp) and guarded(node.test):
            visit(node.orelse)
            return
        found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def unguarded_names(path: Path) -> set[str]:
    """Identifiers (names and attributes) used outside the eager-CPU shortcuts."""
    nodes = unguarded_nodes(path)
    return {n.id for n in nodes if isinstance(n, ast.Name)} | {n.attr for n in nodes if isinstance(n, ast.Attribute)}


def unguarded_host_copies(path: Path) -> list[int]:
    """Lines that build a device tensor from host data (``torch.tensor`` / ``torch.as_tensor`` with ``device=``)
    outside the shortcuts: a host-to-device copy, which a CUDA graph cannot capture."""
    return [n.lineno for n in unguarded_nodes(path) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr in ("tensor", "as_tensor") and any(k.arg == "device" for k in n.keywords)]


def test_inference_source_has_no_host_sync():
    """No host synchronisation on the static path; host values only inside the eager-CPU shortcuts."""
    used = unguarded_names(PFCN_DIR / "inference.py") & FORBIDDEN_NAMES
    assert not used, f"pfcn/inference.py uses data-dependent or host-syncing calls: {sorted(used)}"
    assert code_names(PFCN_DIR / "inference.py") & FORBIDDEN_NAMES == {"tolist", "bincount"}  # the shortcuts


def test_guard_sees_code_not_prose(tmp_path):
    """The guard must catch a call in code and ignore the same word in a docstring or comment."""
    bad = tmp_path / "bad.py"
    bad.write_text('"""uses .item() in prose"""\nx = y.nonzero()  # unique\n')
    assert code_names(bad) & FORBIDDEN_NAMES == {"nonzero"}
    assert unguarded_names(bad) & FORBIDDEN_NAMES == {"nonzero"}
    bad.write_text("if host_values_free(y):\n    n = y.tolist()\nelse:\n    n = y.item()\n"
                   "z = y.numpy() if host_values_free(y) else y.unique()\n")
    assert unguarded_names(bad) & FORBIDDEN_NAMES == {"item", "unique"}
    bad.write_text("import torch\na = torch.as_tensor(3, device=d)\nb = torch.tensor([1])\n"
                   "if host_values_free(y):\n    c = torch.tensor([2], device=d)\n")
    assert unguarded_host_copies(bad) == [2]


def test_static_path_makes_no_host_to_device_copies():
    """A CUDA graph captures the forward only if no tensor is built from host data on the device along the way:
    constants come from fill kernels (``torch.full``) or device arithmetic instead."""
    for name in ("inference.py", "resize.py", "model.py", "heads.py", "layers.py", "backbone.py"):
        assert unguarded_host_copies(PFCN_DIR / name) == [], name


# ``int(x.shape[i])`` also warns while tracing, but reads a static shape (a constant of the fixed-size graph, e.g. the
# TopK count) rather than a tensor value; only conversions of values are data-dependent.
SHAPE_TO_INT = re.compile(r"\bint\(\s*[\w.]+\.shape\[\d+\]\s*\)")


class FixedCanvas(torch.nn.Module):
    """The model with its network canvas fixed, as the exporter uses it; outputs as a tuple in OUTPUT_NAMES order."""

    def __init__(self, model: PanopticFCN, net_size: tuple[int, int]):
        super().__init__()
        self.model = model
        self.net_size = net_size

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, sizes, self.net_size)
        return tuple(out[name] for name in OUTPUT_NAMES)


def test_forward_traces_without_python_values(small, images):
    """No TracerWarning about tensor->Python conversions from pfcn code, no data-dependent ops in the graph, and the
    traced graph follows new image sizes (nothing about the example sizes is frozen into it)."""
    model, _ = small
    small_k = build_model(load_config(SMALL_CONFIG, ["MODEL.DEVICE", "cpu", "MODEL.POSITION_HEAD.THING.TOP_NUM", "20"]))
    small_k.load_state_dict(model.state_dict())  # same weights, a 20-step merge keeps tracing fast
    small_k.eval()
    canvas, sizes = to_canvas(images)
    wrapper = FixedCanvas(small_k, small_k.network_size(*canvas.shape[2:]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traced = torch.jit.trace(wrapper, (canvas, sizes), check_trace=False)
    ours = [f"{Path(w.filename).name}:{w.lineno}: {linecache.getline(w.filename, w.lineno).strip()}"
            for w in caught
            if issubclass(w.category, torch.jit.TracerWarning) and Path(w.filename).resolve().is_relative_to(PFCN_DIR)
            and "Converting a tensor to a Python" in str(w.message)
            and not SHAPE_TO_INT.search(linecache.getline(w.filename, w.lineno))]
    assert not ours, "pfcn code turns tensors into Python values while tracing:\n" + "\n".join(ours)
    kinds = {node.kind() for node in traced.inlined_graph.nodes()}
    dynamic = {k for k in kinds if k.split("::")[-1].lstrip("_") in
               {"nonzero", "nonzero_numpy", "unique", "unique2", "unique_dim", "unique_consecutive", "item",
                "masked_select", "argwhere"}}
    assert not dynamic, f"data-dependent ops in the traced graph: {dynamic}"

    new_sizes = torch.tensor([[80, 101], [110, 160]])
    with torch.no_grad():
        got = traced(canvas, new_sizes)
        want = wrapper(canvas, new_sizes)
    for name, a, b in zip(OUTPUT_NAMES, got, want):
        assert torch.equal(a, b), f"traced graph differs from eager for new sizes in {name}"
    assert not got[0][0, 80:].any() and not got[0][0, :, 101:].any()


# ----------------------------------------------------------------------------------------------- preprocessing
def preprocess_model(*overrides: str) -> PanopticFCN:
    """Small network, R50 test sizes (800 / 1333: the photos are upscaled), distinguishable mean and std."""
    cfg = load_config(SMALL_CONFIG, ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "800", "INPUT.MAX_SIZE_TEST", "1333",
                                     "MODEL.PIXEL_MEAN", "[103.5, 116.25, 123.75]",
                                     "MODEL.PIXEL_STD", "[57.5, 57.0, 58.5]", *overrides])
    return build_model(cfg).eval()


def read_photo(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


# (short, max) test sizes: the photos (427x640, 360x640) are upscaled by the first two and shrunk by the others.
PIL_SIZE_RULES = [(800, 1333), (600, 1024), (320, 512), (200, 333), (90, 150)]


def preprocessed_pixels(model: PanopticFCN, rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The network input of one image mapped back to 0..255 RGB (only the resized area), and its resized size."""
    canvas, sizes = to_canvas([rgb])
    net = model.network_size(*rgb.shape[:2])
    with torch.no_grad():
        x, resized = model.preprocess(canvas, sizes, net)
    newh, neww = resized[0].tolist()
    mean = np.array([103.5, 116.25, 123.75])
    std = np.array([57.5, 57.0, 58.5])
    pixels = x[0].numpy().astype(np.float64).transpose(1, 2, 0)[:newh, :neww] * std + mean  # back to 0..255, BGR
    assert np.abs(pixels - np.round(pixels)).max() < 1e-3, "network input is not (8-bit value - mean) / std"
    return np.round(pixels)[..., ::-1], (newh, neww)  # BGR -> RGB


@pytest.mark.parametrize("short,max_size", PIL_SIZE_RULES)
@pytest.mark.parametrize("photo", [p.name for p in PHOTOS])
def test_preprocess_equals_pil_bilinear_resize(photo, short, max_size):
    model = preprocess_model("INPUT.MIN_SIZE_TEST", str(short), "INPUT.MAX_SIZE_TEST", str(max_size))
    rgb = read_photo(SAMPLE / "input_images" / photo)
    h, w = rgb.shape[:2]
    got, (newh, neww) = preprocessed_pixels(model, rgb)
    assert (newh, neww) == detectron2_size(h, w, short, max_size)
    pil = np.asarray(Image.fromarray(rgb).resize((neww, newh), Image.BILINEAR))
    diff = got != pil
    assert not diff.any(), f"{diff.mean():.4%} of values differ from PIL ({h}x{w} -> {newh}x{neww})"


PILLOW_13 = pytest.mark.skipif(int(PIL.__version__.split(".")[0]) < 13,
                               reason=f"Pillow {PIL.__version__} resamples the width first (pfcn follows Pillow 13)")


@pytest.mark.parametrize("short,max_size", [(800, 1333), pytest.param(160, 400, marks=PILLOW_13),
                                            pytest.param(100, 250, marks=PILLOW_13)])
def test_preprocess_equals_pil_on_a_tall_crop(short, max_size):
    """A crop over twice as tall as wide: shrinking it, Pillow 13 resamples the height first."""
    model = preprocess_model("INPUT.MIN_SIZE_TEST", str(short), "INPUT.MAX_SIZE_TEST", str(max_size))
    rgb = np.ascontiguousarray(read_photo(SAMPLE / "input_images" / PHOTOS[0].name)[:, 200:380])  # 427 x 180
    got, (newh, neww) = preprocessed_pixels(model, rgb)
    assert (newh, neww) == detectron2_size(*rgb.shape[:2], short, max_size)
    pil = np.asarray(Image.fromarray(rgb).resize((neww, newh), Image.BILINEAR))
    assert not (got != pil).any(), f"{(got != pil).mean():.4%} of values differ from PIL"


def test_preprocess_channel_order_mean_std_and_zero_padding():
    rgb = np.zeros((40, 60, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 10  # flat colour: resizing keeps it exactly
    canvas, sizes = to_canvas([rgb])
    for fmt, order in (("BGR", [10, 100, 200]), ("RGB", [200, 100, 10])):
        model = preprocess_model("INPUT.FORMAT", fmt)
        net = model.network_size(40, 60)
        with torch.no_grad():
            x, resized = model.preprocess(canvas, sizes, net)
        newh, neww = resized[0].tolist()
        assert (newh, neww) == (800, 1200) and net == (800, 1216) and x.shape == (1, 3, 800, 1216)
        expected = (torch.tensor(order, dtype=torch.float32) - torch.tensor([103.5, 116.25, 123.75])) / \
            torch.tensor([57.5, 57.0, 58.5])
        inside = x[0, :, :newh, :neww]
        torch.testing.assert_close(inside, expected.reshape(3, 1, 1).expand_as(inside), rtol=0, atol=1e-6)
        assert torch.count_nonzero(x[0, :, :, neww:]) == 0  # padding is exactly zero, after normalisation
        assert torch.count_nonzero(x[0, :, newh:, :]) == 0


def test_preprocess_pads_each_image_of_a_batch_separately():
    model = preprocess_model()
    a = np.full((30, 70, 3), 255, np.uint8)
    b = np.full((40, 50, 3), 255, np.uint8)
    canvas, sizes = to_canvas([a, b])
    with torch.no_grad():
        x, resized = model.preprocess(canvas, sizes, (960, 1344))
    assert resized.tolist() == [list(detectron2_size(30, 70, 800, 1333)), list(detectron2_size(40, 50, 800, 1333))]
    for i, (rh, rw) in enumerate(resized.tolist()):
        assert (x[i, :, :rh, :rw] > 0).all()  # white stays white over the whole resized image
        assert torch.count_nonzero(x[i, :, rh:]) == 0 and torch.count_nonzero(x[i, :, :, rw:]) == 0


# ----------------------------------------------------------------------------------------------- resize rule
def detectron2_size(h: int, w: int, short: int, max_size: int) -> tuple[int, int]:
    """detectron2 ResizeShortestEdge.get_output_shape, in Python floats (float64)."""
    size = float(short)
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = max_size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


def is_exact_tie(h: int, w: int, short: int, max_size: int) -> bool:
    """Whether a resized side is exactly k + 0.5 in exact arithmetic: there the float64 rounding of detectron2
    decides, which no float32 formulation reproduces."""
    size = Fraction(short)
    scale = size / min(h, w)
    newh, neww = (size, scale * w) if h < w else (scale * h, size)
    if max(newh, neww) > max_size:
        scale = Fraction(max_size) / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return any((2 * v).denominator == 1 and (2 * v).numerator % 2 == 1 for v in (newh, neww))


SIZE_RULES = [(800, 1333), (400, 667), (512, 853), (600, 1000), (256, 384)]


@pytest.mark.parametrize("short,max_size", SIZE_RULES)
def test_shortest_edge_size_equals_detectron2(short, max_size):
    rng = np.random.default_rng(short)
    hw = np.concatenate([rng.integers(1, 4097, (3000, 2)), rng.integers(200, 1500, (3000, 2))])
    hw = np.array([s for s in hw.tolist() if not is_exact_tie(s[0], s[1], short, max_size)])
    got = shortest_edge_size(torch.from_numpy(hw), short, max_size).tolist()
    # detectron2 gives a 0-pixel side for extreme aspect ratios (and then fails); pfcn keeps at least one pixel
    want = [[max(1, v) for v in detectron2_size(h, w, short, max_size)] for h, w in hw.tolist()]
    bad = [(tuple(s), g, e) for s, g, e in zip(hw.tolist(), got, want) if g != e]
    assert not bad, f"{len(bad)} sizes differ from detectron2, e.g. {bad[:5]}"
    model_cfg = load_config(SMALL_CONFIG, ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", str(short),
                                           "INPUT.MAX_SIZE_TEST", str(max_size)])
    model = build_model(model_cfg)
    for (h, w), (eh, ew) in list(zip(hw.tolist(), want))[:200]:
        assert model.network_size(h, w) == (-(-eh // 32) * 32, -(-ew // 32) * 32)


@pytest.mark.xfail(strict=True, reason=(
    "known difference, reported to the lead: at exact .5 ties detectron2's float64 arithmetic decides the rounding "
    "(302x604 -> 666 rows in detectron2, 667 with exact round-half-up, and float32 differs elsewhere)"))
def test_shortest_edge_size_ties_equal_detectron2():
    sizes = [(302, 604), (309, 618), (312, 688), (315, 558), (3, 6)]
    assert all(is_exact_tie(h, w, 800, 1333) for h, w in sizes)
    got = shortest_edge_size(torch.tensor(sizes), 800, 1333).tolist()
    assert got == [list(detectron2_size(h, w, 800, 1333)) for h, w in sizes]
