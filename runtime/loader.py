"""``open_model``: one call that opens any pfcn artifact behind the backend interface.

    model = open_model("model.onnx")                 # ONNX Runtime (CPU, or CUDA with --device cuda)
    model = open_model("model_final.pth")            # PyTorch, config read from the checkpoint
    model = open_model("model.engine", device="cuda")  # TensorRT
    model = open_model("model.pt2")                  # AOTInductor package (on the device it was compiled for)
    results = predict(model, [image])                # pfcn.runtime.backend.predict

The backend is chosen by the file's suffix; its metadata (categories, input spec, precision) comes from the artifact.
Only the chosen backend's libraries are imported, so an ``.onnx`` opens without torch installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pfcn.contract import ArtifactError

from .backend import Backend

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".pkl")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
AOTI_SUFFIXES = (".pt2",)
SUFFIXES = CHECKPOINT_SUFFIXES + ONNX_SUFFIXES + ENGINE_SUFFIXES + AOTI_SUFFIXES


def artifact_kind(path: str | Path) -> str:
    """"checkpoint", "onnx", "engine" or "aoti" for a path, by suffix; ArtifactError naming the accepted suffixes."""
    suffix = Path(path).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    if suffix in AOTI_SUFFIXES:
        return "aoti"
    raise ArtifactError(f"{path}: unknown artifact type {suffix or '(no suffix)'!r}; pfcn runs "
                        f"{', '.join(SUFFIXES)} files")


def load_model_config(weights: str | Path | None, config: str | Path | None, overrides: Sequence[Any] = (),
                      fallback: tuple[str, str] | None = None):
    """The config for a PyTorch model: ``config`` (+ overrides) if given, else the one stored in the checkpoint,
    else ``fallback`` = (YAML text, its source), e.g. the config embedded in an exported artifact."""
    from pfcn.checkpoint import load_checkpoint_file
    from pfcn.config import config_from_yaml, load_config

    if config is not None:
        return load_config(config, list(overrides))
    stored = load_checkpoint_file(weights, mmap=True).get("cfg") if weights is not None else None
    if not isinstance(stored, str) and fallback is not None:
        return config_from_yaml(fallback[0], list(overrides), source=fallback[1])
    if weights is None:
        raise ArtifactError("a PyTorch model needs --config (no checkpoint to read a stored config from)")
    if not isinstance(stored, str):
        raise ArtifactError(f"{weights}: this checkpoint carries no config (official and pre-pfcn checkpoints do "
                            "not); pass --config with the YAML it was trained with")
    return config_from_yaml(stored, list(overrides), source=f"{weights} (stored config)")


def open_model(path: str | Path | None, *, config: str | Path | None = None, overrides: Sequence[Any] = (),
               device: str = "cpu", providers: str | list[str] | None = "auto", threads: int | None = None,
               batch_size: int = 1, random_weights: bool = False, cfg=None) -> Backend:
    """Open ``path`` with the backend its suffix calls for.

    Args:
        path: a checkpoint (``.pth``/``.pt``/``.pkl``), an ONNX graph (``.onnx``), a TensorRT engine
            (``.engine``/``.plan``) or an AOTInductor package (``.pt2``). None with ``random_weights`` builds an
            untrained PyTorch model from ``config``.
        config / overrides: the YAML and ``KEY VALUE`` overrides of a PyTorch model (default: the stored config).
        cfg: an already built config (instead of ``config``), for callers that have one.
        device: "cpu" or "cuda[:i]".
        providers: ONNX Runtime providers: "auto", "cpu", "cuda", "tensorrt" or provider names.
        threads: CPU threads for the backend (None: its default).
        batch_size: images per run where the artifact's batch is dynamic.
    """
    if path is None:
        if not random_weights:
            raise ArtifactError("no model given: pass a checkpoint, .onnx or .engine (or --random-weights with "
                                "--config for an untrained model)")
        kind = "checkpoint"
    else:
        kind = artifact_kind(path)
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    if kind == "onnx":
        from .ort import OrtBackend

        return OrtBackend(path, providers=providers, device=device, threads=threads, batch_size=batch_size)
    if kind == "engine":
        from .tensorrt import TensorRTBackend

        # an engine runs on a GPU only: the CPU default means "the first GPU" here
        return TensorRTBackend(path, device=device if device.startswith("cuda") else "cuda", batch_size=batch_size)
    if kind == "aoti":
        from .aoti import AotiBackend

        return AotiBackend(path, device=device, batch_size=batch_size)
    import torch

    from pfcn.predictor import Predictor

    if threads:
        torch.set_num_threads(int(threads))
    if cfg is None:
        cfg = load_model_config(path, config, overrides)
    return Predictor.from_files(cfg, path, device, batch_size, random_weights=random_weights)
