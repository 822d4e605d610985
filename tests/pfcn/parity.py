"""Test helpers shared by the parity tests: calibrated random models, test images, and result comparison.

Results are compared the way the issue defines exactness: every panoptic segment matched (IoU > 0.5) with the same
category, >= 99.9 % of pixels identical after mapping matched ids, same instance classes/scores (masks by IoU), and
the same semantic map. Ties and float rounding at a threshold may flip single pixels, never a segment.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pfcn.config import load_config
from pfcn.image_io import read_image
from pfcn.model import PanopticFCN, build_model
from pfcn.random_init import calibrate_random_model
from pfcn.runtime.compare import match_panoptic  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO.parent / "shared" / "data" / "coco_panoptic_sample"
SMALL_CONFIG = REPO / "configs" / "PanopticFCN-Small.yaml"
R50_CONFIG = REPO / "configs" / "PanopticFCN-R50-1x.yaml"


def sample_images() -> list[np.ndarray]:
    """The two real COCO photos (RGB uint8)."""
    return [read_image(p) for p in sorted((SAMPLE / "input_images").glob("*.jpg"))]


def synthetic_image(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth colour blobs on a gradient: structured enough for calibrated random weights to form regions."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([xx / max(w, 1), yy / max(h, 1), 0.5 + 0 * xx], -1) * 120
    for _ in range(rng.integers(3, 9)):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.05, 0.4) * min(h, w)
        col = rng.uniform(0, 255, 3)
        blob = ((yy - cy) ** 2 + (xx - cx) ** 2) < r ** 2
        img[blob] = col
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def calibrated_model(config: Path, seed: int, images: list[np.ndarray], overrides: list[str] | None = None
                     ) -> tuple[PanopticFCN, object]:
    cfg = load_config(config, ["MODEL.DEVICE", "cpu"] + list(overrides or []))
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    calibrate_random_model(model, images, seed=seed)
    return model, cfg


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
