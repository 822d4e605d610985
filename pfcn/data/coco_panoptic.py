"""A COCO-panoptic dataset read straight from its images, panoptic PNGs and JSON, with PanopticFCN's targets.

Format (cocodataset/panopticapi): one PNG per image whose pixel colour encodes a segment id as R + 256*G + 256^2*B
(0 = void), and a JSON whose ``annotations[].segments_info`` gives each id its ``category_id``, ``iscrowd``, ``area``
and ``bbox``. Targets are computed per sample from the PNG, with no preprocessing step, in the "separated" setup the
official PanopticFCN trains with (detectron2's ``coco_2017_*_panoptic_separated``):

* things: every non-crowd thing segment is an instance whose class is its category's position among the things of
  the JSON (``CategoryMeta.thing_ids``); crowd segments are not instances.
* stuff head (``sem_seg``): 0 on every thing pixel, s in 1..S-1 on the pixels of stuff category ``stuff_ids[s-1]``,
  255 (ignored by the loss) on void and on crowd segments. detectron2's ``prepare_panoptic_fpn`` writes 0 on crowd
  things; pfcn ignores them, so the stuff head is neither rewarded nor punished for crowds it cannot resolve.

The files are checked when the dataset is built (every image and PNG exists, every category is known) and each PNG
when it is read (8-bit RGB, its ids equal the JSON's): a problem raises an error naming the file and the id.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pfcn.data.transforms import RandomFlip, ResizeShortestEdge, Transform, apply_transforms
from pfcn.image_io import IMAGE_SUFFIXES, read_image
from pfcn.metadata import CategoryMeta

__all__ = [
    "IGNORE_LABEL",
    "IMAGE_FORMATS",
    "PanopticDataError",
    "PanopticDataset",
    "PanopticRecord",
    "ids_from_rgb",
    "panoptic_targets",
    "read_panoptic_png",
]

IGNORE_LABEL = 255  # stuff-head label of void and crowd pixels (detectron2's ignore value)
IMAGE_FORMATS = ("BGR", "RGB")  # cfg.INPUT.FORMAT values the pipeline can produce
MAX_SEGMENT_ID = 256**3 - 1  # largest id an RGB PNG can hold
_MAX_LISTED = 5  # how many offending items an error message spells out


class PanopticDataError(ValueError):
    """The panoptic annotation files disagree with each other or with the format."""


@dataclass(frozen=True)
class PanopticRecord:
    """One image of the dataset, as written in the JSON (no transforms, original size).

    Attributes:
        file_name: path of the photograph.
        pan_seg_file_name: path of the panoptic PNG.
        image_id: the JSON's image id (int or str, as written).
        segments_info: the JSON's segments, unchanged (``category_id`` is the dataset id).
        height, width: from the JSON ``images`` entry, or None when the JSON does not say.
    """

    file_name: str
    pan_seg_file_name: str
    image_id: int | str
    segments_info: tuple[dict[str, Any], ...]
    height: int | None = None
    width: int | None = None


def _listed(items: Sequence[str]) -> str:
    head = "; ".join(items[:_MAX_LISTED])
    return head + (f"; ... ({len(items)} in all)" if len(items) > _MAX_LISTED else "")


def _known_ids(segments: Iterable[dict[str, Any]]) -> np.ndarray:
    """Sorted segment ids of an image with 0 (void) first: int64 [K + 1]."""
    return np.array(sorted({0} | {int(s["id"]) for s in segments}), dtype=np.int64)


def _slot_map(ids: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each pixel's id in ``known`` (a binary search: far cheaper than np.unique's sort of all
    pixels), and where the id is not in ``known`` at all. Returns (int64 [H, W], bool [H, W])."""
    slots = np.searchsorted(known, ids)
    np.minimum(slots, len(known) - 1, out=slots)
    return slots, known[slots] != ids


def _few(values: np.ndarray) -> list[int]:
    """Up to 10 distinct values, for error messages."""
    return np.unique(values).tolist()[:10]


def ids_from_rgb(rgb: np.ndarray) -> np.ndarray:
    """Segment ids of a panoptic PNG's pixels: R + 256*G + 256^2*B, as int32 [H, W]."""
    rgb = rgb.astype(np.int32, copy=False)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a panoptic PNG as an int32 [H, W] id map; anything but 8-bit RGB is an error naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such panoptic PNG")
    try:
        with Image.open(path) as img:
            args = img.tile[0].args if img.tile else None
            rawmode = args if isinstance(args, str) else (args[0] if args else img.mode)
            if img.mode != "RGB" or rawmode not in ("RGB", "RGBX"):
                raise PanopticDataError(
                    f"{path}: panoptic PNG must be 8-bit RGB (segment id = R + 256*G + 256^2*B), got PIL mode "
                    f"{img.mode!r} (raw {rawmode!r})")
            rgb = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise PanopticDataError(f"{path}: cannot decode panoptic PNG ({e})") from e
    return ids_from_rgb(rgb)


def panoptic_targets(ids: np.ndarray, segments_info: Iterable[dict[str, Any]], thing_index: dict[int, int],
                     stuff_index: dict[int, int]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """PanopticFCN's training targets from a (transformed) id map.

    Args:
        ids: [H, W] int segment ids, 0 = void.
        segments_info: the JSON segments of the image (dataset category ids).
        thing_index: thing dataset id -> contiguous thing index 0..T-1.
        stuff_index: stuff dataset id -> stuff-head label 1..S-1.
    Returns:
        instances: {"masks": bool [N, H, W], "classes": int64 [N], "boxes": float32 [N, 4] xyxy}, one per non-crowd
            thing segment still visible (a resize can erase a tiny one; detectron2 drops empty instances too);
            boxes span the mask's pixels, ``x1 = max x + 1`` as detectron2's ``BitMasks.get_bounding_boxes``.
        sem_seg: int64 [H, W] stuff-head labels (0 things, 1..S-1 stuff, 255 void and crowd).
    """
    h, w = ids.shape
    segments = list(segments_info)
    known = _known_ids(segments)
    slots, unknown = _slot_map(ids, known)
    if unknown.any():
        raise PanopticDataError(f"id map holds segment ids {_few(ids[unknown])} that segments_info lacks")
    counts = np.bincount(slots.ravel(), minlength=len(known))
    labels = np.full(len(known), IGNORE_LABEL, dtype=np.int64)  # slot 0 is void
    masks, classes, boxes = [], [], []
    for seg in segments:
        k = int(np.searchsorted(known, int(seg["id"])))
        cat = int(seg["category_id"])
        crowd = bool(seg.get("iscrowd", 0))
        if counts[k] == 0 or crowd:
            continue  # erased by a resize; or a crowd: 255 in the stuff head and not an instance
        if cat in thing_index:
            labels[k] = 0
            mask = slots == k
            cols = np.flatnonzero(mask.any(axis=0))
            rows = np.flatnonzero(mask.any(axis=1))
            masks.append(mask)
            classes.append(thing_index[cat])
            boxes.append((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))
        elif cat in stuff_index:
            labels[k] = stuff_index[cat]
        else:
            raise PanopticDataError(f"segment id {seg['id']}: category_id {cat} is neither a known thing nor stuff")
    sem_seg = torch.from_numpy(labels[slots])
    instances = {
        "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool),
        "classes": torch.tensor(classes, dtype=torch.int64),
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
    }
    return instances, sem_seg


class _DirListing:
    """Names present in a folder, listed once: checking 100k files one stat at a time is slow on network disks."""

    def __init__(self) -> None:
        self._cache: dict[Path, set[str]] = {}

    def exists(self, folder: Path, name: str) -> bool:
        if "/" in name or os.sep in name:
            return (folder / name).is_file()
        if folder not in self._cache:
            self._cache[folder] = set(os.listdir(folder)) if folder.is_dir() else set()
        return name in self._cache[folder]


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such panoptic JSON")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PanopticDataError(f"{path}: cannot read panoptic JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise PanopticDataError(f"{path}: not a COCO panoptic JSON (no 'annotations' list)")
    return data


def _check_meta(meta: CategoryMeta, categories: Sequence[dict[str, Any]], json_path: Path) -> None:
    """A given CategoryMeta must know every JSON category with the same thing/stuff kind."""
    things, stuff = set(meta.thing_ids), set(meta.stuff_ids)
    for cat in categories:
        cid, isthing = int(cat["id"]), bool(cat.get("isthing", 0))
        if cid not in things | stuff:
            raise PanopticDataError(f"{json_path}: category id {cid} ({cat.get('name', '?')}) is not in the "
                                    f"given category metadata")
        if isthing != (cid in things):
            raise PanopticDataError(f"{json_path}: category id {cid} has isthing={int(isthing)} but the given "
                                    f"category metadata calls it {'a thing' if cid in things else 'stuff'}")


class PanopticDataset(torch.utils.data.Dataset):
    """Samples of a COCO-panoptic dataset in the pfcn sample-dict format (see the team brief / ``__getitem__``).

    Args:
        image_root: folder of the photographs.
        panoptic_root: folder of the panoptic PNGs.
        panoptic_json: the COCO panoptic JSON.
        meta: category order of the model's heads; default: the JSON's categories in their order. When given,
            every JSON category must be in it.
        transforms: augmentations applied to image and id map (`pfcn.data.transforms`); default none.
        image_format: channel order of ``sample["image"]``, "BGR" (detectron2's default) or "RGB".
        with_targets: read the PNG and add ``instances`` / ``sem_seg``; False gives image-only samples
            (detectron2's test-time mapper does the same).
        name: shown in error messages.
    """

    def __init__(self, image_root: str | Path, panoptic_root: str | Path, panoptic_json: str | Path, *,
                 meta: CategoryMeta | None = None, transforms: Sequence[Transform] = (),
                 image_format: str = "BGR", with_targets: bool = True, name: str | None = None) -> None:
        self.image_root, self.panoptic_root = Path(image_root), Path(panoptic_root)
        self.panoptic_json = Path(panoptic_json)
        self.name = name or str(self.panoptic_json)
        data = _load_json(self.panoptic_json)
        if meta is None:
            if not isinstance(data.get("categories"), list):
                raise PanopticDataError(f"{self.panoptic_json}: no 'categories' list and no category metadata given")
            meta = CategoryMeta.from_categories(data["categories"], source=str(self.panoptic_json))
        elif isinstance(data.get("categories"), list):
            _check_meta(meta, data["categories"], self.panoptic_json)
        self.meta = meta
        self.records: list[PanopticRecord] = self._parse(data)
        self._check_files()
        self.transforms: tuple[Transform, ...] = ()
        self.image_format = "BGR"
        self.with_targets = True
        self._configure(transforms, image_format, with_targets)

    # ---- construction helpers -------------------------------------------------------------------------------
    def _configure(self, transforms: Sequence[Transform], image_format: str, with_targets: bool) -> None:
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format (INPUT.FORMAT) must be one of {IMAGE_FORMATS}, got {image_format!r}")
        self.transforms = tuple(transforms)
        self.image_format = image_format
        self.with_targets = bool(with_targets)
        self._thing_index = {cid: i for i, cid in enumerate(self.meta.thing_ids)}
        self._stuff_index = {cid: i + 1 for i, cid in enumerate(self.meta.stuff_ids)}

    def _parse(self, data: dict[str, Any]) -> list[PanopticRecord]:
        src = self.panoptic_json
        images: dict[Any, dict[str, Any]] = {}
        for img in data.get("images") or []:
            if "id" not in img:
                raise PanopticDataError(f"{src}: an 'images' entry has no 'id': {img}")
            if img["id"] in images:
                raise PanopticDataError(f"{src}: image id {img['id']!r} appears twice in 'images'")
            images[img["id"]] = img
        known = set(self.meta.thing_ids) | set(self.meta.stuff_ids)
        records, seen = [], set()
        for n, ann in enumerate(data["annotations"]):
            for key in ("image_id", "file_name", "segments_info"):
                if key not in ann:
                    raise PanopticDataError(f"{src}: annotation #{n} has no {key!r} key")
            image_id, png_name = ann["image_id"], str(ann["file_name"])
            where = f"{src}: image_id {image_id!r} ({png_name})"
            if image_id in seen:
                raise PanopticDataError(f"{where}: a second annotation for the same image")
            seen.add(image_id)
            if images and image_id not in images:
                raise PanopticDataError(f"{where}: no entry with this id in 'images'")
            ids: set[int] = set()
            for seg in ann["segments_info"]:
                if "id" not in seg or "category_id" not in seg:
                    raise PanopticDataError(f"{where}: a segment lacks 'id' or 'category_id': {seg}")
                sid, cat = int(seg["id"]), int(seg["category_id"])
                if not 0 < sid <= MAX_SEGMENT_ID:
                    raise PanopticDataError(f"{where}: segment id {sid} outside 1..{MAX_SEGMENT_ID}")
                if sid in ids:
                    raise PanopticDataError(f"{where}: segment id {sid} appears twice in segments_info")
                ids.add(sid)
                if cat not in known:
                    raise PanopticDataError(f"{where}: segment id {sid} has unknown category_id {cat} "
                                            f"(not among the {len(known)} categories)")
                if int(seg.get("iscrowd", 0)) not in (0, 1):
                    raise PanopticDataError(f"{where}: segment id {sid} has iscrowd={seg['iscrowd']!r} (0 or 1)")
            info = images.get(image_id, {})
            image_name = info.get("file_name") or self._image_name_from_png(png_name)
            records.append(PanopticRecord(
                file_name=str(self.image_root / image_name),
                pan_seg_file_name=str(self.panoptic_root / png_name),
                image_id=image_id,
                segments_info=tuple(dict(s) for s in ann["segments_info"]),
                height=int(info["height"]) if "height" in info else None,
                width=int(info["width"]) if "width" in info else None,
            ))
        unannotated = [f"image_id {k!r} ({v.get('file_name', '?')})" for k, v in images.items() if k not in seen]
        if unannotated:
            raise PanopticDataError(f"{src}: images without a panoptic annotation: {_listed(unannotated)}")
        if not records:
            raise PanopticDataError(f"{src}: no annotations")
        return records

    def _image_name_from_png(self, png_name: str) -> str:
        """Without an ``images`` list: the photo shares the PNG's stem (detectron2 assumes .jpg; we look)."""
        stem = os.path.splitext(png_name)[0]
        for suffix in IMAGE_SUFFIXES:
            if (self.image_root / f"{stem}{suffix}").is_file():
                return f"{stem}{suffix}"
        return f"{stem}.jpg"  # reported as missing by _check_files

    def _check_files(self) -> None:
        for kind, folder in (("image", self.image_root), ("panoptic PNG", self.panoptic_root)):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: no such {kind} folder (dataset {self.name})")
        listing = _DirListing()
        missing = []
        for rec in self.records:
            for kind, path in (("image", rec.file_name), ("panoptic PNG", rec.pan_seg_file_name)):
                p = Path(path)
                if not listing.exists(p.parent, p.name):
                    missing.append(f"{kind} {path} (image_id {rec.image_id!r})")
        if missing:
            raise FileNotFoundError(f"{self.name}: missing files: {_listed(missing)}")

    # ---- views -----------------------------------------------------------------------------------------------
    def with_transforms(self, transforms: Sequence[Transform], image_format: str | None = None,
                        with_targets: bool | None = None) -> "PanopticDataset":
        """A view of the same records with other transforms / channel order / targets (records are shared)."""
        view = copy.copy(self)
        view._configure(transforms, self.image_format if image_format is None else image_format,
                        self.with_targets if with_targets is None else with_targets)
        return view

    @classmethod
    def concat(cls, datasets: Sequence["PanopticDataset"]) -> "PanopticDataset":
        """One dataset holding the records of several with the same categories (cfg.DATASETS.TRAIN lists)."""
        if not datasets:
            raise ValueError("PanopticDataset.concat: no datasets")
        first = datasets[0]
        for d in datasets[1:]:
            if (d.meta.thing_ids, d.meta.stuff_ids) != (first.meta.thing_ids, first.meta.stuff_ids):
                raise PanopticDataError(f"cannot concatenate {first.name} and {d.name}: different categories")
        out = copy.copy(first)
        out.records = [r for d in datasets for r in d.records]
        out.name = " + ".join(d.name for d in datasets)
        return out

    # ---- per-image facts, without decoding pixels -------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def gt_record(self, index: int) -> PanopticRecord:
        """The JSON facts of one image (original size, no transforms), e.g. for evaluation."""
        return self.records[index]

    def has_instances(self, index: int) -> bool:
        """True if the image has a non-crowd thing segment (detectron2's FILTER_EMPTY_ANNOTATIONS criterion)."""
        return any(int(s["category_id"]) in self._thing_index and not s.get("iscrowd", 0)
                   for s in self.records[index].segments_info)

    def image_size(self, index: int) -> tuple[int, int]:
        """(height, width) of the original image: from the JSON, else from the file header (EXIF-aware)."""
        rec = self.records[index]
        if rec.height is not None and rec.width is not None:
            return rec.height, rec.width
        try:
            with Image.open(rec.file_name) as img:
                w, h = img.size
                orientation = img.getexif().get(0x0112, 1)
        except (UnidentifiedImageError, OSError) as e:
            raise PanopticDataError(f"{rec.file_name}: cannot read the image header ({e})") from e
        return (w, h) if orientation in (5, 6, 7, 8) else (h, w)

    # ---- samples ---------------------------------------------------------------------------------------------
    def read_ids(self, index: int) -> np.ndarray:
        """The validated id map of one image at its original size: int32 [H, W].

        Raises PanopticDataError when the PNG holds an id the JSON lacks or the JSON lists a segment absent from
        the PNG (panopticapi's ``pq_compute`` rejects both), naming the file and the ids.
        """
        rec = self.records[index]
        ids = read_panoptic_png(rec.pan_seg_file_name)
        known = _known_ids(rec.segments_info)
        slots, unknown = _slot_map(ids, known)
        extra = _few(ids[unknown]) if unknown.any() else []
        counts = np.bincount(slots.ravel(), minlength=len(known))
        absent = [int(known[k]) for k in range(1, len(known)) if counts[k] == 0]
        if extra:
            raise PanopticDataError(f"{rec.pan_seg_file_name} (image_id {rec.image_id!r}): segment ids {extra} are "
                                    f"in the PNG but not in the JSON's segments_info")
        if absent:
            raise PanopticDataError(f"{rec.pan_seg_file_name} (image_id {rec.image_id!r}): segment ids {absent} "
                                    f"are in the JSON's segments_info but not in the PNG")
        return ids

    def _needs_rng(self) -> bool:
        for t in self.transforms:
            if isinstance(t, RandomFlip) and 0.0 < t.prob < 1.0:
                return True
            if isinstance(t, ResizeShortestEdge) and len(set(t.short_edge_lengths)) > 1:
                return True
        return False

    def sample(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The sample dict of one image, drawing any random augmentation from ``rng``.

        Returns:
            {"image": uint8 [3, H', W'] in ``image_format`` order, "height", "width": original size,
             "file_name", "image_id", and with targets "instances" (masks bool [N, H', W'], classes int64 [N],
             boxes float32 [N, 4] xyxy) and "sem_seg" (int64 [H', W'])}.
        """
        rec = self.records[index]
        image = read_image(rec.file_name)
        height, width = image.shape[:2]
        ids = None
        if self.with_targets:
            ids = self.read_ids(index)
            if ids.shape != (height, width):
                raise PanopticDataError(f"{rec.pan_seg_file_name} is {ids.shape[1]}x{ids.shape[0]} but its image "
                                        f"{rec.file_name} is {width}x{height} (image_id {rec.image_id!r})")
        if rng is None and self._needs_rng():
            rng = np.random.default_rng()
        image, ids = apply_transforms(image, ids, self.transforms, rng)
        if self.image_format == "BGR":
            image = image[:, :, ::-1]
        out: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
            "file_name": rec.file_name,
            "image_id": rec.image_id,
        }
        if ids is not None:
            out["instances"], out["sem_seg"] = panoptic_targets(ids, rec.segments_info, self._thing_index,
                                                                self._stuff_index)
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        """``sample(index)``; random transforms then draw from fresh entropy (use the loaders for reproducibility)."""
        return self.sample(index)

    def __repr__(self) -> str:
        return (f"PanopticDataset({self.name!r}, {len(self)} images, {self.meta.num_things} things, "
                f"{len(self.meta.stuff_ids)} stuff, format={self.image_format})")
