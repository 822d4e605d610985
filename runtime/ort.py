"""ONNX Runtime backend: a pfcn ``.onnx`` in an InferenceSession, with nothing but numpy and onnxruntime.

The graph carries its own metadata (``metadata_props``, read through ONNX Runtime's model metadata), so the file is
all it needs. On a GPU provider, inputs and outputs go through IO binding so that ONNX Runtime copies each tensor
once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Mapping

import numpy as np

from pfcn.contract import E2E_INPUTS, NETWORK_INPUTS, ArtifactError, ArtifactInfo

# --providers values and the ONNX Runtime execution providers they stand for (in preference order).
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


def _ort():
    try:
        import onnxruntime
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ArtifactError("running .onnx files needs onnxruntime: pip install 'pfcn[runtime]' "
                            "(or onnxruntime-gpu)") from e
    return onnxruntime


def choose_providers(providers: str | list[str] | None, device: str = "cpu") -> list[str]:
    """Execution providers for ``--providers`` (cpu, cuda, tensorrt, auto or explicit names) and ``--device``.

    ``auto`` (the default) takes CUDA when the device is a GPU and this onnxruntime build has it, else the CPU.
    A provider that this build lacks is an error that says which build has it.
    """
    available = _ort().get_available_providers()
    if providers is None or providers == "auto":
        wanted = PROVIDERS["cuda"] if device.startswith("cuda") else PROVIDERS["cpu"]
        chosen = [p for p in wanted if p in available]
        if device.startswith("cuda") and "CUDAExecutionProvider" not in chosen:
            raise ArtifactError(f"--device {device}: this onnxruntime build has no CUDA provider "
                                f"(available: {', '.join(available)}); install onnxruntime-gpu or use --device cpu")
        return chosen
    names = PROVIDERS.get(providers, None) if isinstance(providers, str) else list(providers)
    if names is None:
        names = [p.strip() for p in str(providers).split(",") if p.strip()]
    missing = [p for p in names[:1] if p not in available]
    if missing:
        raise ArtifactError(f"--providers {providers}: {missing[0]} is not in this onnxruntime build (available: "
                            f"{', '.join(available)}); the GPU providers come with onnxruntime-gpu")
    return [p for p in names if p in available]


class OrtBackend:
    """An end-to-end pfcn graph in an ONNX Runtime session.

    Args:
        path: a ``.onnx`` written by pfcn-export (graph "e2e"), any precision.
        providers: "auto", "cpu", "cuda", "tensorrt" or a list of ONNX Runtime provider names.
        device: "cpu" or "cuda[:i]" (picks the provider under "auto" and the IO-binding device).
        threads: intra-op threads (None: ONNX Runtime's choice).
        batch_size: images per run for a dynamic-batch graph.
        optimized_model: where to save the session's optimized graph (reloaded faster next time), or None.
        graph: "e2e" (the default: a model that gives panoptic results) or "network", which pfcn-bench times to
            split an end-to-end time into network and the rest; ``run`` then takes the resized network canvas and
            the resized sizes, and returns ``pfcn.contract.NETWORK_OUTPUTS``.
        profile: a file prefix to turn on ONNX Runtime's per-node profiling (``end_profiling`` writes the JSON).
    """

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: str | list[str] | None = "auto", device: str = "cpu",
                 threads: int | None = None, batch_size: int = 1, optimized_model: str | Path | None = None,
                 graph: str = "e2e", profile: str | Path | None = None):
        ort = _ort()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1  # one graph runs sequentially: a second pool only competes for cores
        if optimized_model:
            options.optimized_model_filepath = str(optimized_model)
        if profile:
            options.enable_profiling = True
            options.profile_file_prefix = str(profile)
        options.log_severity_level = 3  # errors only: ONNX Runtime's warnings about unused initializers are noise
        self.providers = choose_providers(providers, device)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=self.providers)
        except Exception as e:  # ORT raises its own exception types (Fail, InvalidProtobuf, ...)
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ArtifactError(f"{self.path}: ONNX Runtime cannot load it ({first}); is it a complete .onnx "
                                "written by pfcn-export?") from None
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        self.info = ArtifactInfo.from_metadata(props, str(self.path))
        if graph == "e2e":
            self.info.require_e2e()
        elif graph != "network" or self.info.graph != "network":
            raise ArtifactError(f"{self.path}: a {self.info.graph!r} graph opened as {graph!r}; open it as "
                                f"graph={self.info.graph!r}")
        expected = E2E_INPUTS if graph == "e2e" else NETWORK_INPUTS
        inputs = [i.name for i in self.session.get_inputs()]
        if tuple(inputs) != expected:
            raise ArtifactError(f"{self.path}: inputs {inputs} are not pfcn's {list(expected)}")
        self.input_names = expected
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.batch_size = max(1, int(batch_size))
        self.device = device
        self._binding = self.providers[0] in ("CUDAExecutionProvider", "TensorrtExecutionProvider")

    def group_key(self, h: int, w: int) -> Hashable:
        # A fixed graph places every image on its one canvas; a dynamic one batches only images of one size.
        return (0, 0) if self.info.fixed_hw else (h, w)

    def max_batch(self) -> int:
        return self.info.batch or self.batch_size

    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> Mapping[str, Any]:
        feed = {self.input_names[0]: np.ascontiguousarray(canvas, dtype=np.uint8),
                self.input_names[1]: np.ascontiguousarray(sizes, dtype=np.int64)}
        if not self._binding:
            return dict(zip(self.output_names, self.session.run(None, feed)))
        device_id = int(self.device.split(":")[1]) if ":" in self.device else 0
        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cuda", device_id)
        self.session.run_with_iobinding(binding)
        return dict(zip(self.output_names, binding.copy_outputs_to_cpu()))

    def end_profiling(self) -> Path:
        """Stop profiling (opened with ``profile``) and return the JSON file ONNX Runtime wrote."""
        return Path(self.session.end_profiling())

    def close(self) -> None:
        self.session = None  # type: ignore[assignment]
