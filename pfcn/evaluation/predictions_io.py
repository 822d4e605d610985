"""Predictions on disk: COCO panoptic format, plus an optional pfcn extension for AP and mIoU.

Layout written by `write_panoptic_predictions` / `PanopticPredictionWriter` (and read by `PanopticPredictions`)::

    OUT/panoptic.json         COCO panoptic results: {"annotations": [{image_id, file_name, segments_info}],
                              "categories": [...], and the optional extension keys below}
    OUT/panoptic/<stem>.png   RGB id PNGs (id = R + 256 G + 256^2 B, 0 = VOID)
    OUT/instances.json        optional: COCO results format [{image_id, category_id, segmentation (RLE), score}]
    OUT/semantic/<stem>.png   optional: 8-bit grayscale stuff-head maps (0 = things, 1..S-1 = stuff, see pfcn.metadata)

The extension is announced by two keys in panoptic.json, both paths relative to the JSON's folder:
``"instances_file": "instances.json"`` and ``"semantic_folder": "semantic"``. A plain COCO panoptic results JSON
(any backend, any tool) has neither and is scored for PQ only; one that has them is also scored for mask AP and mIoU.
As in panopticapi, the PNG folder of ``X.json`` is ``X/``.

Files are written atomically (temporary file, then ``os.replace``) and panoptic.json last, so a folder with a
panoptic.json is complete.

Image ids are COCO's: integers. `image_ids_for` gives pfcn-predict's inputs the ids of a ground-truth JSON (so
panopticapi, hotcoco and pycocotools score the folder directly) or, without one, sequential ids in file-name order.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from pfcn.evaluation.instance_ap import encode_masks, instance_results_from_json
from pfcn.evaluation.panoptic_format import (PanopticFormatError, PanopticImage, id2rgb, load_json,
                                             normalize_categories, panoptic_image, read_panoptic_png)

__all__ = ["PANOPTIC_JSON", "PanopticPredictionWriter", "write_panoptic_predictions", "PanopticPredictions",
           "atomic_write_text", "to_jsonable", "image_ids_for"]

PANOPTIC_JSON = "panoptic.json"
INSTANCES_JSON = "instances.json"
SEMANTIC_DIR = "semantic"


def to_jsonable(value: Any) -> Any:
    """Numpy scalars/arrays to Python, NaN/inf to None (JSON has no NaN), dict keys to str."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file via a temporary sibling and ``os.replace``, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def _discard(tmp: Path) -> None:
    """Remove a temporary file after a failed write (itself best effort: the folder may be unwritable)."""
    try:
        tmp.unlink(missing_ok=True)
    except OSError:
        pass


def _atomic_save_png(path: Path, array: np.ndarray) -> None:
    """Save a uint8 [H, W, 3] (RGB) or [H, W] (grayscale) array as PNG, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.png")
    try:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        _discard(tmp)
        raise


def image_ids_for(paths: Sequence[Path], gt_json: str | Path | None = None) -> tuple[dict[Path, int], dict[Path, str]]:
    """COCO image ids (integers) for image files: ``(ids, not_found)``.

    With ``gt_json`` (a COCO panoptic or instances JSON) each file takes the id of the ``images`` entry with its file
    name (else of the entry or panoptic annotation with its stem); a file the JSON does not list goes to
    ``not_found`` with the reason. Without one, ids are 1, 2, ... in the order of the file names (then paths), so the
    same inputs always get the same ids.
    """
    if gt_json is None:
        ordered = sorted(dict.fromkeys(Path(p) for p in paths), key=lambda p: (p.name, str(p)))
        return {p: i for i, p in enumerate(ordered, start=1)}, {}
    gt_json = Path(gt_json)
    data = load_json(gt_json, "ground-truth JSON")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise PanopticFormatError(f"{gt_json}: a COCO JSON with an 'images' list is needed to give image ids")
    by_name: dict[str, int] = {}
    by_stem: dict[str, int] = {}
    for i, entry in enumerate(data["images"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int) or isinstance(entry.get("id"), bool):
            raise PanopticFormatError(f"{gt_json}: images[{i}] has no integer 'id'")
        name = Path(str(entry.get("file_name", ""))).name
        if name:
            by_name.setdefault(name, entry["id"])
            by_stem.setdefault(Path(name).stem, entry["id"])
    for ann in data.get("annotations") or []:
        if isinstance(ann, dict) and isinstance(ann.get("image_id"), int) and ann.get("file_name"):
            by_stem.setdefault(Path(str(ann["file_name"])).stem, ann["image_id"])
    ids: dict[Path, int] = {}
    not_found: dict[Path, str] = {}
    for p in paths:
        p = Path(p)
        found = by_name.get(p.name, by_stem.get(p.stem))
        if found is None:
            not_found[p] = f"not an image of {gt_json} (no 'images' entry named {p.name} or {p.stem}.*)"
        else:
            ids[p] = found
    return ids, not_found


def _png_name(image_id: Any, file_name: str | None) -> str:
    if file_name:
        return Path(file_name).stem + ".png"
    if image_id is None:
        raise ValueError("a prediction needs an image_id or a file_name to be written")
    return f"{image_id}.png"


class PanopticPredictionWriter:
    """Streams predictions to disk one image at a time; `close` writes the JSON files.

    Args:
        out_dir: the output folder (layout in the module docstring).
        categories: the dataset's categories (COCO list or `CategoryMeta`), copied into panoptic.json.
        instances: also write instances.json (mask AP inputs).
        semantic: also write semantic/<stem>.png (mIoU inputs).
    """

    def __init__(self, out_dir: str | Path, categories: Any, *, instances: bool = True, semantic: bool = True):
        self.out_dir = Path(out_dir)
        self.categories = list(normalize_categories(categories).values())
        self.with_instances = instances
        self.with_semantic = semantic
        self.annotations: list[dict[str, Any]] = []
        self.instances: list[dict[str, Any]] = []
        self._names: set[str] = set()
        (self.out_dir / "panoptic").mkdir(parents=True, exist_ok=True)

    def __enter__(self) -> "PanopticPredictionWriter":
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            self.close()

    def add(self, result: Any, image_id: Any = None, file_name: str | None = None,
            instance_rles: list[dict[str, Any]] | None = None) -> None:
        """Write one `pfcn.result.PanopticResult` (or an object with the same fields).

        ``image_id``/``file_name`` override the result's own (they must match the ground truth's image ids);
        ``instance_rles`` are the instance masks already encoded (`encode_masks`), to encode them only once.
        """
        image_id = result.image_id if image_id is None else image_id
        name = _png_name(image_id, file_name or result.file_name)
        if name in self._names:
            raise ValueError(f"two predictions would both be written to {name} (image_id {image_id!r})")
        self._names.add(name)
        panoptic = np.asarray(result.panoptic)
        _atomic_save_png(self.out_dir / "panoptic" / name, id2rgb(panoptic))
        segments = [{"id": int(s["id"]), "category_id": int(s["category_id"]), "iscrowd": 0,
                     **{k: to_jsonable(s[k]) for k in ("isthing", "score", "area", "bbox") if k in s}}
                    for s in result.segments_info]
        self.annotations.append({"image_id": image_id, "file_name": name, "segments_info": segments})
        if self.with_instances:
            rles = encode_masks(result.instance_masks) if instance_rles is None else instance_rles
            for rle, score, cid in zip(rles, np.asarray(result.instance_scores).tolist(),
                                       np.asarray(result.instance_category_ids).tolist()):
                self.instances.append({"image_id": image_id, "category_id": int(cid), "segmentation": rle,
                                       "score": float(score)})
        if self.with_semantic:
            sem = np.asarray(result.semantic)
            if sem.size and (sem.min() < 0 or sem.max() > 255):
                raise ValueError(f"image {image_id!r}: semantic labels {sem.min()}..{sem.max()} do not fit 8 bits")
            _atomic_save_png(self.out_dir / SEMANTIC_DIR / name, sem.astype(np.uint8))

    def entries(self) -> dict[str, list[dict[str, Any]]]:
        """The JSON entries collected so far (what a distributed rank sends to rank 0)."""
        return {"annotations": self.annotations, "instances": self.instances}

    def extend(self, entries: Mapping[str, Sequence[dict[str, Any]]]) -> None:
        """Add entries collected by another writer over the same folder (another rank)."""
        for ann in entries["annotations"]:
            if ann["file_name"] in self._names:
                raise ValueError(f"two predictions were written to {ann['file_name']}")
            self._names.add(ann["file_name"])
            self.annotations.append(ann)
        self.instances.extend(entries["instances"])

    def close(self) -> Path:
        """Write instances.json (if enabled) and then panoptic.json; return the panoptic.json path."""
        data: dict[str, Any] = {"annotations": self.annotations, "categories": self.categories}
        if self.with_instances:
            atomic_write_text(self.out_dir / INSTANCES_JSON, json.dumps(self.instances))
            data["instances_file"] = INSTANCES_JSON
        if self.with_semantic:
            (self.out_dir / SEMANTIC_DIR).mkdir(exist_ok=True)
            data["semantic_folder"] = SEMANTIC_DIR
        path = self.out_dir / PANOPTIC_JSON
        atomic_write_text(path, json.dumps(data))
        return path


def write_panoptic_predictions(results: Iterable[Any], out_dir: str | Path, categories: Any, *,
                               instances: bool = True, semantic: bool = True) -> Path:
    """Write `PanopticResult`s as out_dir/panoptic.json + out_dir/panoptic/*.png (+ the optional extension).

    Each result's ``image_id`` (and ``file_name``, for the PNG name) must be set. Returns the panoptic.json path.
    """
    with PanopticPredictionWriter(out_dir, categories, instances=instances, semantic=semantic) as writer:
        for result in results:
            writer.add(result)
    return writer.out_dir / PANOPTIC_JSON


class PanopticPredictions:
    """A prediction set on disk, from its folder or its panoptic JSON.

    Args:
        path: a folder holding panoptic.json, or a COCO panoptic results JSON (PNG folder: the path without .json).
        png_folder: override the PNG folder.
    """

    def __init__(self, path: str | Path, png_folder: str | Path | None = None):
        path = Path(path)
        self.json_path = path / PANOPTIC_JSON if path.is_dir() else path
        data = load_json(self.json_path, "predicted panoptic JSON")
        if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
            raise PanopticFormatError(f"{self.json_path}: predicted panoptic JSON has no 'annotations' list")
        self.folder = Path(png_folder) if png_folder is not None else self.json_path.with_suffix("")
        if not self.folder.is_dir():
            raise FileNotFoundError(f"{self.folder}: predicted panoptic PNG folder not found")
        self.annotations: dict[Any, dict[str, Any]] = {}
        for i, ann in enumerate(data["annotations"]):
            for key in ("image_id", "file_name", "segments_info"):
                if key not in ann:
                    raise PanopticFormatError(f"{self.json_path}: annotation #{i} has no {key!r} key")
            if ann["image_id"] in self.annotations:
                raise PanopticFormatError(f"{self.json_path}: image_id {ann['image_id']!r} is predicted twice")
            self.annotations[ann["image_id"]] = ann
        base = self.json_path.parent
        self.instances: dict[Any, list[Mapping[str, Any]]] | None = None
        if data.get("instances_file"):
            inst_path = base / data["instances_file"]
            entries = load_json(inst_path, "instance predictions JSON")
            if not isinstance(entries, list):
                raise PanopticFormatError(f"{inst_path}: expected a COCO results list")
            self.instances = instance_results_from_json(entries, str(inst_path))
            stray = [k for k in self.instances if k not in self.annotations]
            if stray:
                raise PanopticFormatError(f"{inst_path}: instances for image_id(s) {stray[:10]} "
                                          f"that {self.json_path} does not list")
        self.semantic_folder: Path | None = None
        if data.get("semantic_folder"):
            self.semantic_folder = base / data["semantic_folder"]
            if not self.semantic_folder.is_dir():
                raise FileNotFoundError(f"{self.semantic_folder}: semantic folder named by {self.json_path} not found")

    @property
    def image_ids(self) -> list[Any]:
        return list(self.annotations)

    def load_panoptic(self, image_id: Any, categories: Mapping[int, Any]) -> PanopticImage:
        """Read one image's panoptic PNG with its (checked) segments_info."""
        ann = self.annotations[image_id]
        png = self.folder / ann["file_name"]
        return panoptic_image(read_panoptic_png(png), ann["segments_info"], categories, name=str(png))

    def load_instances(self, image_id: Any) -> tuple[list[dict[str, Any]], list[float], list[int]]:
        """(RLEs, scores, category ids) of one image; empty if the instances file has none for it."""
        if self.instances is None:
            raise ValueError(f"{self.json_path} carries no instances_file")
        entries = self.instances.get(image_id, [])
        return ([dict(e["segmentation"]) for e in entries], [float(e["score"]) for e in entries],
                [int(e["category_id"]) for e in entries])

    def load_semantic(self, image_id: Any) -> np.ndarray:
        """Read one image's stuff-head map [H, W] uint8 from the semantic folder."""
        if self.semantic_folder is None:
            raise ValueError(f"{self.json_path} carries no semantic_folder")
        path = self.semantic_folder / self.annotations[image_id]["file_name"]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: semantic prediction PNG not found")
        with Image.open(path) as img:
            if img.mode != "L":
                raise PanopticFormatError(f"{path}: semantic PNG must be 8-bit grayscale (mode 'L'), got {img.mode!r}")
            return np.asarray(img)
