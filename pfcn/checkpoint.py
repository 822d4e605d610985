"""Checkpoints: safe loading, strict key matching against the model, atomic saving.

Official PanopticFCN checkpoints are detectron2 files: ``{"model": state_dict, ...}`` or a bare state_dict. pfcn
checkpoints add ``"meta"`` (the dataset categories) and ``"cfg"`` (the YAML), so an artifact always knows what its
classes are. Loading never runs arbitrary pickle code: ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .metadata import CategoryMeta


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe, or does not match the model; the message names the file."""


# How torch's weights-only unpickler names the class or function a file would have to import.
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _unpickler_reason(message: str) -> str:
    """The informative part of torch's long weights-only error (what follows "WeightsUnpickler error:")."""
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    if found:
        return found.group(1).strip()
    return message.strip().splitlines()[0] if message.strip() else "unknown error"


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file into a dict with at least a ``"model"`` state_dict.

    ``.pth``/``.pt``/``.ckpt`` files are loaded with ``weights_only=True``; a file that needs arbitrary unpickling
    (a pickled model object, custom classes) is refused with the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _UNSAFE_GLOBAL.search(str(e))
        if unsafe is None:
            # The weights-only unpickler also raises this for bytes that are no pickle at all.
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.load cannot parse it: "
                                  f"{_unpickler_reason(str(e))})") from e
        raise CheckpointError(
            f"{path}: refused to load: the file needs arbitrary unpickling, which can run code (it refers to "
            f"{unsafe.group(1)}). pfcn only loads tensors and plain containers (torch.load(weights_only=True)). "
            f"Re-save it as a plain state_dict: torch.save(model.state_dict(), ...).") from e
    except Exception as e:  # torch.load raises KeyError, RuntimeError, EOFError... on files that are no checkpoint
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict or {{'model': state_dict}}, got {type(data).__name__}")
    if "model" in data and isinstance(data["model"], Mapping):
        out = dict(data)
    else:
        out = {"model": dict(data)}
    bad = [k for k, v in out["model"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: state_dict entries that are not tensors: {bad[:10]}")
    return out


def match_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load ``state_dict`` into ``model`` with strict matching of keys *and* shapes.

    Raises:
        CheckpointError listing the missing, unexpected and wrongly shaped keys (each list capped for reading).
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = sorted(f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                   for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape))
    if missing or unexpected or wrong:
        parts = [f"{source} does not match the model built from the config:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrongly shaped", wrong)):
            if keys:
                shown = "\n    ".join(keys[:20]) + (f"\n    ... and {len(keys) - 20} more" if len(keys) > 20 else "")
                parts.append(f"  {len(keys)} {title}:\n    {shown}")
        raise CheckpointError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file strictly into ``model``; return the whole checkpoint dict (meta, cfg, iteration...)."""
    ckpt = load_checkpoint_file(path)
    match_state_dict(model, ckpt["model"], source=str(path))
    return ckpt


def checkpoint_meta(ckpt: Mapping[str, Any]) -> CategoryMeta | None:
    """The categories stored in a pfcn checkpoint, or None for an official one."""
    meta = ckpt.get("meta")
    if isinstance(meta, Mapping) and "categories" in meta:
        return CategoryMeta.from_dict(meta)
    return None


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(obj, buf)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(buf.getvalue())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def save_checkpoint(path: str | Path, model: nn.Module, meta: CategoryMeta | None = None, cfg_yaml: str | None = None,
                    **extra: Any) -> Path:
    """Save ``{"model": state_dict, "meta": ..., "cfg": ..., **extra}`` in the official (detectron2) layout."""
    data: dict[str, Any] = {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if meta is not None:
        data["meta"] = meta.to_dict()
    if cfg_yaml is not None:
        data["cfg"] = cfg_yaml
    data.update(extra)
    return atomic_torch_save(data, path)
