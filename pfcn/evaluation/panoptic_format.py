"""The COCO panoptic format as the evaluator reads it: PNG ids, segment lists, ground-truth sets.

A COCO panoptic annotation is a PNG whose pixel colour encodes a segment id (id = R + 256 G + 256^2 B, 0 = VOID)
plus a JSON ``segments_info`` list that gives each id its category. Every metric needs the two together, so this is
where they are read, paired and checked: panopticapi raises a bare KeyError (or silently miscounts) on inconsistent
files; we raise `PanopticFormatError` naming the file and the segment id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from pfcn.metadata import CategoryMeta

__all__ = [
    "VOID",
    "MAX_SEGMENT_ID",
    "PanopticFormatError",
    "rgb2id",
    "id2rgb",
    "read_panoptic_png",
    "load_json",
    "normalize_categories",
    "SegmentTable",
    "segment_table",
    "PanopticImage",
    "panoptic_image",
    "check_present_ids",
    "GroundTruthImage",
    "PanopticGroundTruth",
]

VOID = 0
MAX_SEGMENT_ID = 256**3 - 1  # the largest id an RGB PNG can hold


class PanopticFormatError(ValueError):
    """A panoptic PNG/JSON pair is inconsistent or malformed; the message names the file and the id."""


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """Decode an [H, W, 3] uint8 panoptic PNG into [H, W] uint32 segment ids (R + 256 G + 256^2 B)."""
    rgb = np.asarray(rgb)
    out = rgb[..., 2].astype(np.uint32)
    out <<= 8
    out |= rgb[..., 1]
    out <<= 8
    out |= rgb[..., 0]
    return out


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """Encode [H, W] integer segment ids (< 256^3) into an [H, W, 3] uint8 RGB array."""
    ids = np.asarray(ids)
    if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
        raise ValueError(f"segment ids must lie in 0..{MAX_SEGMENT_ID} to fit an RGB PNG, got {ids.min()}..{ids.max()}")
    ids = ids.astype(np.uint32)
    out = np.empty(ids.shape + (3,), dtype=np.uint8)
    out[..., 0] = ids & 255
    out[..., 1] = (ids >> 8) & 255
    out[..., 2] = (ids >> 16) & 255
    return out


def read_panoptic_png(path: str | Path) -> np.ndarray:
    """Read a COCO panoptic PNG as [H, W] uint32 segment ids.

    Raises:
        FileNotFoundError: the file does not exist.
        PanopticFormatError: it cannot be decoded or is not an 8-bit RGB image (the only mode that holds ids).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: panoptic PNG not found")
    try:
        with Image.open(path) as img:
            if img.mode != "RGB":
                raise PanopticFormatError(
                    f"{path}: panoptic PNG must be 8-bit RGB (id = R + 256*G + 256^2*B), got PIL mode {img.mode!r}")
            rgb = np.asarray(img)
    except PanopticFormatError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise PanopticFormatError(f"{path}: cannot decode panoptic PNG ({e})") from e
    return rgb2id(rgb)


def load_json(path: str | Path, what: str) -> Any:
    """Load a JSON file, turning a missing or broken file into an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise PanopticFormatError(f"{path}: {what} is not valid JSON ({e})") from e


def normalize_categories(categories: Any, source: str = "categories") -> dict[int, dict[str, Any]]:
    """Accept a COCO category list, an id->category dict or a `CategoryMeta`; return {id: {id, name, isthing}}.

    The order of the input is kept: panopticapi averages over categories in the JSON's order.
    """
    if isinstance(categories, CategoryMeta):
        categories = categories.categories()
    if isinstance(categories, Mapping):
        categories = list(categories.values())
    out: dict[int, dict[str, Any]] = {}
    for i, cat in enumerate(categories):
        if not isinstance(cat, Mapping) or "id" not in cat or "isthing" not in cat:
            raise PanopticFormatError(f"{source}: category #{i} needs 'id' and 'isthing' keys, got {cat!r}")
        cid = int(cat["id"])
        if cid in out:
            raise PanopticFormatError(f"{source}: category id {cid} appears twice")
        out[cid] = {"id": cid, "name": str(cat.get("name", cid)), "isthing": int(cat["isthing"])}
    return out


@dataclass(frozen=True)
class SegmentTable:
    """An image's ``segments_info`` as arrays, in list order.

    Attributes:
        ids: [K] int64 segment ids.
        category_ids: [K] int64 dataset category ids.
        iscrowd: [K] bool.
        json_area: [K] int64 ``area`` from the list, -1 where it has none.
    """

    ids: np.ndarray
    category_ids: np.ndarray
    iscrowd: np.ndarray
    json_area: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Position in the list of each id in ``ids`` (any shape); -1 for ids the list lacks (VOID included)."""
        ids = np.asarray(ids).astype(np.int64, copy=False)
        if len(self) == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        order = np.argsort(self.ids, kind="stable")
        sorted_ids = self.ids[order]
        pos = np.minimum(np.searchsorted(sorted_ids, ids), len(self) - 1)
        return np.where(sorted_ids[pos] == ids, order[pos], -1)


def segment_table(segments: Sequence[Mapping[str, Any]], categories: Mapping[int, Any], name: str) -> SegmentTable:
    """Check a ``segments_info`` list (integer ids in 1..2^24-1, unique, known categories) and turn it into arrays.

    Raises:
        PanopticFormatError: naming ``name`` (the PNG path) and the offending segment id.
    """
    k = len(segments)
    seg_ids = np.empty(k, dtype=np.int64)
    cats = np.empty(k, dtype=np.int64)
    crowd = np.zeros(k, dtype=bool)
    json_area = np.full(k, -1, dtype=np.int64)
    for i, seg in enumerate(segments):
        try:
            seg_ids[i] = int(seg["id"])
            cats[i] = int(seg["category_id"])
        except (KeyError, TypeError, ValueError) as e:
            raise PanopticFormatError(f"{name}: segment #{i} needs integer 'id' and 'category_id', got {seg!r}") from e
        crowd[i] = bool(seg.get("iscrowd", 0))
        if seg.get("area") is not None:
            json_area[i] = int(seg["area"])
        if cats[i] not in categories:
            raise PanopticFormatError(f"{name}: segment id {seg_ids[i]} has unknown category_id {cats[i]}")
    bad = seg_ids[(seg_ids <= VOID) | (seg_ids > MAX_SEGMENT_ID)]
    if bad.size:
        raise PanopticFormatError(f"{name}: segment id {bad[0]} is not a valid id (1..{MAX_SEGMENT_ID}; 0 is VOID)")
    uniq, counts = np.unique(seg_ids, return_counts=True)
    if np.any(counts > 1):
        raise PanopticFormatError(f"{name}: segment id {uniq[counts > 1][0]} appears twice in segments_info")
    return SegmentTable(seg_ids, cats, crowd, json_area)


@dataclass(frozen=True)
class PanopticImage:
    """A panoptic image: [H, W] uint32 segment ids (0 = VOID) and its checked segment table.

    Whether every id of the PNG is in the table (and the reverse) is checked by `check_present_ids`, which the PQ
    step calls with the ids it counts anyway, so no extra pass over the pixels is needed.
    """

    ids: np.ndarray
    table: SegmentTable
    name: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.ids.shape  # type: ignore[return-value]


def panoptic_image(ids: np.ndarray, segments: Sequence[Mapping[str, Any]], categories: Mapping[int, Any],
                   name: str) -> PanopticImage:
    """Pair an id array with its ``segments_info`` (checked) under a name used in errors."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise PanopticFormatError(f"{name}: panoptic ids must be a 2-D [H, W] array, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise PanopticFormatError(f"{name}: panoptic ids must be integers, got dtype {ids.dtype}")
    if ids.dtype != np.uint32:
        if ids.size and (ids.min() < 0 or ids.max() > MAX_SEGMENT_ID):
            raise PanopticFormatError(f"{name}: segment ids must lie in 0..{MAX_SEGMENT_ID}, "
                                      f"got {ids.min()}..{ids.max()}")
        ids = ids.astype(np.uint32)
    return PanopticImage(ids, segment_table(segments, categories, name), name)


def check_present_ids(image: PanopticImage, present: np.ndarray) -> np.ndarray:
    """Check that the ids found in the PNG (``present``, sorted unique) and the table agree; return their positions.

    Raises:
        PanopticFormatError: an id in the PNG is missing from segments_info, or a listed id has no pixel.
    """
    pos = image.table.positions(present)
    unknown = present[(pos < 0) & (present != VOID)]
    if unknown.size:
        raise PanopticFormatError(f"{image.name}: segment id(s) {_few(unknown)} are in the PNG but not in segments_info")
    if int((pos >= 0).sum()) != len(image.table):
        absent = np.setdiff1d(image.table.ids, present)
        raise PanopticFormatError(f"{image.name}: segment id(s) {_few(absent)} are in segments_info but not in the PNG")
    return pos


def _few(values: Iterable[Any], limit: int = 10) -> str:
    values = [int(v) for v in values]
    more = f" (and {len(values) - limit} more)" if len(values) > limit else ""
    return ", ".join(str(v) for v in values[:limit]) + more


@dataclass(frozen=True)
class GroundTruthImage:
    """One ground-truth image: its panoptic annotation, decoded and indexed."""

    image_id: Any
    file_name: str  # the panoptic PNG's file name
    height: int
    width: int
    segments: list[dict[str, Any]]
    image: PanopticImage


class PanopticGroundTruth:
    """A COCO panoptic ground-truth set (JSON + PNG folder), read lazily one image at a time.

    Args:
        gt_json: the panoptic JSON (``images``, ``annotations``, ``categories``).
        gt_folder: the folder of panoptic PNGs; default: the JSON path without ``.json`` (panopticapi's convention).
    """

    def __init__(self, gt_json: str | Path, gt_folder: str | Path | None = None):
        self.json_path = Path(gt_json)
        self.folder = Path(gt_folder) if gt_folder is not None else self.json_path.with_suffix("")
        data = load_json(self.json_path, "ground-truth panoptic JSON")
        for key in ("annotations", "categories"):
            if not isinstance(data, dict) or key not in data:
                raise PanopticFormatError(f"{self.json_path}: ground-truth panoptic JSON has no {key!r} list")
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: ground-truth panoptic PNG folder not found")
        self.categories = normalize_categories(data["categories"], source=str(self.json_path))
        self.meta = CategoryMeta.from_categories(data["categories"], source=str(self.json_path))
        self.images = {img["id"]: img for img in data.get("images", []) if "id" in img}
        self.annotations: dict[Any, dict[str, Any]] = {}
        for i, ann in enumerate(data["annotations"]):
            for key in ("image_id", "file_name", "segments_info"):
                if key not in ann:
                    raise PanopticFormatError(f"{self.json_path}: annotation #{i} has no {key!r} key")
            if ann["image_id"] in self.annotations:
                raise PanopticFormatError(f"{self.json_path}: image_id {ann['image_id']!r} is annotated twice")
            self.annotations[ann["image_id"]] = ann

    @property
    def image_ids(self) -> list[Any]:
        """Image ids in the JSON's annotation order."""
        return list(self.annotations)

    def image_info(self, image_id: Any) -> dict[str, Any]:
        """The ``images`` entry of an image (file_name of the photo, height, width); {} if the JSON lacks one."""
        return self.images.get(image_id, {})

    def load(self, image_id: Any) -> GroundTruthImage:
        """Read and index the ground truth of one image."""
        ann = self.annotations.get(image_id)
        if ann is None:
            raise KeyError(f"{self.json_path}: no ground-truth annotation for image_id {image_id!r}")
        png = self.folder / ann["file_name"]
        image = panoptic_image(read_panoptic_png(png), ann["segments_info"], self.categories, name=str(png))
        h, w = image.shape
        return GroundTruthImage(image_id, ann["file_name"], h, w, list(ann["segments_info"]), image)
