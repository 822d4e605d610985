"""Category metadata: how the model's contiguous class indices map to a dataset's own category ids.

PanopticFCN uses the detectron2 "separated" convention:
  * thing head: contiguous index t in [0, T) <-> ``thing_ids[t]``
  * stuff head: index 0 means "any thing"; index s in [1, S) <-> ``stuff_ids[s - 1]``; 255 is ignored.
The metadata travels with every artifact (checkpoint, ONNX metadata_props, result JSON), so a result can always
be written in the dataset's own ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

# COCO panoptic 2017: (id, name, isthing, color). 80 things then 53 stuff, as in the official panoptic JSON.
COCO_PANOPTIC_CATEGORIES: tuple[tuple[int, str, int, tuple[int, int, int]], ...] = (
    (1, 'person', 1, (220, 20, 60)),
    (2, 'bicycle', 1, (119, 11, 32)),
    (3, 'car', 1, (0, 0, 142)),
    (4, 'motorcycle', 1, (0, 0, 230)),
    (5, 'airplane', 1, (106, 0, 228)),
    (6, 'bus', 1, (0, 60, 100)),
    (7, 'train', 1, (0, 80, 100)),
    (8, 'truck', 1, (0, 0, 70)),
    (9, 'boat', 1, (0, 0, 192)),
    (10, 'traffic light', 1, (250, 170, 30)),
    (11, 'fire hydrant', 1, (100, 170, 30)),
    (13, 'stop sign', 1, (220, 220, 0)),
    (14, 'parking meter', 1, (175, 116, 175)),
    (15, 'bench', 1, (250, 0, 30)),
    (16, 'bird', 1, (165, 42, 42)),
    (17, 'cat', 1, (255, 77, 255)),
    (18, 'dog', 1, (0, 226, 252)),
    (19, 'horse', 1, (182, 182, 255)),
    (20, 'sheep', 1, (0, 82, 0)),
    (21, 'cow', 1, (120, 166, 157)),
    (22, 'elephant', 1, (110, 76, 0)),
    (23, 'bear', 1, (174, 57, 255)),
    (24, 'zebra', 1, (199, 100, 0)),
    (25, 'giraffe', 1, (72, 0, 118)),
    (27, 'backpack', 1, (255, 179, 240)),
    (28, 'umbrella', 1, (0, 125, 92)),
    (31, 'handbag', 1, (209, 0, 151)),
    (32, 'tie', 1, (188, 208, 182)),
    (33, 'suitcase', 1, (0, 220, 176)),
    (34, 'frisbee', 1, (255, 99, 164)),
    (35, 'skis', 1, (92, 0, 73)),
    (36, 'snowboard', 1, (133, 129, 255)),
    (37, 'sports ball', 1, (78, 180, 255)),
    (38, 'kite', 1, (0, 228, 0)),
    (39, 'baseball bat', 1, (174, 255, 243)),
    (40, 'baseball glove', 1, (45, 89, 255)),
    (41, 'skateboard', 1, (134, 134, 103)),
    (42, 'surfboard', 1, (145, 148, 174)),
    (43, 'tennis racket', 1, (255, 208, 186)),
    (44, 'bottle', 1, (197, 226, 255)),
    (46, 'wine glass', 1, (171, 134, 1)),
    (47, 'cup', 1, (109, 63, 54)),
    (48, 'fork', 1, (207, 138, 255)),
    (49, 'knife', 1, (151, 0, 95)),
    (50, 'spoon', 1, (9, 80, 61)),
    (51, 'bowl', 1, (84, 105, 51)),
    (52, 'banana', 1, (74, 65, 105)),
    (53, 'apple', 1, (166, 196, 102)),
    (54, 'sandwich', 1, (208, 195, 210)),
    (55, 'orange', 1, (255, 109, 65)),
    (56, 'broccoli', 1, (0, 143, 149)),
    (57, 'carrot', 1, (179, 0, 194)),
    (58, 'hot dog', 1, (209, 99, 106)),
    (59, 'pizza', 1, (5, 121, 0)),
    (60, 'donut', 1, (227, 255, 205)),
    (61, 'cake', 1, (147, 186, 208)),
    (62, 'chair', 1, (153, 69, 1)),
    (63, 'couch', 1, (3, 95, 161)),
    (64, 'potted plant', 1, (163, 255, 0)),
    (65, 'bed', 1, (119, 0, 170)),
    (67, 'dining table', 1, (0, 182, 199)),
    (70, 'toilet', 1, (0, 165, 120)),
    (72, 'tv', 1, (183, 130, 88)),
    (73, 'laptop', 1, (95, 32, 0)),
    (74, 'mouse', 1, (130, 114, 135)),
    (75, 'remote', 1, (110, 129, 133)),
    (76, 'keyboard', 1, (166, 74, 118)),
    (77, 'cell phone', 1, (219, 142, 185)),
    (78, 'microwave', 1, (79, 210, 114)),
    (79, 'oven', 1, (178, 90, 62)),
    (80, 'toaster', 1, (65, 70, 15)),
    (81, 'sink', 1, (127, 167, 115)),
    (82, 'refrigerator', 1, (59, 105, 106)),
    (84, 'book', 1, (142, 108, 45)),
    (85, 'clock', 1, (196, 172, 0)),
    (86, 'vase', 1, (95, 54, 80)),
    (87, 'scissors', 1, (128, 76, 255)),
    (88, 'teddy bear', 1, (201, 57, 1)),
    (89, 'hair drier', 1, (246, 0, 122)),
    (90, 'toothbrush', 1, (191, 162, 208)),
    (92, 'banner', 0, (255, 255, 128)),
    (93, 'blanket', 0, (147, 211, 203)),
    (95, 'bridge', 0, (150, 100, 100)),
    (100, 'cardboard', 0, (168, 171, 172)),
    (107, 'counter', 0, (146, 112, 198)),
    (109, 'curtain', 0, (210, 170, 100)),
    (112, 'door-stuff', 0, (92, 136, 89)),
    (118, 'floor-wood', 0, (218, 88, 184)),
    (119, 'flower', 0, (241, 129, 0)),
    (122, 'fruit', 0, (217, 17, 255)),
    (125, 'gravel', 0, (124, 74, 181)),
    (128, 'house', 0, (70, 70, 70)),
    (130, 'light', 0, (255, 228, 255)),
    (133, 'mirror-stuff', 0, (154, 208, 0)),
    (138, 'net', 0, (193, 0, 92)),
    (141, 'pillow', 0, (76, 91, 113)),
    (144, 'platform', 0, (255, 180, 195)),
    (145, 'playingfield', 0, (106, 154, 176)),
    (147, 'railroad', 0, (230, 150, 140)),
    (148, 'river', 0, (60, 143, 255)),
    (149, 'road', 0, (128, 64, 128)),
    (151, 'roof', 0, (92, 82, 55)),
    (154, 'sand', 0, (254, 212, 124)),
    (155, 'sea', 0, (73, 77, 174)),
    (156, 'shelf', 0, (255, 160, 98)),
    (159, 'snow', 0, (255, 255, 255)),
    (161, 'stairs', 0, (104, 84, 109)),
    (166, 'tent', 0, (169, 164, 131)),
    (168, 'towel', 0, (225, 199, 255)),
    (171, 'wall-brick', 0, (137, 54, 74)),
    (175, 'wall-stone', 0, (135, 158, 223)),
    (176, 'wall-tile', 0, (7, 246, 231)),
    (177, 'wall-wood', 0, (107, 255, 200)),
    (178, 'water-other', 0, (58, 41, 149)),
    (180, 'window-blind', 0, (183, 121, 142)),
    (181, 'window-other', 0, (255, 73, 97)),
    (184, 'tree-merged', 0, (107, 142, 35)),
    (185, 'fence-merged', 0, (190, 153, 153)),
    (186, 'ceiling-merged', 0, (146, 139, 141)),
    (187, 'sky-other-merged', 0, (70, 130, 180)),
    (188, 'cabinet-merged', 0, (134, 199, 156)),
    (189, 'table-merged', 0, (209, 226, 140)),
    (190, 'floor-other-merged', 0, (96, 36, 108)),
    (191, 'pavement-merged', 0, (96, 96, 96)),
    (192, 'mountain-merged', 0, (64, 170, 64)),
    (193, 'grass-merged', 0, (152, 251, 152)),
    (194, 'dirt-merged', 0, (208, 229, 228)),
    (195, 'paper-merged', 0, (206, 186, 171)),
    (196, 'food-other-merged', 0, (152, 161, 64)),
    (197, 'building-other-merged', 0, (116, 112, 0)),
    (198, 'rock-merged', 0, (0, 114, 143)),
    (199, 'wall-other-merged', 0, (102, 102, 156)),
    (200, 'rug-merged', 0, (250, 141, 255)),
)


@dataclass(frozen=True)
class CategoryMeta:
    """Dataset categories in the order of the model's heads.

    Attributes:
        thing_ids: dataset id of each thing class, in thing-head order.
        stuff_ids: dataset id of each stuff class, in stuff-head order (stuff-head index = position + 1).
        names: dataset id -> name.
        colors: dataset id -> RGB colour.
    """

    thing_ids: tuple[int, ...]
    stuff_ids: tuple[int, ...]
    names: dict[int, str] = field(default_factory=dict)
    colors: dict[int, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def num_things(self) -> int:
        return len(self.thing_ids)

    @property
    def num_stuff(self) -> int:
        """Channels of the stuff head: the stuff classes plus class 0 ("things")."""
        return len(self.stuff_ids) + 1

    def thing_dataset_id(self, index: int) -> int:
        return self.thing_ids[index]

    def stuff_dataset_id(self, index: int) -> int:
        if index < 1 or index > len(self.stuff_ids):
            raise ValueError(f"stuff index {index} has no dataset id (valid: 1..{len(self.stuff_ids)})")
        return self.stuff_ids[index - 1]

    def isthing(self, dataset_id: int) -> bool:
        return dataset_id in set(self.thing_ids)

    def categories(self) -> list[dict[str, Any]]:
        """COCO-style category list (things first, then stuff)."""
        out = []
        for cid in self.thing_ids + self.stuff_ids:
            out.append({"id": cid, "name": self.names.get(cid, str(cid)), "isthing": int(cid in self.thing_ids),
                        "color": list(self.colors.get(cid, _fallback_color(cid)))})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"categories": self.categories()}

    @classmethod
    def from_categories(cls, categories: Sequence[dict[str, Any]], source: str = "categories") -> "CategoryMeta":
        """Build from a COCO panoptic ``categories`` list (things and stuff keep their order in the list)."""
        things, stuff, names, colors = [], [], {}, {}
        seen: set[int] = set()
        for i, cat in enumerate(categories):
            for key in ("id", "isthing"):
                if key not in cat:
                    raise ValueError(f"{source}: category #{i} has no {key!r} key: {cat}")
            cid = int(cat["id"])
            if cid in seen:
                raise ValueError(f"{source}: category id {cid} appears twice")
            seen.add(cid)
            (things if int(cat["isthing"]) else stuff).append(cid)
            names[cid] = str(cat.get("name", cid))
            colors[cid] = tuple(int(v) for v in cat.get("color", _fallback_color(cid)))
        return cls(tuple(things), tuple(stuff), names, colors)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CategoryMeta":
        return cls.from_categories(data["categories"])

    @classmethod
    def from_json(cls, path: str | Path) -> "CategoryMeta":
        """Read the ``categories`` of a COCO panoptic JSON (or a bare list of categories)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read categories: {e}") from e
        cats = data["categories"] if isinstance(data, dict) else data
        return cls.from_categories(cats, source=str(path))

    @classmethod
    def coco(cls) -> "CategoryMeta":
        """The COCO panoptic categories the official checkpoints were trained with."""
        cats = [{"id": i, "name": n, "isthing": t, "color": c} for i, n, t, c in COCO_PANOPTIC_CATEGORIES]
        return cls.from_categories(cats, source="COCO")

    @classmethod
    def generic(cls, num_things: int, num_stuff_channels: int) -> "CategoryMeta":
        """Placeholder ids 1..T for things and T+1.. for stuff, used when a model carries no metadata."""
        things = tuple(range(1, num_things + 1))
        stuff = tuple(range(num_things + 1, num_things + num_stuff_channels))
        names = {i: (f"thing{i}" if i <= num_things else f"stuff{i}") for i in things + stuff}
        return cls(things, stuff, names, {i: _fallback_color(i) for i in things + stuff})


def _fallback_color(cid: int) -> tuple[int, int, int]:
    """A deterministic, well-spread colour for a category id without one."""
    h = (cid * 2654435761) & 0xFFFFFF
    return ((h >> 16) & 255, (h >> 8) & 255, h & 255)
