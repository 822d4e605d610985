"""The artifact contract: what every exported pfcn artifact takes, gives and carries, in numpy terms only.

An application that runs an exported graph (ONNX Runtime, TensorRT, C++) needs exactly this module: the tensor names
and dtypes, the metadata keys and how they are decoded, where an engine's metadata lives, and how images are placed
on the uint8 input canvas. It imports numpy and ``pfcn.metadata`` only, so the deployment path runs without torch.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .metadata import CategoryMeta

# ------------------------------------------------------------------------------------------------ tensor names
# The end-to-end graph: uint8 RGB images placed top-left on a canvas + their original sizes -> the panoptic result.
E2E_INPUTS = ("images", "sizes")
# The outputs of ``pfcn.inference.postprocess`` (also what the eager PyTorch forward returns), in graph order.
POSTPROCESS_OUTPUTS = ("panoptic", "semantic", "instance_masks", "instance_scores", "instance_classes",
                       "instance_valid", "segment_ids", "segment_classes", "segment_isthing", "segment_scores",
                       "segment_areas", "segment_valid")
# The exported graph adds the dataset category ids so that an application needs no class table.
E2E_OUTPUTS = POSTPROCESS_OUTPUTS + ("instance_category_ids", "segment_category_ids")
# What an end-to-end artifact returns: "panoptic" leaves out the [B, K, H, W] instance masks (the panoptic map and
# the segment and instance tables stay) for applications that do not read per-instance masks; they are the largest
# output by far (K = 100 full-size masks). Results then carry empty [N, 0, 0] instance masks.
OUTPUT_SETS = {"all": E2E_OUTPUTS, "panoptic": tuple(n for n in E2E_OUTPUTS if n != "instance_masks")}
# The network-only graph: resized images -> fused kernels + the encoded feature (masks = sigmoid(kernels @ encoded)).
NETWORK_INPUTS = ("images", "resized_sizes")
NETWORK_OUTPUTS = ("thing_scores", "thing_classes", "thing_kernels", "thing_valid", "stuff_scores", "stuff_kernels",
                   "stuff_valid", "encoded")

INPUT_DTYPES = {"images": np.uint8, "sizes": np.int64, "resized_sizes": np.int64}

# Outputs of fixed-slot tables and the validity flag that says which slots are real.
VALID_FLAG = {
    "instance_masks": "instance_valid", "instance_scores": "instance_valid", "instance_classes": "instance_valid",
    "instance_category_ids": "instance_valid",
    "segment_ids": "segment_valid", "segment_classes": "segment_valid", "segment_isthing": "segment_valid",
    "segment_scores": "segment_valid", "segment_areas": "segment_valid", "segment_category_ids": "segment_valid",
}

# ------------------------------------------------------------------------------------------------ metadata
# Keys every pfcn artifact carries (ONNX metadata_props; an engine's JSON sidecar; a .pt2's extra files).
METADATA_KEYS = ("pfcn_version", "graph", "config", "config_hash", "categories", "thresholds", "input_spec",
                 "output_names", "opset", "exported_with")
JSON_KEYS = ("categories", "thresholds", "input_spec", "output_names")
# Added by pfcn when it builds a TensorRT engine or a precision variant.
ENGINE_KEYS = ("precision", "tensorrt_version", "compute_capability", "device_name", "profiles", "onnx_sha256")


class ArtifactError(ValueError):
    """An artifact that pfcn cannot use; the message names the file and what to do."""


def decode_metadata(props: Mapping[str, str], source: str) -> dict[str, Any]:
    """pfcn's metadata from raw string properties, JSON fields decoded; ArtifactError if it is not pfcn's."""
    if "pfcn_version" not in props:
        raise ArtifactError(f"{source}: no pfcn metadata (key 'pfcn_version' missing); this artifact was not written "
                            "by pfcn-export — export it with pfcn-export, or use the PyTorch checkpoint")
    out: dict[str, Any] = dict(props)
    for key in JSON_KEYS:
        if key not in out:
            raise ArtifactError(f"{source}: pfcn metadata lacks {key!r}; re-export it with this pfcn version")
        if isinstance(out[key], str):
            try:
                out[key] = json.loads(out[key])
            except json.JSONDecodeError as e:
                raise ArtifactError(f"{source}: metadata {key!r} is not valid JSON ({e}); re-export it") from None
    return out


def encode_metadata(props: Mapping[str, Any]) -> dict[str, str]:
    """The inverse of ``decode_metadata``: every value as a string (JSON for structured values)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}


def engine_sidecar(engine: str | Path) -> Path:
    """Where an engine's metadata lives: ``model.engine`` -> ``model.engine.json``.

    The plan bytes stay exactly as TensorRT wrote them, so trtexec and Triton Inference Server load the file as is.
    """
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


@dataclass(frozen=True)
class ArtifactInfo:
    """What a backend knows about its artifact, read from the artifact's own metadata."""

    source: str  # the file (for messages)
    props: dict[str, Any]  # decoded metadata
    meta: CategoryMeta
    graph: str  # "e2e" or "network"
    batch: int | None  # fixed batch, None when dynamic
    fixed_hw: tuple[int, int] | None  # fixed input canvas, None when dynamic
    net_size: tuple[int, int] | None  # fixed network canvas, None when it follows the input
    dynamic_range: tuple[int, int, int, int] | None  # (min_h, min_w, max_h, max_w) of a dynamic graph
    precision: str  # "fp32", "fp16", "int8", ...

    @classmethod
    def from_metadata(cls, props: Mapping[str, Any], source: str) -> "ArtifactInfo":
        props = decode_metadata(props, source)
        spec = props["input_spec"]
        shape = spec["inputs"]["images"]["shape"]
        rng = spec.get("dynamic_range")
        return cls(
            source=source,
            props=props,
            meta=CategoryMeta.from_categories(props["categories"], source=source),
            graph=spec["graph"],
            batch=shape[0] if isinstance(shape[0], int) else None,
            fixed_hw=(shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None,
            net_size=tuple(spec["net_size"]) if spec.get("net_size") else None,
            dynamic_range=tuple(rng) if rng else None,
            precision=str(props.get("precision", "fp32")),
        )

    @property
    def config_hash(self) -> str | None:
        return self.props.get("config_hash")

    def require_e2e(self) -> None:
        if self.graph != "e2e":
            raise ArtifactError(f"{self.source}: a {self.graph!r} graph has no panoptic outputs; "
                                "export it with --graph e2e to run it as a model")


# ------------------------------------------------------------------------------------------------ the canvas
def make_canvas(images: Sequence[np.ndarray], fixed_hw: tuple[int, int] | None = None, batch: int | None = None,
                names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Place HxWx3 uint8 RGB images top-left on one zero canvas: ``[B, 3, H, W]`` uint8 and sizes ``[B, 2]`` int64.

    Args:
        fixed_hw: the graph's fixed canvas (None: the largest image decides). An image larger than it is an error.
        batch: the graph's fixed batch; a shorter batch is filled by repeating the first image (its results are
            dropped by the caller), a longer one is an error.
        names: per image, for error messages.
    """
    names = list(names) if names is not None else [f"image #{i}" for i in range(len(images))]
    if not images:
        raise ValueError("no images to place on a canvas")
    for im, name in zip(images, names):
        if not isinstance(im, np.ndarray) or im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
            got = f"{im.dtype} {im.shape}" if isinstance(im, np.ndarray) else type(im).__name__
            raise ValueError(f"{name}: expected an HxWx3 uint8 RGB array, got {got}")
    sizes = np.array([im.shape[:2] for im in images], dtype=np.int64)
    if fixed_hw is not None:
        hc, wc = fixed_hw
        for (h, w), name in zip(sizes.tolist(), names):
            if h > hc or w > wc:
                raise ValueError(f"{name}: image {h}x{w} does not fit the graph's fixed input {hc}x{wc}; "
                                 "export a graph with --dynamic (or a larger --input-size)")
    else:
        hc, wc = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    n = len(images)
    if batch is not None and n > batch:
        raise ValueError(f"{n} images given to a graph with a fixed batch of {batch}")
    total = batch or n
    canvas = np.zeros((total, 3, hc, wc), dtype=np.uint8)
    for i, im in enumerate(images):
        canvas[i, :, : im.shape[0], : im.shape[1]] = im.transpose(2, 0, 1)
    if total > n:  # fill a fixed batch with copies of the first image
        canvas[n:] = canvas[0]
        sizes = np.concatenate([sizes, np.repeat(sizes[:1], total - n, 0)])
    return canvas, sizes


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder; nothing half-written remains."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
