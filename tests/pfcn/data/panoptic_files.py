"""Small hand-made COCO-panoptic datasets written to a temporary folder, and a copy of the real sample."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SAMPLE = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "coco_panoptic_sample"
SAMPLE_IMAGES = SAMPLE / "input_images"
SAMPLE_PNGS = SAMPLE / "panoptic_examples"
SAMPLE_JSON = SAMPLE / "panoptic_examples.json"

# Categories of the hand-made sets: non-contiguous ids so that ids and indices cannot be confused.
CATEGORIES = [
    {"id": 3, "name": "a", "isthing": 1, "color": [200, 0, 0]},
    {"id": 7, "name": "b", "isthing": 1, "color": [0, 200, 0]},
    {"id": 20, "name": "sky", "isthing": 0, "color": [0, 0, 200]},
    {"id": 31, "name": "grass", "isthing": 0, "color": [0, 120, 0]},
]


def rgb_from_ids(ids: np.ndarray) -> np.ndarray:
    ids = ids.astype(np.int64)
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def write_dataset(root: Path, images: list[dict[str, Any]], categories: list[dict[str, Any]] = CATEGORIES) -> Path:
    """Write images/, panoptic/ and panoptic.json under ``root``.

    Each entry of ``images``: {"ids": int [H, W] id map, "segments": segments_info list,
    optional "image": uint8 [H, W, 3]} (default: a colour derived from the ids).
    """
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "panoptic").mkdir(parents=True, exist_ok=True)
    js: dict[str, Any] = {"images": [], "annotations": [], "categories": categories}
    for i, entry in enumerate(images):
        ids = np.asarray(entry["ids"])
        image = entry.get("image")
        if image is None:
            image = ((ids[:, :, None] * np.array([37, 91, 53])) % 251).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"{i:04d}.png")
        Image.fromarray(rgb_from_ids(ids)).save(root / "panoptic" / f"{i:04d}.png")
        h, w = ids.shape
        js["images"].append({"id": 100 + i, "file_name": f"{i:04d}.png", "height": h, "width": w})
        js["annotations"].append({"image_id": 100 + i, "file_name": f"{i:04d}.png", "segments_info": entry["segments"]})
    (root / "panoptic.json").write_text(json.dumps(js))
    return root


def seg(sid: int, cat: int, crowd: int = 0) -> dict[str, Any]:
    return {"id": sid, "category_id": cat, "iscrowd": crowd}


def simple_image(h: int = 20, w: int = 30) -> dict[str, Any]:
    """Sky on top, grass below, a thing of class 3 and one of class 7, a crowd of class 3, and void."""
    ids = np.zeros((h, w), np.int64)
    ids[: h // 2] = 1000  # sky
    ids[h // 2:] = 2000  # grass
    ids[2:6, 3:9] = 11  # thing a
    ids[12:18, 20:27] = 12  # thing b
    ids[13:16, 2:6] = 13  # crowd a
    ids[0, :] = 0  # void row
    return {"ids": ids, "segments": [seg(1000, 20), seg(2000, 31), seg(11, 3), seg(12, 7), seg(13, 3, crowd=1)]}


def copy_sample(dst: Path) -> Path:
    """A writable copy of the real sample (kept outside the repository, under pytest's tmp_path)."""
    shutil.copytree(SAMPLE, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    dst.chmod(0o755)
    return dst
