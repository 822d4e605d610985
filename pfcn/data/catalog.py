"""Dataset names of the official configs, resolved to folders under a data root.

The official configs name their data ``coco_2017_train_panoptic_separated`` / ``coco_2017_val_panoptic_separated``;
detectron2 registers these (and the "standard" ``coco_2017_*_panoptic``) under ``$DETECTRON2_DATASETS`` with the
layout of its ``data/datasets/builtin.py``::

    coco/{train2017,val2017}/                    photographs
    coco/panoptic_{train2017,val2017}/           panoptic PNGs
    coco/annotations/panoptic_{train2017,val2017}.json

pfcn keeps that layout under ``$PFCN_DATASETS`` (default ``./datasets``). The "separated" and the "standard" name
give the same samples here: pfcn always builds the separated targets from the panoptic PNGs (see
`pfcn.data.coco_panoptic`), where detectron2's separated variant read instance polygons from a second JSON.
A name may also be a folder written by ``pfcn-synth`` (``images/``, ``panoptic/``, ``panoptic.json``).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from pfcn.data.coco_panoptic import PanopticDataset
from pfcn.metadata import CategoryMeta

__all__ = ["DATA_ROOT_ENV", "DatasetPaths", "build_dataset", "data_root", "dataset_paths", "known_datasets"]

DATA_ROOT_ENV = "PFCN_DATASETS"
DEFAULT_DATA_ROOT = "datasets"
SYNTH_LAYOUT = ("images", "panoptic", "panoptic.json")  # pfcn-synth's output folder

# name -> (images, panoptic PNGs, panoptic JSON), relative to the data root (detectron2's builtin.py layout).
_COCO_PANOPTIC = {
    "coco_2017_train_panoptic": ("coco/train2017", "coco/panoptic_train2017",
                                 "coco/annotations/panoptic_train2017.json"),
    "coco_2017_val_panoptic": ("coco/val2017", "coco/panoptic_val2017", "coco/annotations/panoptic_val2017.json"),
    "coco_2017_val_100_panoptic": ("coco/val2017", "coco/panoptic_val2017_100",
                                   "coco/annotations/panoptic_val2017_100.json"),
}
_SPLITS = {**_COCO_PANOPTIC, **{f"{k}_separated": v for k, v in _COCO_PANOPTIC.items()}}


class DatasetPaths(NamedTuple):
    """Where a COCO-panoptic dataset lives."""

    image_root: Path
    panoptic_root: Path
    panoptic_json: Path


def data_root() -> Path:
    """``$PFCN_DATASETS``, else ``./datasets`` (detectron2's default root, relative to the working directory)."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT)


def known_datasets() -> list[str]:
    return sorted(_SPLITS)


def dataset_paths(name: str, root: str | Path | None = None) -> DatasetPaths:
    """Resolve a dataset name, or a folder holding images/, panoptic/ and panoptic.json (the COCO panoptic layout
    pfcn-synth writes), to its three paths; existence is checked when loading.

    Raises:
        ValueError: an unknown name; the message lists the known ones.
    """
    if name in _SPLITS:
        base = Path(root) if root is not None else data_root()
        images, pngs, js = _SPLITS[name]
        return DatasetPaths(base / images, base / pngs, base / js)
    folder = Path(name)
    if folder.is_dir() and all((folder / p).exists() for p in SYNTH_LAYOUT):
        return DatasetPaths(folder / SYNTH_LAYOUT[0], folder / SYNTH_LAYOUT[1], folder / SYNTH_LAYOUT[2])
    close = difflib.get_close_matches(name, known_datasets(), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown dataset {name!r}.{hint} Known names: {', '.join(known_datasets())}; or give a folder "
                     f"holding {', '.join(SYNTH_LAYOUT)} (pfcn-synth's layout), or the paths themselves.")


def build_dataset(names: str | Sequence[str], *, root: str | Path | None = None,
                  meta: CategoryMeta | None = None) -> PanopticDataset:
    """The dataset behind one name or several (e.g. ``cfg.DATASETS.TRAIN``), with no transforms.

    Several names are concatenated in order and must share their categories.
    """
    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("build_dataset: no dataset name given (cfg.DATASETS.TRAIN / TEST is empty)")
    parts = []
    for name in names:
        paths = dataset_paths(name, root)
        try:
            parts.append(PanopticDataset(*paths, meta=meta, name=name))
        except FileNotFoundError as e:
            if name in _SPLITS:
                base = Path(root) if root is not None else data_root()
                raise FileNotFoundError(f"{e} -- dataset {name!r} is looked up under {base} "
                                        f"(set ${DATA_ROOT_ENV} to your data root)") from e
            raise
    return parts[0] if len(parts) == 1 else PanopticDataset.concat(parts)
