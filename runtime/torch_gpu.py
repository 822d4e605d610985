"""The PyTorch fast path: FP16 network body, channels_last, CUDA-graph replay per input shape, optional
torch.compile, pinned host buffers with asynchronous copies, and outputs sized for the use.

It runs the model's own code (``PanopticFCN.preprocess``, ``forward_features``, ``pfcn.inference.postprocess``):

* FP16: the network body (backbone, FPN, heads) runs under autocast, which keeps GroupNorm and torchvision's
  deformable conv in FP32; the heads' outputs are cast back to FP32 and everything after them (candidate
  thresholds, kernel fusion and cosine similarity, mask products, rescoring, resize matrices, merge) runs in FP32 —
  the same FP32 islands as the FP16 ONNX graph, and more.
* CUDA graphs: inference has no host synchronisation, so the whole forward of one input signature (canvas shape,
  network canvas) is captured once and replayed; inputs and outputs live in static device buffers, fed and read
  through pinned host buffers with non-blocking copies.
* Outputs: ``outputs="panoptic"`` leaves the ``[B, 100, H, W]`` instance masks on the device (about 100 MB per
  800x1333 image) and returns an empty ``[B, K, 0, 0]`` array in their place.

On the CPU the same static-buffer path runs eagerly (no graphs, no pinned memory), which is what the CPU tests
exercise.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from pfcn.contract import E2E_OUTPUTS, OUTPUT_SETS, ArtifactInfo
from pfcn.inference import HeadOutputs, dataset_category_ids, postprocess
from pfcn.layers import Conv2d, FrozenBatchNorm2d, ModulatedDeformConv
from pfcn.metadata import CategoryMeta
from pfcn.model import PanopticFCN
from pfcn.predictor import Predictor, category_tables, check_device

HALF_DTYPES = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
RESIZE_MODES = ("static", "interpolate")


def heads_to_fp32(heads: HeadOutputs) -> HeadOutputs:
    """The network outputs in FP32: where the FP16 body ends and the FP32 post-processing begins."""
    return HeadOutputs([c.float() for c in heads.centers], [r.float() for r in heads.regions],
                       [w.float() for w in heads.weights], heads.encoded.float())


class MixedPrecisionGraph(nn.Module):
    """uint8 canvas + sizes -> the end-to-end outputs (``outputs`` order), the network body under autocast.

    The same inputs and outputs as ``export.graphs.EndToEndGraph`` (with ``outputs=E2E_OUTPUTS``), so an FP16
    AOTInductor package traced from it has the ONNX graph's contract.

    Args:
        net_size: the padded network canvas of this graph's input signature.
        half: None (FP32), torch.float16 or torch.bfloat16 for the network body.
        outputs: output names, a subset of ``E2E_OUTPUTS``.
        channels_last: feed the network NHWC-strided activations (tensor cores prefer them).
        shapes: None (the static gather passes, for any sizes), or each image's resized and original (h, w) as ints:
            the maps are then resized to the original size by the official ``F.interpolate`` calls, and the module
            serves those sizes only.
    """

    def __init__(self, model: PanopticFCN, meta: CategoryMeta, net_size: tuple[int, int],
                 half: torch.dtype | None = None, outputs: Sequence[str] = E2E_OUTPUTS, channels_last: bool = False,
                 shapes: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None):
        super().__init__()
        unknown = [n for n in outputs if n not in E2E_OUTPUTS]
        if unknown:
            raise ValueError(f"outputs {unknown}: not pfcn outputs (choose from {', '.join(E2E_OUTPUTS)})")
        self.model, self.net_size, self.half = model, tuple(net_size), half
        self.outputs, self.channels_last = tuple(outputs), channels_last
        self.shapes = None if shapes is None else [([int(v) for v in r], [int(v) for v in o]) for r, o in shapes]
        things, stuff = category_tables(meta)
        device = model.pixel_mean.device
        self.register_buffer("thing_ids", things.to(device), persistent=False)
        self.register_buffer("stuff_ids", stuff.to(device), persistent=False)

    def forward(self, images: torch.Tensor, sizes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        m = self.model
        h, w = images.shape[2], images.shape[3]
        x, resized = m.preprocess(images, sizes, self.net_size)  # FP32: PIL-exact resize and normalisation
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        # no cast cache: a CUDA graph must recompute the weight casts on every replay (autocast's cache would hand
        # it tensors freed after capture)
        with torch.autocast(x.device.type, dtype=self.half or torch.float32, enabled=self.half is not None,
                            cache_enabled=False):
            heads = m.forward_features(x)
        heads = heads_to_fp32(heads)
        out = postprocess(heads, m.thing_generator, m.stuff_generator, resized, sizes, (h, w), m.params, m.merge,
                          shapes=self.shapes)
        out["instance_category_ids"], out["segment_category_ids"] = dataset_category_ids(out, self.thing_ids,
                                                                                         self.stuff_ids)
        return tuple(out[name] for name in self.outputs)


@torch.no_grad()
def fold_frozen_bn(model: nn.Module) -> int:
    """Fold every frozen BN that follows a convolution into the convolution's weight and bias, in place; returns how
    many were folded.

    The network then runs one kernel per convolution instead of two. On an H200 (FP16, R50 at 800x1333) the 53 BN
    kernels took 3.9 ms of the image's 42 ms of GPU time. The map is the same up to rounding, as in every ONNX export
    (the fold is computed in float64 and rounded once).
    """
    folded = 0
    for module in model.modules():
        norm = getattr(module, "norm", None)
        if not isinstance(norm, FrozenBatchNorm2d) or not isinstance(module, (Conv2d, ModulatedDeformConv)):
            continue
        scale = norm.weight.double() * (norm.running_var.double() + norm.eps).rsqrt()
        shift = norm.bias.double() - norm.running_mean.double() * scale
        bias = module.bias.double() if module.bias is not None else torch.zeros_like(shift)
        dtype = module.weight.dtype
        module.weight.copy_((module.weight.double() * scale.reshape(-1, 1, 1, 1)).to(dtype))
        module.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)
        module.norm = None
        folded += 1
    return folded


class StrictFp32:
    """Calls a module with TF32 off: FP32 means FP32 on CUDA. PyTorch's default lets cuDNN run FP32 convolutions on
    TF32 tensor cores (10-bit mantissa, FP16's precision), which moves mask thresholds and pixels against FP32 on the
    CPU. The flags are global, so they are set around each call (capture included) and restored after it."""

    def __init__(self, module: Callable):
        self.module = module

    def __call__(self, *args: Any) -> Any:
        cudnn, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return self.module(*args)
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = cudnn, matmul


def host_shapes(model: PanopticFCN, sizes: np.ndarray, net_size: tuple[int, int]
                ) -> list[tuple[list[int], list[int]]]:
    """Each image's resized and original (h, w) as ints, computed on the host from the host-side sizes with the
    model's own rule (``PanopticFCN.resized_sizes``, which ``preprocess`` applies on the device)."""
    original = torch.as_tensor(np.asarray(sizes, dtype=np.int64))
    resized = model.resized_sizes(original, (int(net_size[0]), int(net_size[1])))
    return list(zip(resized.tolist(), original.tolist()))


def signature(canvas_shape: Sequence[int], net_size: Sequence[int], sizes: np.ndarray | None = None
              ) -> tuple[int, ...]:
    """What one captured graph serves: the canvas [B, 3, H, W] and the network canvas (Hn, Wn), and the images'
    sizes [B, 2] when the module is built for them."""
    key = tuple(int(d) for d in canvas_shape) + tuple(int(d) for d in net_size)
    return key if sizes is None else key + tuple(int(v) for v in np.asarray(sizes).reshape(-1))


@dataclass
class StaticEntry:
    """The static buffers (and CUDA graph) of one input signature."""

    images: torch.Tensor  # device input buffers
    sizes: torch.Tensor
    outputs: tuple[torch.Tensor, ...]  # device output buffers (written by each replay)
    run: Callable[[], tuple[torch.Tensor, ...]]  # replay (CUDA graph) or eager call on the static inputs
    host_in: tuple[torch.Tensor, torch.Tensor] | None = None  # pinned host staging buffers (CUDA only)
    host_out: tuple[torch.Tensor, ...] | None = None
    graph: Any = None


class StaticRunner:
    """Runs one module per input signature on static buffers; on CUDA, captures each signature in a CUDA graph.

    Args:
        make_module: builds the module of a signature from the network canvas and the sizes [B, 2] (one per
            signature; they share the model's weights).
        per_size: the modules are built for their images' sizes, which are then part of the signature.
        device: the device of the model.
        cuda_graphs: capture and replay (CUDA only).
        max_entries: signatures kept; the least recently used is dropped (with its graph and buffers) beyond it.
        warmup: eager runs before a capture (cuDNN / torch.compile choose their kernels there).
    """

    def __init__(self, make_module: Callable[[tuple[int, int], np.ndarray], Callable], device: torch.device,
                 cuda_graphs: bool = True, max_entries: int = 8, warmup: int = 2, per_size: bool = False):
        self.make_module, self.device, self.per_size = make_module, torch.device(device), per_size
        self.cuda = self.device.type == "cuda"
        self.cuda_graphs = bool(cuda_graphs) and self.cuda
        self.max_entries, self.warmup = max(1, int(max_entries)), max(1, int(warmup))
        self.entries: OrderedDict[tuple[int, ...], StaticEntry] = OrderedDict()
        self.builds = 0  # signatures built (captured) so far
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    def __call__(self, canvas: np.ndarray, sizes: np.ndarray, net_size: tuple[int, int]) -> tuple[np.ndarray, ...]:
        key = signature(canvas.shape, net_size, sizes if self.per_size else None)
        entry = self.entries.get(key)
        if entry is None:
            entry = self._build(key, canvas, sizes, net_size)
        else:
            self.entries.move_to_end(key)
            self._upload(entry, canvas, sizes)
        outputs = entry.run()
        return self._download(entry, outputs)

    # ---------------------------------------------------------------------------------------------------------
    def _build(self, key, canvas: np.ndarray, sizes: np.ndarray, net_size) -> StaticEntry:
        while len(self.entries) >= self.max_entries:
            self.entries.popitem(last=False)
        module = self.make_module(tuple(net_size), np.asarray(sizes))
        images = torch.empty(canvas.shape, dtype=torch.uint8, device=self.device)
        sizes_t = torch.empty(sizes.shape, dtype=torch.int64, device=self.device)
        entry = StaticEntry(images, sizes_t, (), lambda: module(images, sizes_t))
        if self.cuda:
            entry.host_in = (torch.empty(canvas.shape, dtype=torch.uint8, pin_memory=True),
                             torch.empty(sizes.shape, dtype=torch.int64, pin_memory=True))
        self._upload(entry, canvas, sizes)
        if self.cuda_graphs:
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream), torch.no_grad():
                for _ in range(self.warmup):
                    module(images, sizes_t)
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph, stream=self.stream):
                static_out = module(images, sizes_t)
            entry.graph, entry.outputs = graph, static_out

            def replay() -> tuple[torch.Tensor, ...]:
                graph.replay()
                return static_out

            entry.run = replay
        else:
            eager = entry.run

            def run_eager() -> tuple[torch.Tensor, ...]:
                with torch.no_grad():
                    return eager()

            entry.run = run_eager
        self.entries[key] = entry
        self.builds += 1
        return entry

    def _upload(self, entry: StaticEntry, canvas: np.ndarray, sizes: np.ndarray) -> None:
        if entry.host_in is None:
            entry.images.copy_(torch.from_numpy(np.ascontiguousarray(canvas, dtype=np.uint8)))
            entry.sizes.copy_(torch.from_numpy(np.ascontiguousarray(sizes, dtype=np.int64)))
            return
        host_images, host_sizes = entry.host_in
        np.copyto(host_images.numpy(), np.asarray(canvas, dtype=np.uint8))
        np.copyto(host_sizes.numpy(), sizes.astype(np.int64, copy=False))
        entry.images.copy_(host_images, non_blocking=True)
        entry.sizes.copy_(host_sizes, non_blocking=True)

    def _download(self, entry: StaticEntry, outputs: tuple[torch.Tensor, ...]) -> tuple[np.ndarray, ...]:
        if not self.cuda:
            return tuple(o.numpy().copy() for o in outputs)
        if entry.host_out is None:
            entry.host_out = tuple(torch.empty(o.shape, dtype=o.dtype, pin_memory=True) for o in outputs)
        for host, dev in zip(entry.host_out, outputs):
            host.copy_(dev, non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        return tuple(h.numpy().copy() for h in entry.host_out)


class TorchGpuBackend:
    """PanopticFCN behind the backend interface, tuned for a GPU: the fast PyTorch path.

    Args:
        model, meta: a built, loaded PanopticFCN and its categories.
        device: "cuda[:i]" (or "cpu": eager static path, for tests and FP32 checks).
        batch_size: images per run within a network-canvas group.
        precision: "fp32" (no TF32 on CUDA: ``StrictFp32``), "fp16" (CUDA autocast) or "bf16" (the same islands;
            runs on the CPU too).
        cuda_graphs: capture and replay per input signature (default: on CUDA).
        compile: wrap the graph module in ``torch.compile`` (``mode``: its mode; CUDA graphs stay ours).
        outputs: "all" or "panoptic" (instance masks not copied to the host).
        channels_last: NHWC activations and weights (default: on CUDA).
        fold_bn: fold frozen BNs into their convolutions (``fold_frozen_bn``; default: on CUDA). Off, the CPU
            static path gives exactly the eager results.
        resize: how the stride-4 maps reach the original size. "static": the gather passes of the static graph,
            one captured graph per canvas for any image sizes. "interpolate": the official two ``F.interpolate``
            calls (PyTorch's own kernel on the device, as the official code runs it), one captured graph per
            canvas *and* image sizes; the sizes are read from the host-side input, so nothing syncs. It suits
            streams of one image size; on the H200 profile the gather passes were a quarter of the GPU time.
    The backend works on its own copy of ``model``.
    """

    name = "pytorch-fast"

    def __init__(self, model: PanopticFCN, meta: CategoryMeta, device: str = "cuda", batch_size: int = 1,
                 precision: str = "fp16", cuda_graphs: bool | None = None, compile: bool = False,
                 compile_mode: str = "default", outputs: str = "all",
                 channels_last: bool | None = None, fold_bn: bool | None = None, cfg=None,
                 source: str = "PyTorch model", max_graphs: int = 8, resize: str = "static"):
        if precision not in HALF_DTYPES:
            raise ValueError(f"precision {precision!r}: choose {', '.join(HALF_DTYPES)}")
        if outputs not in OUTPUT_SETS:
            raise ValueError(f"outputs {outputs!r}: choose {' or '.join(OUTPUT_SETS)}")
        if resize not in RESIZE_MODES:
            raise ValueError(f"resize {resize!r}: choose {' or '.join(RESIZE_MODES)}")
        self.device = torch.device(check_device(str(device)))
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 runs on CUDA (autocast); on the CPU use fp32 or bf16")
        cuda = self.device.type == "cuda"
        self.channels_last = cuda if channels_last is None else bool(channels_last)
        model = copy.deepcopy(model).to(self.device).eval()  # its own copy: folding and layouts change it
        self.folded_bn = fold_frozen_bn(model) if (cuda if fold_bn is None else fold_bn) else 0
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.precision, self.output_set = model, precision, outputs
        self.output_names = OUTPUT_SETS[outputs]
        self.batch_size = max(1, int(batch_size))
        half = HALF_DTYPES[precision]
        base = Predictor(model, meta, str(self.device), batch_size, cfg=cfg, source=source)  # info + grouping
        props = dict(base.info.props, precision=precision)
        self.info = ArtifactInfo(source=source, props=props, meta=meta, graph="e2e", batch=None, fixed_hw=None,
                                 net_size=None, dynamic_range=None, precision=precision)
        self.compiled, self.resize = bool(compile), resize
        per_size = resize == "interpolate"

        def make_module(net_size: tuple[int, int], sizes: np.ndarray):
            shapes = host_shapes(model, sizes, net_size) if per_size else None
            module = MixedPrecisionGraph(model, meta, net_size, half, self.output_names, self.channels_last, shapes)
            module = torch.compile(module, mode=compile_mode, dynamic=False) if compile else module
            return StrictFp32(module) if cuda and precision == "fp32" else module

        self.runner = StaticRunner(make_module, self.device, cuda if cuda_graphs is None else cuda_graphs,
                                   max_entries=max_graphs, per_size=per_size)

    @classmethod
    def from_predictor(cls, predictor: Predictor, **options) -> "TorchGpuBackend":
        """The fast path of an opened PyTorch model (``open_model("model.pth")``): same weights and categories, on
        its own copy of the model."""
        info = predictor.info
        backend = cls(predictor.model, info.meta, device=options.pop("device", str(predictor.device)),
                      batch_size=options.pop("batch_size", predictor.batch_size), source=info.source, **options)
        props = dict(info.props, precision=backend.precision)  # the checkpoint's config and its hash
        backend.info = dataclasses.replace(backend.info, props=props)
        return backend

    # The protocol ------------------------------------------------------------------------------------------------
    def group_key(self, h: int, w: int) -> Hashable:
        return self.model.network_size(h, w)

    def max_batch(self) -> int:
        return self.batch_size

    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> Mapping[str, Any]:
        nets = [self.model.network_size(int(h), int(w)) for h, w in np.asarray(sizes).tolist()]
        net = (max(n[0] for n in nets), max(n[1] for n in nets))
        values = self.runner(np.asarray(canvas), np.asarray(sizes), net)
        return dict(zip(self.output_names, values))

    def close(self) -> None:
        self.runner.entries.clear()
        self.model = None  # type: ignore[assignment]
