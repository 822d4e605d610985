"""PanopticResult: one image's panoptic prediction, and how it is read off the fixed-size outputs.

Every backend (eager PyTorch, ONNX Runtime, TensorRT) produces the same fixed-size tensors (``pfcn.inference``);
``results_from_outputs`` is the single place that unpacks them — dropping invalid slots, cropping the canvas to
each image, mapping contiguous classes to dataset ids — so all backends are judged on identical terms.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .metadata import CategoryMeta


@dataclass
class PanopticResult:
    """A panoptic prediction at the original image size.

    Attributes:
        panoptic: [H, W] int32 segment ids, 0 = void.
        segments_info: per segment {id, category_id (dataset id), isthing, score, area, bbox [x, y, w, h]}.
        instance_masks: [N, H, W] bool thing instances (score >= 0.05, top 100, before the panoptic merge).
        instance_scores: [N] float32; instance_classes: [N] contiguous thing index;
        instance_category_ids: [N] dataset ids.
        semantic: [H, W] int64 stuff-head labels (0 = things, 1..S-1 stuff).
    """

    panoptic: np.ndarray
    segments_info: list[dict[str, Any]]
    instance_masks: np.ndarray
    instance_scores: np.ndarray
    instance_classes: np.ndarray
    instance_category_ids: np.ndarray
    semantic: np.ndarray
    file_name: str | None = None
    image_id: int | str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.panoptic.shape[0])

    @property
    def width(self) -> int:
        return int(self.panoptic.shape[1])

    def summary(self, meta: CategoryMeta) -> dict[str, Any]:
        """JSON-ready description: segments with category names, and the instance list without masks."""
        return {
            "file_name": self.file_name,
            "image_id": self.image_id,
            "height": self.height,
            "width": self.width,
            "segments_info": [dict(s, name=meta.names.get(s["category_id"], str(s["category_id"])))
                              for s in self.segments_info],
            "instances": [{"category_id": int(c), "name": meta.names.get(int(c), str(c)), "score": float(s),
                           "area": int(m.sum()), "bbox": _bbox(m)}
                          for c, s, m in zip(self.instance_category_ids, self.instance_scores, self.instance_masks)],
        }


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, w, h] of a boolean mask (zeros for an empty mask)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return [0, 0, 0, 0]
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


def segment_bboxes(panoptic: np.ndarray, ids: np.ndarray) -> dict[int, list[int]]:
    """Bounding boxes of several segment ids in one pass over the id map."""
    out = {}
    ys, xs = np.nonzero(panoptic)
    values = panoptic[ys, xs]
    order = np.argsort(values, kind="stable")
    values, ys, xs = values[order], ys[order], xs[order]
    for sid in ids:
        lo, hi = np.searchsorted(values, sid, "left"), np.searchsorted(values, sid, "right")
        if hi == lo:
            out[int(sid)] = [0, 0, 0, 0]
            continue
        y, x = ys[lo:hi], xs[lo:hi]
        out[int(sid)] = [int(x.min()), int(y.min()), int(x.max() - x.min() + 1), int(y.max() - y.min() + 1)]
    return out


def results_from_outputs(outputs: Mapping[str, Any], sizes: list[tuple[int, int]], meta: CategoryMeta,
                         file_names: list[str | None] | None = None,
                         image_ids: list[int | str | None] | None = None) -> list[PanopticResult]:
    """Unpack the fixed-size outputs of one batch (torch tensors or numpy arrays) into PanopticResults.

    Args:
        outputs: the dict of ``pfcn.inference.postprocess`` (names in ``OUTPUT_NAMES``).
        sizes: original (h, w) of each image; its result is the top-left crop of the canvas.
        meta: maps contiguous classes to dataset ids.
    """
    arrays = {k: _numpy(v) for k, v in outputs.items()}
    results = []
    for b, (h, w) in enumerate(sizes):
        panoptic = arrays["panoptic"][b, :h, :w].astype(np.int32)
        valid = arrays["segment_valid"][b].astype(bool)
        ids = arrays["segment_ids"][b][valid]
        boxes = segment_bboxes(panoptic, ids)
        segments = []
        for sid, cls, isthing, score, area in zip(ids, arrays["segment_classes"][b][valid],
                                                  arrays["segment_isthing"][b][valid],
                                                  arrays["segment_scores"][b][valid],
                                                  arrays["segment_areas"][b][valid]):
            cid = meta.thing_dataset_id(int(cls)) if isthing else meta.stuff_dataset_id(int(cls))
            segments.append({"id": int(sid), "category_id": int(cid), "isthing": bool(isthing),
                             "score": float(score), "area": int(area), "bbox": boxes[int(sid)]})
        segments.sort(key=lambda s: s["id"])
        inst_valid = arrays["instance_valid"][b].astype(bool)
        classes = arrays["instance_classes"][b][inst_valid].astype(np.int64)
        results.append(PanopticResult(
            panoptic=panoptic,
            segments_info=segments,
            instance_masks=_instance_masks(arrays, b, inst_valid, h, w),
            instance_scores=arrays["instance_scores"][b][inst_valid].astype(np.float32),
            instance_classes=classes,
            instance_category_ids=np.array([meta.thing_dataset_id(int(c)) for c in classes], dtype=np.int64),
            semantic=arrays["semantic"][b, :h, :w].astype(np.int64),
            file_name=None if file_names is None else file_names[b],
            image_id=None if image_ids is None else image_ids[b],
        ))
    return results


def _instance_masks(arrays: dict[str, np.ndarray], b: int, valid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Image b's valid instance masks cropped to (h, w); [N, 0, 0] from an artifact with the "panoptic" output set
    (``pfcn.contract.OUTPUT_SETS``), which does not return them."""
    if "instance_masks" not in arrays:
        return np.zeros((int(valid.sum()), 0, 0), dtype=bool)
    return arrays["instance_masks"][b][valid][:, :h, :w].astype(bool)


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


# ----------------------------------------------------------------------------------------------- pictures
def overlay(image: np.ndarray, result: PanopticResult, meta: CategoryMeta, alpha: float = 0.55) -> Image.Image:
    """Colour each segment over the photo, outline it, and label it "name score" at its median pixel.

    Things get a per-instance shade of their category colour so that touching instances stay distinguishable. Labels
    stay inside the picture and never cover each other (`layout_labels`): on a small image a label shrinks, and one
    that still does not fit is left out, larger segments first.
    """
    base = image.astype(np.float32)
    colour = np.zeros_like(base)
    seg_mask = result.panoptic > 0
    labels = []
    for k, seg in enumerate(result.segments_info):
        m = result.panoptic == seg["id"]
        if not m.any():
            continue
        c = np.array(meta.colors.get(seg["category_id"], (200, 200, 200)), dtype=np.float32)
        if seg["isthing"]:
            c = np.clip(c * (0.75 + 0.5 * ((k * 37) % 11) / 10.0), 0, 255)
        colour[m] = c
        name = meta.names.get(seg["category_id"], str(seg["category_id"]))
        text = f"{name} {seg['score']:.2f}" if seg["isthing"] else name
        ys, xs = np.nonzero(m)
        labels.append((int(np.median(xs)), int(np.median(ys)), text, int(m.sum())))
    blended = np.where(seg_mask[..., None], base * (1 - alpha) + colour * alpha, base)
    edges = _edges(result.panoptic)
    blended[edges] = 255.0
    img = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for box, text, size in layout_labels(img.width, img.height, labels, max(11, min(img.size) // 40)):
        font = _font(size)
        left, top, _, _ = draw.textbbox((0, 0), text, font=font, anchor="lt")
        draw.rectangle(box, fill=(0, 0, 0))
        draw.text((box[0] + _PAD_X - left, box[1] + _PAD_Y - top), text, fill=(255, 255, 255), font=font,
                  anchor="lt")
    return img


_PAD_X, _PAD_Y = 2, 1  # black margin around a label's text
_MIN_FONT = 7


def layout_labels(width: int, height: int, labels: list[tuple[int, int, str, int]],
                  size: int) -> list[tuple[tuple[int, int, int, int], str, int]]:
    """Place "name score" labels on a ``width`` x ``height`` picture: ``(box, text, font size)`` per label kept.

    Each label (x, y, text, area) is centred on (x, y) and moved inside the picture; if it overlaps a label already
    placed (larger areas are placed first) it moves just below or above that one; if it still overlaps, or is larger
    than the picture, it is tried with smaller fonts down to ``_MIN_FONT`` px, then left out. Boxes are inclusive pixel rectangles (left, top, right, bottom), all within
    the picture.
    """
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    sizes = sorted({max(_MIN_FONT, int(size * 0.8 ** k)) for k in range(12)}, reverse=True)
    placed: list[tuple[tuple[int, int, int, int], str, int]] = []
    for x, y, text, _ in sorted(labels, key=lambda label: -label[3]):
        for font_size in sizes:
            left, top, right, bottom = measure.textbbox((0, 0), text, font=_font(font_size), anchor="lt")
            w, h = right - left + 2 * _PAD_X, bottom - top + 2 * _PAD_Y
            if w > width or h > height:
                continue
            x0 = min(max(x - w // 2, 0), width - w)
            box = _row_box(x0, y - h // 2, w, h, height)
            hit = next((other for other, _, _ in placed if _overlap(box, other)), None)
            if hit is not None:  # just below, else just above, the label it would cover
                moved = (_row_box(x0, hit[3] + 1, w, h, height), _row_box(x0, hit[1] - h, w, h, height))
                box = next((b for b in moved if not any(_overlap(b, other) for other, _, _ in placed)), box)
            if not any(_overlap(box, other) for other, _, _ in placed):
                placed.append((box, text, font_size))
                break
    return placed


def _row_box(x0: int, y0: int, w: int, h: int, height: int) -> tuple[int, int, int, int]:
    y0 = min(max(y0, 0), height - h)
    return (x0, y0, x0 + w - 1, y0 + h - 1)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _edges(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    return edge


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "Arial.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def save_summary(result: PanopticResult, meta: CategoryMeta, path: str | Path) -> None:
    """Write ``result.summary`` as JSON atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.summary(meta), indent=1))
    tmp.replace(path)
