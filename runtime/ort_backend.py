"""Run an exported pfcn graph with ONNX Runtime and read its outputs as PanopticResults.

The graph carries its own metadata (categories, input spec), so a ``.onnx`` file is all this needs. Outputs are
unpacked by ``pfcn.result.results_from_outputs``, the same code that unpacks eager PyTorch outputs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from pfcn.export.onnx_export import read_metadata
from pfcn.metadata import CategoryMeta
from pfcn.predictor import to_canvas
from pfcn.result import PanopticResult, results_from_outputs


def default_providers() -> list[str]:
    """CUDA first where this onnxruntime build has it, then CPU."""
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxRuntimeBackend:
    """An end-to-end pfcn graph in an ONNX Runtime session.

    Args:
        path: a ``.onnx`` file written by pfcn-export (graph "e2e").
        providers: ONNX Runtime execution providers (default: CUDA if available, else CPU).
        threads: intra-op threads (default: ONNX Runtime's choice).
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        self.props = read_metadata(self.path)
        spec = self.props["input_spec"]
        if spec["graph"] != "e2e":
            raise ValueError(f"{self.path}: a {spec['graph']!r} graph has no panoptic outputs; export --graph e2e")
        self.meta = CategoryMeta.from_categories(self.props["categories"], source=str(self.path))
        shape = spec["inputs"]["images"]["shape"]
        self.batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_hw = (shape[2], shape[3]) if isinstance(shape[2], int) else None
        self.net_size = tuple(spec["net_size"]) if spec["net_size"] else None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(self.path), options, providers=providers or default_providers())
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> dict[str, np.ndarray]:
        """Run the graph on a uint8 RGB canvas [B, 3, H, W] and sizes [B, 2]; returns outputs by name."""
        outputs = self.session.run(None, {"images": canvas, "sizes": sizes.astype(np.int64)})
        return dict(zip(self.output_names, outputs))

    def _canvas_for(self, images: list[np.ndarray], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        canvas, sizes = to_canvas(images)
        canvas, sizes = canvas.numpy(), sizes.numpy()
        if self.fixed_hw is not None:
            hc, wc = self.fixed_hw
            for im, name in zip(images, names):
                if im.shape[0] > hc or im.shape[1] > wc:
                    raise ValueError(f"{name}: image {im.shape[0]}x{im.shape[1]} does not fit the graph's fixed input "
                                     f"{hc}x{wc}; resize it or export with --dynamic")
            full = np.zeros((canvas.shape[0], 3, hc, wc), dtype=np.uint8)
            full[:, :, : canvas.shape[2], : canvas.shape[3]] = canvas
            canvas = full
        if self.batch is not None and canvas.shape[0] < self.batch:  # fill a fixed batch, results dropped
            pad = self.batch - canvas.shape[0]
            canvas = np.concatenate([canvas, np.repeat(canvas[:1], pad, 0)])
            sizes = np.concatenate([sizes, np.repeat(sizes[:1], pad, 0)])
        return canvas, sizes

    def predict(self, images: list[np.ndarray], file_names: list[str | None] | None = None,
                image_ids: list[Any] | None = None) -> list[PanopticResult]:
        """Predict HxWx3 uint8 RGB images; batches group images of equal size (dynamic graphs) or fill the
        fixed canvas (fixed graphs)."""
        names = [str(f) if f else f"image #{i}" for i, f in enumerate(file_names or [None] * len(images))]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, im in enumerate(images):
            groups[(0, 0) if self.fixed_hw else im.shape[:2]].append(i)
        step = self.batch or max(len(v) for v in groups.values())
        results: list[PanopticResult | None] = [None] * len(images)
        for members in groups.values():
            for start in range(0, len(members), step):
                idx = members[start: start + step]
                canvas, sizes = self._canvas_for([images[i] for i in idx], [names[i] for i in idx])
                outputs = self.run(canvas, sizes)
                batch = results_from_outputs(
                    outputs, [tuple(s) for s in sizes[: len(idx)].tolist()], self.meta,
                    None if file_names is None else [file_names[i] for i in idx],
                    None if image_ids is None else [image_ids[i] for i in idx])
                for i, r in zip(idx, batch):
                    results[i] = r
        return results  # type: ignore[return-value]
