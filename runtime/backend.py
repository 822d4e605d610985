"""The one backend interface, and the one batching loop that every backend runs through.

A backend holds one artifact (a PyTorch model, an ONNX graph, a TensorRT engine, ...) and does a single thing: run a
uint8 RGB canvas ``[B, 3, H, W]`` with the images' sizes ``[B, 2]`` and return the fixed-size outputs by name
(``pfcn.contract.E2E_OUTPUTS``). Everything else — grouping images into batches, placing them on a canvas, unpacking
outputs into ``PanopticResult``s — is written once here and in ``pfcn.result``, so all backends are judged alike.
This module imports numpy only (no torch).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Hashable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from pfcn.contract import ArtifactInfo, make_canvas
from pfcn.result import PanopticResult, results_from_outputs


@runtime_checkable
class Backend(Protocol):
    """What ``predict`` needs from a backend."""

    name: str  # "pytorch", "onnxruntime", "tensorrt", "aoti"
    info: ArtifactInfo  # metadata of the artifact (categories, input spec, precision, ...)

    def group_key(self, h: int, w: int) -> Hashable:
        """Images with equal keys may share one batch and get what each would get alone."""

    def max_batch(self) -> int:
        """Most images per ``run`` (a fixed-batch graph: exactly its batch; others: the caller's batch size)."""

    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> Mapping[str, Any]:
        """Run a uint8 canvas ``[B, 3, H, W]`` and int64 sizes ``[B, 2]``; outputs by name (numpy or torch)."""

    def close(self) -> None:
        """Release sessions, engines and device memory."""


def batches(backend: Backend, images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices of ``images`` grouped by the backend's key, each group cut into runs of at most ``max_batch``."""
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for i, im in enumerate(images):
        if not isinstance(im, np.ndarray) or im.ndim != 3:
            raise ValueError(f"image #{i}: expected an HxWx3 uint8 RGB array")
        groups[backend.group_key(int(im.shape[0]), int(im.shape[1]))].append(i)
    step = max(1, backend.max_batch())
    return [members[s: s + step] for members in groups.values() for s in range(0, len(members), step)]


def canvas_for(backend: Backend, images: Sequence[np.ndarray],
               names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The input canvas and sizes for one batch, shaped as the backend's artifact requires."""
    return make_canvas(images, backend.info.fixed_hw, backend.info.batch, names)


def predict(backend: Backend, images: Sequence[np.ndarray], file_names: Sequence[str | None] | None = None,
            image_ids: Sequence[Any] | None = None) -> list[PanopticResult]:
    """Predict HxWx3 uint8 RGB images with any backend; results come back in input order."""
    names = [str(f) if f else f"image #{i}" for i, f in enumerate(file_names or [None] * len(images))]
    results: list[PanopticResult | None] = [None] * len(images)
    for idx in batches(backend, images):
        canvas, sizes = canvas_for(backend, [images[i] for i in idx], [names[i] for i in idx])
        outputs = backend.run(canvas, sizes)
        batch = results_from_outputs(
            outputs, [tuple(s) for s in sizes[: len(idx)].tolist()], backend.info.meta,
            None if file_names is None else [file_names[i] for i in idx],
            None if image_ids is None else [image_ids[i] for i in idx])
        for i, r in zip(idx, batch):
            results[i] = r
    return results  # type: ignore[return-value]
