"""Small synthetic training batches (samples in the dataset contract) and random head outputs for the loss tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from yacs.config import CfgNode

from pfcn.config import get_cfg
from pfcn.inference import HeadOutputs

REPO_ROOT = Path(__file__).resolve().parents[3]
NUM_THINGS = 5
NUM_STUFF = 6  # class 0 = all things, 1..5 stuff
# Scaled-down INSTANCE_SCALES for images of ~150 px, overlapping like the official ones.
KERNEL_DIM = 16  # kernel-head channels (official 256)
EMBED_DIM = 8  # encoded-feature channels (official 64)
SCALES = ((1, 16), (8, 32), (16, 64), (32, 128), (64, 2048))


def small_cfg(pos_num: int = 3) -> CfgNode:
    """Official defaults with a handful of classes and scale ranges that suit ~150 px images."""
    cfg = get_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES = NUM_THINGS
    cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES = NUM_STUFF
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = NUM_STUFF
    cfg.MODEL.KERNEL_HEAD.INSTANCE_SCALES = SCALES
    cfg.MODEL.POSITION_HEAD.THING.POS_NUM = pos_num
    cfg.MODEL.KERNEL_HEAD.CONVS_DIM = KERNEL_DIM
    cfg.MODEL.FEATURE_ENCODER.CONVS_DIM = EMBED_DIM
    return cfg


def level_shapes(h: int, w: int) -> list[tuple[int, int]]:
    """P3..P7 sizes of a padded h x w input (P6/P7: stride-2 3x3 convs with padding 1)."""
    shapes = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
    for _ in range(2):
        ph, pw = shapes[-1]
        shapes.append(((ph + 1) // 2, (pw + 1) // 2))
    return shapes


def random_sample(gen: torch.Generator, h: int, w: int, num_instances: int, min_size: int = 6) -> dict[str, Any]:
    """One sample: rectangles and discs as instances (painted in order, so later ones occlude), stuff bands,
    an ignore patch. Boxes are the masks' tight boxes, as detectron2 computes them for the crops we use."""
    sem = torch.randint(1, NUM_STUFF, (1,), generator=gen).repeat(h, w)
    bands = torch.randint(1, NUM_STUFF, (3,), generator=gen)
    cuts = sorted(torch.randint(0, h, (3,), generator=gen).tolist())
    for label, y0 in zip(bands.tolist(), cuts):
        sem[y0:] = label
    ys = torch.arange(h).reshape(h, 1)
    xs = torch.arange(w).reshape(1, w)
    masks, classes = [], []
    for _ in range(num_instances):
        # log-uniform sizes, so that every level gets objects
        top = min(h, w) - 2
        size = int(min_size * (top / min_size) ** float(torch.rand(1, generator=gen)))
        sh = max(min_size, int(size * float(torch.empty(1).uniform_(0.5, 1.0, generator=gen))))
        y0 = int(torch.randint(0, h - sh + 1, (1,), generator=gen))
        x0 = int(torch.randint(0, w - size + 1, (1,), generator=gen))
        if bool(torch.rand(1, generator=gen) < 0.5):
            m = (ys >= y0) & (ys < y0 + sh) & (xs >= x0) & (xs < x0 + size)
        else:
            cy, cx, r = y0 + sh / 2, x0 + size / 2, min(sh, size) / 2
            m = (ys + 0.5 - cy) ** 2 + (xs + 0.5 - cx) ** 2 <= r * r
        for prev in masks:
            prev &= ~m
        masks.append(m)
        classes.append(int(torch.randint(0, NUM_THINGS, (1,), generator=gen)))
    keep = [i for i, m in enumerate(masks) if int(m.sum()) >= min_size * min_size // 2]
    masks = [masks[i] for i in keep]
    classes = [classes[i] for i in keep]
    boxes = []
    for m in masks:
        yy, xx = torch.nonzero(m, as_tuple=True)
        boxes.append([float(xx.min()), float(yy.min()), float(xx.max() + 1), float(yy.max() + 1)])
        sem[m] = 0
    sem[: h // 10, : w // 10] = 255  # a void patch
    mask_t = torch.stack(masks) if masks else torch.zeros(0, h, w, dtype=torch.bool)
    return {
        "image": torch.zeros(3, h, w, dtype=torch.uint8), "height": h, "width": w, "file_name": "synthetic",
        "image_id": int(torch.randint(0, 1 << 30, (1,), generator=gen)),
        "instances": {"masks": mask_t, "classes": torch.tensor(classes, dtype=torch.int64),
                      "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)},
        "sem_seg": sem.to(torch.int64),
    }


def random_heads(gen: torch.Generator, batch: int, h: int, w: int, channels: int = KERNEL_DIM,
                 embed: int = EMBED_DIM) -> HeadOutputs:
    """Random leaf tensors shaped like the model's head outputs for a padded h x w batch."""
    def leaf(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).requires_grad_(True)

    shapes = level_shapes(h, w)
    return HeadOutputs(
        centers=[leaf(batch, NUM_THINGS, lh, lw, scale=2.0) for lh, lw in shapes],
        regions=[leaf(batch, NUM_STUFF, lh, lw, scale=2.0) for lh, lw in shapes],
        weights=[leaf(batch, channels, lh, lw) for lh, lw in shapes],
        encoded=leaf(batch, embed, h // 4, w // 4),
    )
