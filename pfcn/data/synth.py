"""A synthetic COCO-panoptic dataset that a small network can learn in minutes: textured shapes on textured ground.

Why: the training and evaluation pipelines need data whose answer is known and learnable without COCO or a GPU.
Every class is told apart by colour and texture (and things also by shape), so a few minutes of CPU training
already separate them; geometry still exercises what PanopticFCN must handle: things from ~8 px to most of the
image, overlapping and occluding each other (later ones on top), stuff regions with irregular borders, void pixels.

Classes depend only on their index (never on the seed), so datasets made with different seeds share categories and
appearance: one seed for a training split, another for a held-out split. Image i is drawn from
``numpy.random.default_rng([seed, i])`` alone, so a dataset is byte-for-byte reproducible and its first n images do
not depend on how many are made.

Output (standard COCO panoptic, readable by panopticapi and any COCO-panoptic tool)::

    OUT/images/000000.jpg ...     photographs
    OUT/panoptic/000000.png ...   segment id = R + 256*G + 256^2*B, 0 = void
    OUT/panoptic.json             images, annotations (segments_info: id, category_id, iscrowd 0, area,
                                  bbox), categories

Areas and boxes are measured on the final id map (occluded parts removed; fully hidden things dropped).
Thing categories get ids 1..K and stuff ids 101..100+M: the gap keeps "dataset id" and "head index" apart in tests.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

__all__ = [
    "MAX_CLASSES",
    "SHAPES",
    "STUFF_ID_OFFSET",
    "SynthSpec",
    "generate_dataset",
    "render_sample",
    "synth_categories",
]

SHAPES = ("circle", "square", "triangle", "ring", "cross", "diamond", "hexagon", "star")
THING_TEXTURES = ("flat", "stripes", "dots", "shade")
STUFF_TEXTURES = ("grain", "stripes", "blotches", "checks", "waves")
STUFF_ID_OFFSET = 100  # stuff category ids are 101, 102, ...
MAX_CLASSES = 50  # per kind; beyond this colours get too close to tell apart
MIN_THING_SIZE = 8  # px, smallest thing diameter
MAX_THING_FRACTION = 0.7  # largest thing diameter, as a fraction of the shorter image side
VOID_BORDER_PROB = 0.5  # share of images whose stuff borders are left unlabelled (void), as annotators do
IMAGE_NOISE = 4.0  # std of the per-pixel sensor noise added to the photo, grey levels
JPEG_QUALITY = 95


@dataclass(frozen=True)
class SynthSpec:
    """What to draw.

    Attributes:
        height, width: image size, px.
        num_things: thing classes K (shapes).
        num_stuff: stuff classes M (ground textures); 0 leaves the background void.
        max_instances: things per image are drawn uniformly from 1..max_instances (0 things if K == 0).
        image_format: "jpg" or "png" for the photographs.
    """

    height: int = 128
    width: int = 128
    num_things: int = 3
    num_stuff: int = 3
    max_instances: int = 6
    image_format: str = "jpg"

    def __post_init__(self) -> None:
        if self.height < 16 or self.width < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.height}x{self.width}")
        for name, value in (("num_things", self.num_things), ("num_stuff", self.num_stuff)):
            if not 0 <= value <= MAX_CLASSES:
                raise ValueError(f"{name} must be in 0..{MAX_CLASSES}, got {value}")
        if self.num_things + self.num_stuff == 0:
            raise ValueError("need at least one thing or stuff class")
        if self.max_instances < 1:
            raise ValueError(f"max_instances must be >= 1, got {self.max_instances}")
        if self.image_format not in ("jpg", "png"):
            raise ValueError(f"image_format must be 'jpg' or 'png', got {self.image_format!r}")


# ---- classes ---------------------------------------------------------------------------------------------------
def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def _thing_color(k: int, num_things: int) -> tuple[int, int, int]:
    """Saturated, bright, hues spread evenly: things stand out from the muted ground."""
    return _hsv(k / max(num_things, 1), 0.85, 0.95)


def _stuff_color(j: int, num_stuff: int) -> tuple[int, int, int]:
    """Muted and darker, hues between the things' so no stuff looks like a thing; value alternates for contrast."""
    return _hsv((j + 0.5) / max(num_stuff, 1), 0.45, 0.45 + 0.2 * (j % 2))


def _suffix(name: str, index: int, period: int) -> str:
    return name if index < period else f"{name}-{index // period + 1}"


def synth_categories(num_things: int, num_stuff: int) -> list[dict[str, Any]]:
    """COCO panoptic categories: things 1..K (shape names), then stuff 101..100+M (texture names)."""
    cats = []
    for k in range(num_things):
        cats.append({"id": k + 1, "name": _suffix(SHAPES[k % len(SHAPES)], k, len(SHAPES)),
                     "supercategory": "shape", "isthing": 1, "color": list(_thing_color(k, num_things))})
    for j in range(num_stuff):
        cats.append({"id": STUFF_ID_OFFSET + j + 1,
                     "name": _suffix(STUFF_TEXTURES[j % len(STUFF_TEXTURES)], j, len(STUFF_TEXTURES)),
                     "supercategory": "ground", "isthing": 0, "color": list(_stuff_color(j, num_stuff))})
    return cats


# ---- drawing helpers -------------------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field in about [0, 1]: a coarse uniform grid upsampled bicubically. float32 [H, W]."""
    grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
    return np.asarray(Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BICUBIC), dtype=np.float32)


def _polygon(n: int, radius: float, cx: float, cy: float, angle: float,
             aspect: float = 1.0) -> list[tuple[float, float]]:
    pts = []
    for i in range(n):
        t = 2 * math.pi * i / n
        x, y = radius * math.cos(t), radius * aspect * math.sin(t)
        pts.append((cx + x * math.cos(angle) - y * math.sin(angle), cy + x * math.sin(angle) + y * math.cos(angle)))
    return pts


def _star(radius: float, cx: float, cy: float, angle: float, inner: float = 0.45) -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * inner
        t = angle + math.pi * i / 5
        pts.append((cx + r * math.cos(t), cy + r * math.sin(t)))
    return pts


def _cross(radius: float, cx: float, cy: float, angle: float, arm: float = 0.36) -> list[tuple[float, float]]:
    a, r = radius * arm, radius
    base = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in base]


def _shape_mask(shape: str, h: int, w: int, cx: float, cy: float, size: float, angle: float,
                aspect: float) -> np.ndarray:
    """Binary mask [H, W] of one shape of diameter ``size`` centred at (cx, cy)."""
    img = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(img)
    r = size / 2.0
    if shape in ("circle", "ring"):
        rx, ry = r, r * aspect
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=1)
        if shape == "ring":
            draw.ellipse((cx - 0.5 * rx, cy - 0.5 * ry, cx + 0.5 * rx, cy + 0.5 * ry), fill=0)
    elif shape == "square":
        draw.polygon(_polygon(4, r * math.sqrt(2) * 0.8, cx, cy, angle + math.pi / 4), fill=1)
    elif shape == "triangle":
        draw.polygon(_polygon(3, r, cx, cy, angle), fill=1)
    elif shape == "cross":
        draw.polygon(_cross(r, cx, cy, angle), fill=1)
    elif shape == "diamond":
        draw.polygon(_polygon(4, r, cx, cy, angle, aspect=0.55), fill=1)
    elif shape == "hexagon":
        draw.polygon(_polygon(6, r, cx, cy, angle), fill=1)
    elif shape == "star":
        draw.polygon(_star(r, cx, cy, angle), fill=1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return np.asarray(img, dtype=bool)


def _thing_texture(k: int, num_things: int, h: int, w: int, cx: float, cy: float, size: float,
                   rng: np.random.Generator) -> np.ndarray:
    """The paint of one instance of thing class k: float32 [H, W, 3] (only read inside its mask)."""
    base = np.array(_thing_color(k, num_things), dtype=np.float32) * rng.uniform(0.85, 1.1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = THING_TEXTURES[k % len(THING_TEXTURES)]
    if kind == "flat":
        shade = np.ones((h, w), np.float32)
    elif kind == "stripes":  # stripes across the object, ~4 per diameter but at least 4 px apart
        period = max(4.0, size / 4.0)
        shade = 0.75 + 0.25 * np.sign(np.sin(2 * math.pi * (xx + yy) / period))
    elif kind == "dots":
        period = max(4.0, size / 5.0)
        shade = np.where((np.sin(2 * math.pi * xx / period) > 0.3) & (np.sin(2 * math.pi * yy / period) > 0.3),
                         0.55, 1.0).astype(np.float32)
    else:  # "shade": lit from the top-left like a sphere
        d = np.hypot(xx - (cx - size / 6), yy - (cy - size / 6)) / max(size / 2, 1.0)
        shade = np.clip(1.15 - 0.5 * d, 0.55, 1.15)
    return shade[:, :, None] * base


def _stuff_texture(j: int, num_stuff: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """The paint of stuff class j over the whole image: float32 [H, W, 3]."""
    base = np.array(_stuff_color(j, num_stuff), dtype=np.float32) * rng.uniform(0.9, 1.1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    kind = STUFF_TEXTURES[j % len(STUFF_TEXTURES)]
    variant = j // len(STUFF_TEXTURES)  # repeated textures differ in scale / orientation
    if kind == "grain":
        shade = 1.0 + rng.normal(0.0, 0.18, (h, w)).astype(np.float32)
    elif kind == "stripes":
        theta = math.pi / 3 + variant * math.pi / 5
        period = 7.0 + 2 * variant
        shade = 1.0 + 0.3 * np.sin(2 * math.pi * (xx * math.cos(theta) + yy * math.sin(theta)) / period)
    elif kind == "blotches":
        shade = 0.65 + 0.7 * _smooth_noise(rng, h, w, max(4, min(h, w) // (10 + 4 * variant)))
    elif kind == "checks":
        period = 6 + 2 * variant
        shade = np.where(((xx // period) + (yy // period)) % 2 == 0, 1.25, 0.8).astype(np.float32)
    else:  # "waves"
        period = 12.0 + 3 * variant
        shade = 1.0 + 0.3 * np.sin(2 * math.pi * yy / period + 2.5 * np.sin(2 * math.pi * xx / (2.7 * period)))
    return shade[:, :, None] * base


def _stuff_layout(rng: np.random.Generator, h: int, w: int, num_stuff: int) -> np.ndarray:
    """Stuff class per pixel (int64 [H, W]): a Voronoi partition whose borders are bent by smooth noise."""
    n = int(rng.integers(1, min(num_stuff, 3) + 1))
    classes = rng.choice(num_stuff, size=n, replace=False)
    if n == 1:
        return np.full((h, w), classes[0], dtype=np.int64)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = float(min(h, w))
    cost = []
    for _ in range(n):
        sy, sx = rng.uniform(0, h), rng.uniform(0, w)
        warp = _smooth_noise(rng, h, w, int(rng.integers(3, 6)))
        cost.append(np.hypot(yy - sy, xx - sx) + 0.6 * scale * warp)
    return classes[np.argmin(np.stack(cost), axis=0)]


def _unique_id(color: Sequence[int], rng: np.random.Generator, used: set[int], jitter: int) -> int:
    """A segment id near the category colour (so the PNG is viewable), unique in the image and non-zero."""
    base = np.array(color, dtype=np.int64)
    for attempt in range(1000):
        c = base if attempt == 0 and jitter == 0 else np.clip(base + rng.integers(-jitter - attempt, jitter + attempt
                                                                                  + 1, 3), 0, 255)
        sid = int(c[0] + 256 * c[1] + 65536 * c[2])
        if sid != 0 and sid not in used:
            used.add(sid)
            return sid
    raise RuntimeError("could not find a free segment id")  # unreachable for the sizes allowed


def _bbox(mask: np.ndarray) -> list[int]:
    """COCO [x, y, w, h] of a mask's pixels (w = x_max - x_min + 1, as pycocotools' toBbox gives)."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]


# ---- one sample ------------------------------------------------------------------------------------------------
def render_sample(spec: SynthSpec, seed: int, index: int) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Draw image ``index`` of the dataset with ``seed``.

    Returns:
        image: uint8 [H, W, 3] RGB.
        ids: int32 [H, W] segment ids (0 = void).
        segments_info: COCO panoptic segments (id, category_id, iscrowd 0, area, bbox [x, y, w, h]).
    """
    rng = np.random.default_rng([int(seed), int(index)])
    h, w, K, M = spec.height, spec.width, spec.num_things, spec.num_stuff
    cats = synth_categories(K, M)
    thing_cats, stuff_cats = cats[:K], cats[K:]
    canvas = np.empty((h, w, 3), np.float32)
    owner = np.full((h, w), -1, np.int64)  # segment slot per pixel; -1 = void
    slots: list[dict[str, Any]] = []  # category per slot, filled as segments are drawn
    used_ids: set[int] = set()

    # Ground: stuff regions, each painted with its class texture.
    if M:
        layout = _stuff_layout(rng, h, w, M)
        for j in np.unique(layout):
            region = layout == j
            canvas[region] = _stuff_texture(int(j), M, h, w, rng)[region]
            owner[region] = len(slots)
            slots.append({"category": stuff_cats[int(j)], "jitter": 0})
        if rng.random() < VOID_BORDER_PROB:  # unlabelled 2-px seams between regions
            edge = np.zeros((h, w), bool)
            edge[:, 1:] |= layout[:, 1:] != layout[:, :-1]
            edge[1:, :] |= layout[1:, :] != layout[:-1, :]
            seam = edge.copy()
            seam[:, :-1] |= edge[:, 1:]
            seam[:-1, :] |= edge[1:, :]
            owner[seam] = -1
    else:
        canvas[:] = 128.0 * (1.0 + rng.normal(0.0, 0.15, (h, w, 1))).astype(np.float32)

    # Things, back to front: each covers whatever was drawn before it.
    if K:
        count = int(rng.integers(1, spec.max_instances + 1))
        lo, hi = math.log(MIN_THING_SIZE), math.log(max(MIN_THING_SIZE, MAX_THING_FRACTION * min(h, w)))
        for _ in range(count):
            k = int(rng.integers(K))
            size = math.exp(rng.uniform(lo, hi))
            cx, cy = rng.uniform(0, w), rng.uniform(0, h)
            mask = _shape_mask(SHAPES[k % len(SHAPES)], h, w, cx, cy, size, rng.uniform(0, 2 * math.pi),
                               rng.uniform(0.75, 1.0))
            if not mask.any():
                continue
            canvas[mask] = _thing_texture(k, K, h, w, cx, cy, size, rng)[mask]
            owner[mask] = len(slots)
            slots.append({"category": thing_cats[k], "jitter": 40})

    image = np.clip(canvas + rng.normal(0.0, IMAGE_NOISE, canvas.shape), 0, 255).round().astype(np.uint8)

    # Segments measured on the final map; slots with no visible pixel (fully covered) are dropped.
    ids = np.zeros((h, w), np.int32)
    segments = []
    counts = np.bincount(owner[owner >= 0], minlength=len(slots))
    order = [s for s in range(len(slots)) if slots[s]["category"]["isthing"]]
    order += [s for s in range(len(slots)) if not slots[s]["category"]["isthing"]]
    for s in order:
        if counts[s] == 0:
            continue
        cat = slots[s]["category"]
        mask = owner == s
        sid = _unique_id(cat["color"], rng, used_ids, slots[s]["jitter"])
        ids[mask] = sid
        segments.append({"id": sid, "category_id": cat["id"], "iscrowd": 0, "area": int(counts[s]),
                         "bbox": _bbox(mask)})
    return image, ids, segments


# ---- the dataset -----------------------------------------------------------------------------------------------
def _save_atomic(img: Image.Image, path: Path, **kwargs: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    img.save(tmp, format=kwargs.pop("format"), **kwargs)
    os.replace(tmp, path)


def _ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def generate_dataset(out: str | Path, num: int, spec: SynthSpec = SynthSpec(), seed: int = 0,
                     progress: bool = True) -> Path:
    """Write ``num`` images of ``spec`` drawn with ``seed`` under ``out`` (layout in the module docstring).

    Returns:
        the path of OUT/panoptic.json.
    """
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    out = Path(out)
    img_dir, png_dir = out / "images", out / "panoptic"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in tqdm(range(num), desc="pfcn-synth", unit="img", disable=not progress):
        image, ids, segments = render_sample(spec, seed, i)
        stem = f"{i:06d}"
        image_name, png_name = f"{stem}.{spec.image_format}", f"{stem}.png"
        if spec.image_format == "jpg":
            _save_atomic(Image.fromarray(image), img_dir / image_name, format="JPEG", quality=JPEG_QUALITY)
        else:
            _save_atomic(Image.fromarray(image), img_dir / image_name, format="PNG")
        _save_atomic(Image.fromarray(_ids_to_rgb(ids)), png_dir / png_name, format="PNG")
        images.append({"id": i + 1, "file_name": image_name, "height": spec.height, "width": spec.width})
        annotations.append({"image_id": i + 1, "file_name": png_name, "segments_info": segments})
    data = {
        "info": {"description": "pfcn-synth: textured shapes (things) on textured ground (stuff)",
                 "seed": int(seed), "num_things": spec.num_things, "num_stuff": spec.num_stuff,
                 "max_instances": spec.max_instances, "height": spec.height, "width": spec.width},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": synth_categories(spec.num_things, spec.num_stuff),
    }
    json_path = out / "panoptic.json"
    tmp = json_path.with_name(f".{json_path.name}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, json_path)
    return json_path
