"""Random COCO-panoptic sets written to disk, for cross-checking PQ against panopticapi and hotcoco.

Images are painted with random rectangles and discs (so segments overlap, occlude and split), with VOID areas,
crowd segments (several per category, which exercises panopticapi's "last crowd segment" rule) and random 24-bit
segment ids. Predictions are perturbed copies of the GT: shifted, relabelled, merged, dropped and with extra segments,
so IoUs spread on both sides of 0.5.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pfcn.evaluation.panoptic_format import id2rgb

if TYPE_CHECKING:
    from pfcn.evaluation.panoptic_format import PanopticGroundTruth
    from pfcn.result import PanopticResult

SAMPLE = Path(__file__).resolve().parents[4] / "shared" / "data" / "coco_panoptic_sample"

CATEGORIES = ([{"id": i, "name": f"thing{i}", "isthing": 1, "color": [i * 20, 0, 0]} for i in (1, 2, 3, 5)]
              + [{"id": i, "name": f"stuff{i}", "isthing": 0, "color": [0, i * 2, 0]} for i in (7, 8, 11)]
              + [{"id": 12, "name": "never", "isthing": 1, "color": [1, 2, 3]}])  # a category with no segments
THINGS = [1, 2, 3, 5]
STUFF = [7, 8, 11]


def _shape_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    if rng.random() < 0.5:
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        return (yy >= y0) & (yy < y0 + rng.integers(2, h)) & (xx >= x0) & (xx < x0 + rng.integers(2, w))
    cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(2, max(3, min(h, w) // 2))
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def _fresh_id(rng: np.random.Generator, used: set[int]) -> int:
    while True:
        i = int(rng.integers(1, 256**3))
        if i not in used:
            used.add(i)
            return i


def _label_map(rng: np.random.Generator, h: int, w: int, n: int, crowd_p: float) -> tuple[np.ndarray, list[dict]]:
    """Paint n random segments (stuff first as background, then things) and leave some VOID."""
    ids = np.zeros((h, w), np.int64)
    used: set[int] = set()
    segs: dict[int, dict[str, Any]] = {}
    for k in range(n):
        isthing = k >= n // 3
        cat = int(rng.choice(THINGS if isthing else STUFF))
        sid = _fresh_id(rng, used)
        ids[_shape_mask(rng, h, w)] = sid
        segs[sid] = {"id": sid, "category_id": cat, "iscrowd": int(isthing and rng.random() < crowd_p)}
    ids[_shape_mask(rng, h, w) & (rng.random() < 0.5)] = 0  # a VOID patch, sometimes
    return ids, _segments_present(ids, segs)


def _segments_present(ids: np.ndarray, segs: dict[int, dict[str, Any]]) -> list[dict]:
    out = []
    for sid in segs:
        m = ids == sid
        area = int(m.sum())
        if area == 0:
            continue
        ys, xs = np.nonzero(m)
        out.append(dict(segs[sid], area=area, bbox=[int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                                     int(ys.max() - ys.min() + 1)]))
    return out


def perturb(rng: np.random.Generator, gt_ids: np.ndarray, gt_segs: list[dict]) -> tuple[np.ndarray, list[dict]]:
    """A plausible prediction: the GT shifted, with segments relabelled, merged, dropped and invented."""
    h, w = gt_ids.shape
    ids = np.roll(gt_ids, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
    used = set(int(s["id"]) for s in gt_segs)
    segs = {}
    remap = {}
    for s in gt_segs:
        r = rng.random()
        cat = s["category_id"]
        if r < 0.1:
            cat = int(rng.choice(THINGS + STUFF))  # wrong class
        new_id = _fresh_id(rng, used)
        if r > 0.9 and remap:
            new_id = list(remap.values())[-1]  # merged into the previous segment
        remap[int(s["id"])] = new_id
        segs.setdefault(new_id, {"id": new_id, "category_id": cat})
    out = np.zeros_like(ids)
    for old, new in remap.items():
        out[ids == old] = new
    for _ in range(int(rng.integers(0, 4))):  # invented segments
        sid = _fresh_id(rng, used)
        out[_shape_mask(rng, h, w)] = sid
        segs[sid] = {"id": sid, "category_id": int(rng.choice(THINGS + STUFF))}
    if rng.random() < 0.3:
        out[_shape_mask(rng, h, w)] = 0  # predicted VOID
    return out, [{k: v for k, v in s.items() if k in ("id", "category_id")} for s in _segments_present(out, segs)]


def write_set(root: Path, name: str, images: list[tuple[Any, np.ndarray, list[dict]]]) -> tuple[Path, Path]:
    """Write images [(image_id, ids, segments)] as root/name.json + root/name/*.png; return (json, folder)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    anns, infos = [], []
    for image_id, ids, segs in images:
        fname = f"{image_id}.png"
        Image.fromarray(id2rgb(ids)).save(folder / fname)
        anns.append({"image_id": image_id, "file_name": fname, "segments_info": segs})
        infos.append({"id": image_id, "file_name": f"{image_id}.jpg", "height": ids.shape[0], "width": ids.shape[1]})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": infos, "annotations": anns, "categories": CATEGORIES}))
    return path, folder


def random_sets(root: Path, seed: int, num_images: int = 12, size: tuple[int, int] = (48, 64),
                crowd_p: float = 0.3) -> tuple[Path, Path, Path, Path]:
    """A random GT set and a prediction set for it; returns (gt_json, gt_folder, pred_json, pred_folder)."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for i in range(num_images):
        h, w = size
        gt_ids, gt_segs = _label_map(rng, h, w, int(rng.integers(3, 14)), crowd_p)
        pred_ids, pred_segs = perturb(rng, gt_ids, gt_segs)
        gts.append((i + 1, gt_ids, gt_segs))
        preds.append((i + 1, pred_ids, pred_segs))
    gt_json, gt_folder = write_set(root, "gt", gts)
    pred_json, pred_folder = write_set(root, "pred", preds)
    return gt_json, gt_folder, pred_json, pred_folder


def perfect_results(gt: "PanopticGroundTruth") -> list["PanopticResult"]:
    """PanopticResults that reproduce the ground truth: its PNG ids and segments, one instance per non-crowd thing
    segment (score 1), and the stuff-head map with ignored pixels set to 0 (they are not scored)."""
    from pfcn.evaluation.semantic_miou import IGNORE_LABEL, semantic_from_panoptic
    from pfcn.result import PanopticResult

    meta = gt.meta
    out = []
    for image_id in gt.image_ids:
        g = gt.load(image_id)
        table = g.image.table
        things = [k for k in range(len(table)) if meta.isthing(int(table.category_ids[k])) and not table.iscrowd[k]]
        masks = (g.image.ids[None] == table.ids[things].astype(np.uint32)[:, None, None]) if things else \
            np.zeros((0,) + g.image.shape, bool)
        sem = semantic_from_panoptic(g.image, meta.stuff_ids, meta.thing_ids).astype(np.int64)
        sem[sem == IGNORE_LABEL] = 0
        cats = table.category_ids[things].astype(np.int64)
        out.append(PanopticResult(
            panoptic=g.image.ids.astype(np.int32),
            segments_info=[{"id": int(s["id"]), "category_id": int(s["category_id"]),
                            "isthing": meta.isthing(int(s["category_id"])), "score": 1.0, "area": int(s["area"]),
                            "bbox": s.get("bbox", [0, 0, 0, 0])} for s in g.segments],
            instance_masks=masks, instance_scores=np.ones(len(things), np.float32),
            instance_classes=np.array([meta.thing_ids.index(int(c)) for c in cats], dtype=np.int64),
            instance_category_ids=cats, semantic=sem, file_name=gt.image_info(image_id).get("file_name"),
            image_id=image_id))
    return out
