"""MODEL.WEIGHTS initialisation: ImageNet backbones (detectron2's MSRA ``.pkl``, torchvision ``resnet*``) or a
whole pfcn/official checkpoint.

Three kinds of file, told apart by suffix and content, each loaded by an explicit name table (no suffix matching,
no heuristics):

* ``.pkl``: a Caffe2/Detectron pickle of numpy arrays, as detectron2's ``ImageNetPretrained/MSRA/R-50.pkl``. The
  names follow Caffe2 (``conv1_w``, ``res_conv1_bn_s``, ``res2_0_branch2a_w``, ``res2_0_branch1_bn_b``...; detectron2's
  ``c2_model_loading.convert_basic_c2_names`` is the reference for the mapping). MSRA files fold BatchNorm into a
  scale ``_s`` and a bias ``_b``: the FrozenBN statistics keep their neutral defaults (mean 0, var 1 - eps), exactly
  what detectron2 does. A detectron2 model-zoo pickle (``{"model": ..., "__author__": ...}``) holds detectron2 names
  and is loaded as a whole checkpoint. The pickle is read by an unpickler that only builds numpy arrays, numpy
  scalars/dtypes and plain containers; anything else is refused before it is constructed.
* a torch file with torchvision's ResNet names (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``,
  ``layer1.0.downsample.0.weight``...): BN tensors go to the FrozenBN buffers, ``fc.*`` and ``num_batches_tracked``
  are dropped. torchvision nets put the stride in the 3x3 conv and expect RGB input scaled by the ImageNet std, so the
  report notes config values that differ (MODEL.RESNETS.STRIDE_IN_1X1 False, INPUT.FORMAT RGB,
  MODEL.PIXEL_STD [58.395, 57.12, 57.375]); it does not change them.
* any other torch file with the model's own names (pfcn or official PanopticFCN checkpoints): strict, every key and
  shape (`pfcn.checkpoint.load_weights`).

ImageNet files initialise ``backbone.bottom_up`` only; every backbone tensor must be found with the right shape
(missing running statistics are allowed for Caffe2 files, see above), and file tensors that map to nothing are an
error unless they are the ImageNet classifier. The returned `InitReport` counts the tensors loaded per module.
"""

from __future__ import annotations

import codecs
import collections
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..checkpoint import CheckpointError, load_checkpoint_file, match_state_dict

__all__ = ["InitReport", "UnsafePickleError", "load_c2_pickle", "c2_name", "torchvision_name",
           "initialize_from_weights"]

BOTTOM_UP = "backbone.bottom_up."
_REMOTE = ("detectron2://", "http://", "https://", "s3://", "gs://")
# Caffe2 BN blob suffixes -> FrozenBN buffer names (detectron2: _s scale, _b bias, _rm mean, _riv variance).
_C2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_C2_BRANCH = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
# ImageNet classifier tensors: present in ImageNet files, absent from the detection backbone.
_C2_CLASSIFIER = re.compile(r"^(fc1000|pred)_[wb]$")
_TV_IGNORED = re.compile(r"^fc\.(weight|bias)$|\.num_batches_tracked$|^num_batches_tracked$")
# The config values torchvision's ResNets were trained with (detectron2's convert-torchvision-to-d2 notes).
_TORCHVISION_CFG = {"MODEL.RESNETS.STRIDE_IN_1X1": False, "INPUT.FORMAT": "RGB",
                    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375]}


class UnsafePickleError(CheckpointError):
    """A ``.pkl`` weights file refers to something other than numpy arrays and plain containers."""


@dataclass
class InitReport:
    """What an initialisation loaded.

    Attributes:
        path: the weights file.
        kind: "caffe2" (MSRA .pkl), "torchvision" or "checkpoint" (pfcn/official, strict).
        loaded: module name -> (tensors loaded, tensors in the module), for every top-level module.
        kept_default: model keys not in the file on purpose, set to neutral values (FrozenBN statistics of MSRA
            files, whose BN is folded into scale and bias: mean 0, var 1 - eps).
        skipped: file keys deliberately not used (the ImageNet classifier, num_batches_tracked).
        notes: config values that differ from what the weights were trained with.
        checkpoint: the whole checkpoint dict for kind "checkpoint" (meta, cfg, ...), else None.
    """

    path: str
    kind: str
    loaded: dict[str, tuple[int, int]] = field(default_factory=dict)
    kept_default: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    checkpoint: dict[str, Any] | None = None

    def summary(self) -> str:
        """Human-readable lines: one per module with its loaded count, then skipped keys and notes."""
        lines = [f"initialised from {self.path} ({self.kind}):"]
        for module, (n, total) in self.loaded.items():
            lines.append(f"  {module:<28s} {n:4d} / {total:<4d} tensors" + ("" if n else "  (random init)"))
        if self.kept_default:
            lines.append(f"  {len(self.kept_default)} FrozenBN statistics not in the file keep mean 0 / var 1 "
                         f"(BN folded into scale and bias)")
        if self.skipped:
            lines.append(f"  not used from the file: {', '.join(self.skipped[:6])}"
                         + (f" ... ({len(self.skipped)} in all)" if len(self.skipped) > 6 else ""))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---- the restricted unpickler ----------------------------------------------------------------------------------
def _numpy_globals() -> dict[tuple[str, str], Any]:
    """The only callables a weights pickle may name: numpy's array/scalar reconstructors, dtype, OrderedDict and
    ``_codecs.encode`` (protocol-2 pickles written by Python 3 store bytes through it)."""
    reconstruct = np.zeros(1).__reduce__()[0]
    scalar = np.float32(0).__reduce__()[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("_codecs", "encode"): codecs.encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):  # numpy 1.x and 2.x module names
        allowed[(module, "_reconstruct")] = reconstruct
        allowed[(module, "scalar")] = scalar
    return allowed


class _NumpyUnpickler(pickle.Unpickler):
    """Builds numpy arrays and builtin containers only; refuses every other global before importing it."""

    allowed = _numpy_globals()

    def __init__(self, file: Any, source: str):
        super().__init__(file, encoding="latin1")  # Caffe2 files were pickled by Python 2
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        obj = self.allowed.get((module, name))
        if obj is None:
            raise UnsafePickleError(
                f"{self.source}: refused to unpickle: the file refers to {module}.{name}, which could run code. "
                f"pfcn reads .pkl weights as numpy arrays in plain containers only (detectron2/Caffe2 ImageNet "
                f"files such as MSRA R-50.pkl); convert other files to a torch state_dict.")
        return obj


def load_c2_pickle(path: str | Path) -> tuple[dict[str, np.ndarray], bool]:
    """Read a Caffe2/detectron2 ``.pkl`` safely.

    Returns:
        (name -> numpy array, is_detectron2): the arrays, without Caffe2's ``*_momentum`` blobs; the flag says the
        file is in detectron2's model-zoo format (``{"model": ..., "__author__": ...}``, detectron2 names).
    Raises:
        UnsafePickleError: the pickle refers to anything but numpy arrays/dtypes/scalars and plain containers.
        CheckpointError: unreadable, or not a dict of arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    try:
        with open(path, "rb") as f:
            data = _NumpyUnpickler(f, str(path)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # truncated files, non-pickles...
        raise CheckpointError(f"{path}: not a readable .pkl weights file ({type(e).__name__}: {e})") from e
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of arrays, got {type(data).__name__}")
    is_d2 = "model" in data and "__author__" in data
    if is_d2:
        data = data["model"]
    elif "blobs" in data:  # Detectron detection models wrap their arrays; ImageNet models do not
        data = data["blobs"]
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: expected a dict of arrays under 'model'/'blobs', got {type(data).__name__}")
    arrays: dict[str, np.ndarray] = {}
    for key, value in data.items():
        if str(key).endswith("_momentum"):
            continue
        if not isinstance(value, np.ndarray):
            raise CheckpointError(f"{path}: entry {key!r} is a {type(value).__name__}, not a numpy array")
        arrays[str(key)] = value
    return arrays, is_d2


# ---- name tables ------------------------------------------------------------------------------------------------
_STEM = re.compile(r"^stem\.conv1\.(weight|norm\.(weight|bias|running_mean|running_var))$")
_BLOCK = re.compile(r"^res(\d)\.(\d+)\.(conv[123]|shortcut)\.(weight|norm\.(weight|bias|running_mean|running_var))$")


def c2_name(key: str) -> str:
    """Caffe2 name of a ``backbone.bottom_up`` key (given without that prefix), e.g.
    ``res2.0.conv1.norm.weight`` -> ``res2_0_branch2a_bn_s``, ``stem.conv1.weight`` -> ``conv1_w``."""
    m = _STEM.match(key)
    if m:
        return "conv1_w" if m.group(1) == "weight" else f"res_conv1_bn_{_C2_BN[m.group(2)]}"
    m = _BLOCK.match(key)
    if not m:
        raise ValueError(f"no Caffe2 name for backbone key {key!r}")
    stage, block, layer, tensor, bn = m.groups()
    base = f"res{stage}_{block}_{_C2_BRANCH[layer]}"
    return f"{base}_w" if tensor == "weight" else f"{base}_bn_{_C2_BN[bn]}"


def torchvision_name(key: str) -> str:
    """torchvision ResNet name of a ``backbone.bottom_up`` key (without that prefix), e.g.
    ``res3.0.shortcut.norm.bias`` -> ``layer2.0.downsample.1.bias``, ``stem.conv1.norm.weight`` -> ``bn1.weight``."""
    m = _STEM.match(key)
    if m:
        return "conv1.weight" if m.group(1) == "weight" else f"bn1.{m.group(2)}"
    m = _BLOCK.match(key)
    if not m:
        raise ValueError(f"no torchvision name for backbone key {key!r}")
    stage, block, layer, tensor, bn = m.groups()
    prefix = f"layer{int(stage) - 1}.{block}"
    if layer == "shortcut":
        return f"{prefix}.downsample.0.weight" if tensor == "weight" else f"{prefix}.downsample.1.{bn}"
    return f"{prefix}.{layer}.weight" if tensor == "weight" else f"{prefix}.bn{layer[-1]}.{bn}"


def _module_counts(model: nn.Module, loaded: set[str]) -> dict[str, tuple[int, int]]:
    """(loaded, total) tensors per module: backbone.bottom_up, backbone (the FPN), then the heads."""
    counts: dict[str, list[int]] = {}
    for key in model.state_dict():
        module = "backbone.bottom_up" if key.startswith(BOTTOM_UP) else key.split(".")[0]
        if module == "backbone":
            module = "backbone (FPN)"
        c = counts.setdefault(module, [0, 0])
        c[1] += 1
        c[0] += key in loaded
    return {k: (v[0], v[1]) for k, v in counts.items()}


def _load_backbone(model: nn.Module, tensors: Mapping[str, Any], kind: str, path: Path,
                   name_of: Any, ignored: re.Pattern[str], stats_optional: bool) -> InitReport:
    """Copy the file's tensors named ``name_of(key)`` into every ``backbone.bottom_up`` key, strictly."""
    state = model.state_dict()
    keys = [k for k in state if k.startswith(BOTTOM_UP)]
    if not keys:
        raise CheckpointError(f"{path}: the model has no backbone.bottom_up to initialise")
    updates: dict[str, torch.Tensor] = {}
    missing, wrong, kept = [], [], []
    used: set[str] = set()
    for key in keys:
        src = name_of(key[len(BOTTOM_UP):])
        if src not in tensors:
            if stats_optional and key.endswith(("norm.running_mean", "norm.running_var")):
                kept.append(key)
            else:
                missing.append(f"{key} (file name {src})")
            continue
        value = torch.as_tensor(np.ascontiguousarray(tensors[src]) if isinstance(tensors[src], np.ndarray)
                                else tensors[src])
        if tuple(value.shape) != tuple(state[key].shape):
            wrong.append(f"{src}: file {tuple(value.shape)} vs model {key} {tuple(state[key].shape)}")
            continue
        updates[key] = value
        used.add(src)
    unexpected = sorted(k for k in tensors if k not in used and not ignored.search(k))
    skipped = sorted(k for k in tensors if k not in used and ignored.search(k))
    if missing or wrong or unexpected:
        parts = [f"{path}: {kind} weights do not fit the config's backbone (MODEL.RESNETS.*):"]
        for title, items in (("missing in the file", missing), ("wrongly shaped", wrong),
                             ("in the file but not in the model", unexpected)):
            if items:
                parts.append(f"  {len(items)} {title}: " + ", ".join(items[:8])
                             + (f" ... ({len(items) - 8} more)" if len(items) > 8 else ""))
        raise CheckpointError("\n".join(parts))
    with torch.no_grad():
        for key, value in updates.items():
            state[key].copy_(value.to(state[key].dtype))
        for key in kept:  # neutral statistics, whatever the model held before: the file's scale applies as is
            eps = float(getattr(model.get_submodule(key.rsplit(".", 1)[0]), "eps", 0.0))
            state[key].fill_(0.0 if key.endswith("running_mean") else 1.0 - eps)
    return InitReport(str(path), kind, _module_counts(model, set(updates)), kept, skipped)


def _torchvision_notes(cfg: Any) -> list[str]:
    if cfg is None:
        return []
    actual = {"MODEL.RESNETS.STRIDE_IN_1X1": bool(cfg.MODEL.RESNETS.STRIDE_IN_1X1), "INPUT.FORMAT": cfg.INPUT.FORMAT,
              "MODEL.PIXEL_STD": [float(v) for v in cfg.MODEL.PIXEL_STD]}
    return [f"torchvision weights were trained with {k} {v}, the config has {actual[k]}"
            for k, v in _TORCHVISION_CFG.items() if actual[k] != v]


def _is_torchvision(keys: set[str]) -> bool:
    return "conv1.weight" in keys and "bn1.weight" in keys and any(k.startswith("layer1.") for k in keys)


def initialize_from_weights(model: nn.Module, path: str | Path, cfg: Any = None) -> InitReport:
    """Initialise ``model`` from MODEL.WEIGHTS (see the module docstring for the accepted files).

    Args:
        model: a freshly built PanopticFCN.
        path: the weights file (local; URLs such as ``detectron2://...`` are refused with a hint).
        cfg: the config, only used to note torchvision-incompatible settings.
    Raises:
        CheckpointError (a ValueError) naming the file and the keys at fault; UnsafePickleError for unsafe pickles.
    """
    text = str(path)
    if text.startswith(_REMOTE):
        raise CheckpointError(f"MODEL.WEIGHTS={text}: pfcn does not download weights; fetch the file (e.g. "
                              f"detectron2's ImageNetPretrained/MSRA/R-50.pkl) and pass its local path")
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"MODEL.WEIGHTS={path}: no such file")
    if path.suffix == ".pkl":
        arrays, is_d2 = load_c2_pickle(path)
        if is_d2 or any(k.startswith("backbone.") for k in arrays):
            state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
            match_state_dict(model, state, source=str(path))
            return InitReport(str(path), "checkpoint", _module_counts(model, set(state)),
                              checkpoint={"model": state})
        return _load_backbone(model, arrays, "caffe2", path, c2_name, _C2_CLASSIFIER, stats_optional=True)
    ckpt = load_checkpoint_file(path)
    keys = set(ckpt["model"])
    if _is_torchvision(keys):
        report = _load_backbone(model, ckpt["model"], "torchvision", path, torchvision_name, _TV_IGNORED,
                                stats_optional=False)
        report.notes = _torchvision_notes(cfg)
        return report
    if not any(k.startswith("backbone.") for k in keys):
        raise CheckpointError(f"{path}: neither a PanopticFCN checkpoint (keys 'backbone.*'...) nor a torchvision "
                              f"ResNet state_dict ('conv1.weight', 'layer1.*'); first keys: {sorted(keys)[:5]}")
    match_state_dict(model, ckpt["model"], source=str(path))
    return InitReport(str(path), "checkpoint", _module_counts(model, keys), checkpoint=ckpt)
