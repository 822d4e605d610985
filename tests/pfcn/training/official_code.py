"""Test-only access to the official sources, and a loader that runs the official training code (GenerateGT, loss.py,
PanopticFCN.losses) as the yardstick for pfcn.training.

Where the sources live is machine-specific, so it comes only from environment variables: ``PFCN_OFFICIAL_REPO`` (a
clone of yanwei-li/PanopticFCN) and ``PFCN_DETECTRON2_REPO`` (a clone of facebookresearch/detectron2). A work tree
or a bare clone both work (bare ones are read with ``git show HEAD:<path>``). Tests skip when a variable is unset and
fail when it is set to something that is not such a clone.

The official modules import detectron2, which is not installed; the few names they import are replaced by minimal
stand-ins (Boxes / BitMasks / Instances data holders, a 1x1 Conv2d, a no-op registry). Nothing is copied into the
repository: the sources are read at test time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import torch
from torch import nn

OFFICIAL_ENV = "PFCN_OFFICIAL_REPO"
DETECTRON2_ENV = "PFCN_DETECTRON2_REPO"
OFFICIAL_SKIP = "clone the official repository and set PFCN_OFFICIAL_REPO to run the official-code comparisons"
DETECTRON2_SKIP = ("clone facebookresearch/detectron2 and set PFCN_DETECTRON2_REPO to run the official-code "
                   "comparisons that read detectron2's sources")
_SKIP = {OFFICIAL_ENV: OFFICIAL_SKIP, DETECTRON2_ENV: DETECTRON2_SKIP}
_PKG = "_pfcn_official_training"


class SourcesNotConfigured(LookupError):
    """The environment variable naming a source clone is unset; tests turn this into a skip with its message."""


def read_source(env_var: str, path: str) -> str:
    """The text of ``path`` in the clone named by ``env_var`` (a work tree, or a bare clone read at HEAD).

    Raises SourcesNotConfigured when the variable is unset, FileNotFoundError naming the variable, its value and the
    file when it does not point at a clone holding that file.
    """
    root = os.environ.get(env_var, "").strip()
    if not root:
        raise SourcesNotConfigured(_SKIP.get(env_var, f"set {env_var} to run the official-code comparisons"))
    repo = Path(root).expanduser()
    if (repo / path).is_file():
        return (repo / path).read_text()
    if repo.is_dir():
        done = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout
    raise FileNotFoundError(f"{env_var}={root}: {path} is not there (neither a file in a work tree nor at HEAD of a "
                            f"git repository); point {env_var} at a clone of the repository it names")


class Boxes:
    """The part of detectron2's Boxes that GenerateGT uses."""

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor

    def area(self) -> torch.Tensor:
        t = self.tensor
        return (t[:, 2] - t[:, 0]) * (t[:, 3] - t[:, 1])

    def get_centers(self) -> torch.Tensor:
        return (self.tensor[:, :2] + self.tensor[:, 2:]) / 2

    def __getitem__(self, item: Any) -> "Boxes":
        return Boxes(self.tensor[item])


class BitMasks:
    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor


class Instances:
    def __init__(self, **fields: Any):
        for k, v in fields.items():
            setattr(self, k, v)


class _Conv2d(nn.Conv2d):
    def __init__(self, *args: Any, norm: Any = None, activation: Any = None, **kwargs: Any):
        super().__init__(*args, **kwargs)


class _Registry:
    def register(self):
        return lambda obj: obj


def _module(name: str, **attrs: Any) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def load_official() -> types.SimpleNamespace:
    """Execute the official gt_generate / loss / panoptic_seg modules (see ``read_source`` for what it raises)."""
    sources = {name: read_source(OFFICIAL_ENV, f"panopticfcn/{name}.py")
               for name in ("utils", "gt_generate", "loss", "head", "panoptic_seg")}
    stand_ins = {
        "detectron2": _module("detectron2", __path__=[]),
        "detectron2.layers": _module("detectron2.layers", Conv2d=_Conv2d, get_norm=lambda norm, ch: None),
        "detectron2.structures": _module("detectron2.structures", ImageList=object, Instances=Instances,
                                         BitMasks=BitMasks),
        "detectron2.modeling": _module("detectron2.modeling", __path__=[]),
        "detectron2.modeling.meta_arch": _module("detectron2.modeling.meta_arch", __path__=[]),
        "detectron2.modeling.meta_arch.build": _module("detectron2.modeling.meta_arch.build",
                                                       META_ARCH_REGISTRY=_Registry()),
        _PKG: _module(_PKG, __path__=[]),
        f"{_PKG}.deform_conv_with_off": _module(f"{_PKG}.deform_conv_with_off", ModulatedDeformConvWithOff=None),
        f"{_PKG}.backbone_utils": _module(f"{_PKG}.backbone_utils", build_semanticfpn=None, build_backbone=None),
    }
    saved = {name: sys.modules.get(name) for name in list(stand_ins) + [f"{_PKG}.{n}" for n in sources]}
    loaded: dict[str, types.ModuleType] = {}
    try:
        sys.modules.update(stand_ins)
        for name, src in sources.items():  # dependency order
            mod = _module(f"{_PKG}.{name}", __package__=_PKG)
            sys.modules[mod.__name__] = mod
            exec(compile(src, f"official/panopticfcn/{name}.py", "exec"), mod.__dict__)
            loaded[name] = mod
    finally:
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return types.SimpleNamespace(GenerateGT=loaded["gt_generate"].GenerateGT,
                                 sigmoid_focal_loss=loaded["loss"].sigmoid_focal_loss,
                                 weighted_dice_loss=loaded["loss"].weighted_dice_loss,
                                 ThingGenerator=loaded["head"].ThingGenerator,
                                 StuffGenerator=loaded["head"].StuffGenerator,
                                 PanopticFCN=loaded["panoptic_seg"].PanopticFCN)


def official_targets(official: types.SimpleNamespace, cfg: Any, samples: list[dict], image: torch.Tensor,
                     weights: list[torch.Tensor], encoded: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Official ``GenerateGT.generate`` for our samples (converted to detectron2-like Instances)."""
    batched = []
    for s in samples:
        inst = s["instances"]
        item = {"sem_seg": s["sem_seg"].clone()}  # the official code edits it in place
        if inst["masks"].shape[0]:
            item["instances"] = Instances(gt_masks=BitMasks(inst["masks"].clone()),
                                          gt_boxes=Boxes(inst["boxes"].clone()), gt_classes=inst["classes"].clone())
        else:
            item["instances"] = Instances()
        batched.append(item)
    gen = official.GenerateGT(cfg)
    return gen.generate(batched, types.SimpleNamespace(tensor=image), weights, encoded)


def official_losses(official: types.SimpleNamespace, cfg: Any, heads: Any, gt_dict: dict,
                    thing_embed: nn.Conv2d, stuff_embed: nn.Conv2d) -> dict[str, torch.Tensor]:
    """Official ``PanopticFCN.losses`` on our head outputs, with generators sharing our 1x1 convs."""
    thing_gen = official.ThingGenerator(cfg)
    stuff_gen = official.StuffGenerator(cfg)
    thing_gen.embed_extractor = thing_embed
    stuff_gen.embed_extractor = stuff_embed
    m = cfg.MODEL
    host = types.SimpleNamespace(
        weighted_num=m.POSITION_HEAD.THING.POS_NUM, pos_weight=m.LOSS_WEIGHT.POSITION,
        seg_weight=m.LOSS_WEIGHT.SEGMENT, focal_loss_alpha=m.LOSS_WEIGHT.FOCAL_LOSS_ALPHA,
        focal_loss_gamma=m.LOSS_WEIGHT.FOCAL_LOSS_GAMMA, thing_generator=thing_gen, stuff_generator=stuff_gen)
    host.loss_single_level = types.MethodType(official.PanopticFCN.loss_single_level, host)
    return official.PanopticFCN.losses(host, list(heads.centers), list(heads.regions), list(heads.weights),
                                       heads.encoded, gt_dict)
