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
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .metadata import CategoryMeta


class CheckpointError(ValueError):
    """A checkpoint is unreadable, unsafe, or does not match the model; the message names the file."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only folder...); the message names the file.

    No partial or temporary file is left behind and an earlier file at the same path is untouched.
    """

    def __init__(self, path: Path, cause: BaseException):
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(getattr(cause, "errno", None), f"{path}: cannot write the checkpoint: {reason}")
        self.filename = str(path)
        self.message = f"{path}: cannot write the checkpoint: {reason}"

    def __str__(self) -> str:
        return self.message


# How torch's weights-only unpickler (torch 2.11-2.14, torch/_weights_only_unpickler.py) says that a file would import
# or call something that is not a tensor or a plain container, i.e. that unpickling it could run code. The first
# group names what the file refers to.
_RUNS_CODE = (
    re.compile(r"unsupported GLOBAL (\S+) whose module \S+ is blocked"),  # os, sys, subprocess, ...
    re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global"),
    re.compile(r"Trying to call reduce for unrecognized function ([^\n]+?)(?: which belongs to|\n|$)"),
    re.compile(r"Can only create new object for nn.Parameter or classes allowlisted via `add_safe_globals` but got "
               r"([^\n]+)"),
    re.compile(r"Can only build Tensor, Parameter, OrderedDict or types allowlisted via `add_safe_globals`, but got "
               r"([^\n]+)"),
)


def _unpickler_reason(message: str) -> str:
    """The specific reason in torch's long weights-only error, without torch's advice around it (which includes
    switching the protection off, something pfcn never suggests)."""
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message)
    if found:
        reason = found.group(1).strip()
    else:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", message) if p.strip()]
        kept = [p for p in paragraphs if not re.search(r"weights.only|Weights only load failed|documentation of "
                                                       r"torch.load", p, re.IGNORECASE)]
        reason = kept[0].splitlines()[0] if kept else "unsupported content"
    return "unsupported content" if re.search(r"weights.only", reason, re.IGNORECASE) else reason


def _refers_to_code(message: str) -> str | None:
    """What a refused file would have imported or called, if torch refused it for that reason."""
    for pattern in _RUNS_CODE:
        found = pattern.search(message)
        if found:
            return found.group(1).strip().rstrip(".")
    return None


def load_checkpoint_file(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint file into a dict with at least a ``"model"`` state_dict.

    ``.pth``/``.pt``/``.ckpt`` files are loaded with ``weights_only=True``; a file that needs arbitrary unpickling
    (a pickled model object, custom classes, a function call such as ``os.system``) is refused with what it refers
    to, and nothing in it is run. ``mmap`` maps the tensors of a zip checkpoint (``torch.save``'s format) instead of
    reading them, for callers that want only the stored config or metadata (the R50's: 0.13 -> 0.03 s).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as e:
        target = _refers_to_code(str(e))
        if target is None:
            # The weights-only unpickler also raises this for bytes that are no pickle at all.
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (torch.load cannot parse it: "
                                  f"{_unpickler_reason(str(e))})") from None
        raise CheckpointError(
            f"{path}: refused: loading this file would run code. Its pickle refers to {target}, and unpickling it "
            f"would import and call that (arbitrary unpickling); pfcn reads only tensors and plain containers, so "
            f"nothing in the file was run. Do not load it from an untrusted source; if you made it yourself, save the "
            f"weights as a plain state_dict: torch.save(model.state_dict(), PATH).") from None
    except Exception as e:  # torch.load raises KeyError, RuntimeError, EOFError... on files that are no checkpoint
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: "
                              f"{_unpickler_reason(str(e)) if str(e) else ''})") from None
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
    """``torch.save`` to a temporary file in the same folder, fsync, then rename: never a half-written file.

    Raises:
        CheckpointWriteError (an OSError) naming ``path`` when the folder cannot be written (full, read-only, not
        a folder...); the temporary file is removed and an existing file at ``path`` is left as it was.
    """
    path = Path(path)
    buf = io.BytesIO()
    torch.save(obj, buf)  # serialisation errors (unpicklable objects) are programming errors: they propagate as is
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(buf.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # Ctrl-C included: never leave the temporary file behind
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise CheckpointWriteError(path, e) from e
        raise
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
