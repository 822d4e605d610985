"""Comparing two backends: tensor errors per output, and panoptic agreement per image.

Used by ``pfcn-parity`` and by the tests. Panoptic results are compared as the issue defines exactness: segments
matched by IoU > 0.5 with the same category, and the fraction of pixels that agree once matched ids are renamed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from pfcn.contract import VALID_FLAG


def _as_numpy(value: Any) -> np.ndarray:
    return np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)


def tensor_errors(reference: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """Per output shared by both: max/mean absolute and max relative error (floats), or the fraction of differing
    elements (integers, booleans), and how many elements were compared.

    Slot tables (instances, segments) are compared only in the slots that both sides mark valid
    (``pfcn.contract.VALID_FLAG``): the unused slots hold padding whose values mean nothing. Whether the slots agree
    is measured by the ``*_valid`` outputs themselves.
    """
    out = {}
    for name in reference:
        if name not in other:
            continue
        a, b = _as_numpy(reference[name]), _as_numpy(other[name])
        if a.shape != b.shape:
            raise ValueError(f"output {name!r}: shape {b.shape} differs from the reference {a.shape}")
        flag = VALID_FLAG.get(name)
        if flag is not None and flag in reference and flag in other:
            both = _as_numpy(reference[flag]).astype(bool) & _as_numpy(other[flag]).astype(bool)  # [B, K]
            a, b = a[both], b[both]  # [N, ...] the real slots only
        if np.issubdtype(a.dtype, np.floating):
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            rel = diff / np.maximum(np.abs(a.astype(np.float64)), 1e-6)
            out[name] = {"max_abs": float(diff.max(initial=0)), "mean_abs": float(diff.mean()) if diff.size else 0.0,
                         "max_rel": float(rel.max(initial=0)), "mismatch": float((diff > 0).mean()) if diff.size else 0,
                         "compared": int(a.shape[0]) if flag else int(a.size)}
        else:
            neq = a != b
            out[name] = {"max_abs": float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0)),
                         "mean_abs": float(neq.mean()) if neq.size else 0.0, "max_rel": 0.0,
                         "mismatch": float(neq.mean()) if neq.size else 0.0,
                         "compared": int(a.shape[0]) if flag else int(a.size)}
    return out


@dataclass
class Agreement:
    """How two panoptic predictions of one image agree."""

    pixel_agreement: float  # fraction of pixels with the same (matched) segment
    matched: int  # segments matched (IoU > 0.5)
    unmatched_a: int  # segments of A without a match
    unmatched_b: int
    category_mismatch: int  # matched segments whose (category, isthing) differ
    semantic_agreement: float  # fraction of identical semantic labels

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def match_panoptic(pan_a: np.ndarray, segs_a: Mapping[int, tuple[int, bool]], pan_b: np.ndarray,
                   segs_b: Mapping[int, tuple[int, bool]], sem_a: np.ndarray, sem_b: np.ndarray) -> Agreement:
    """Match the segments of two id maps (segs: id -> (category, isthing)) and measure their agreement."""
    mapping: dict[int, int] = {}
    cat_mismatch = 0
    flat_a, flat_b = pan_a.reshape(-1).astype(np.int64), pan_b.reshape(-1).astype(np.int64)
    pairs, inter = np.unique(flat_a * (int(flat_b.max(initial=0)) + 1) + flat_b, return_counts=True)
    base = int(flat_b.max(initial=0)) + 1
    area_a = dict(zip(*np.unique(flat_a, return_counts=True)))
    area_b = dict(zip(*np.unique(flat_b, return_counts=True)))
    for key, n in zip(pairs.tolist(), inter.tolist()):
        ida, idb = divmod(key, base)
        if ida == 0 or idb == 0 or ida not in segs_a or idb not in segs_b:
            continue
        if n / (area_a[ida] + area_b[idb] - n) > 0.5:
            mapping[ida] = idb
            if tuple(segs_a[ida]) != tuple(segs_b[idb]):
                cat_mismatch += 1
    lookup = np.full(int(flat_a.max(initial=0)) + 1, -1, dtype=np.int64)
    lookup[0] = 0
    for ida, idb in mapping.items():
        lookup[ida] = idb
    renamed = lookup[flat_a]
    return Agreement(float((renamed == flat_b).mean()), len(mapping), len(set(segs_a) - set(mapping)),
                     len(set(segs_b) - set(mapping.values())), cat_mismatch, float((sem_a == sem_b).mean()))


def result_agreement(a, b) -> Agreement:
    """``match_panoptic`` for two PanopticResults."""
    segs_a = {s["id"]: (s["category_id"], bool(s["isthing"])) for s in a.segments_info}
    segs_b = {s["id"]: (s["category_id"], bool(s["isthing"])) for s in b.segments_info}
    return match_panoptic(a.panoptic, segs_a, b.panoptic, segs_b, a.semantic, b.semantic)
