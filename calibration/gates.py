"""PQ gates per precision: ΔPQ of an artifact against a reference on a held-out set, plus pixel agreement.

Any two artifacts (a PyTorch checkpoint, an FP32/FP16/INT8 ``.onnx``, an engine) are opened with
``pfcn.runtime.open_model``, run through the one ``predict`` loop, and scored by the one PQ evaluator, so the gate
measures the artifact and nothing else. ``pfcn-parity --max-dpq`` uses the same limits (``GATES``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from pfcn.runtime.backend import Backend, predict
from pfcn.runtime.compare import result_agreement

from .data import CalibrationDataError, ImageSet

# |PQ(artifact) - PQ(PyTorch FP32)| limits in PQ points, per precision (the gates).
GATES = {"fp32": 0.05, "fp16": 0.2, "int8": 1.0}


def panoptic_results(backend: Backend, data: ImageSet) -> list[Any]:
    return predict(backend, data.images, data.names, data.image_ids)


def pq_of(results: Sequence[Any], data: ImageSet, backend: Backend) -> dict[str, float]:
    """PQ/SQ/RQ (percent) of All/Things/Stuff for results of ``data`` (which must carry ground truth)."""
    from pfcn.evaluation.evaluator import PanopticEvaluator
    from pfcn.data.ground_truth import model_categories

    if data.gt is None:
        raise CalibrationDataError(f"{data.source}: no ground truth; PQ needs a dataset (COCO panoptic JSON + PNGs)")
    model_categories(backend.info.meta, data.gt.meta, str(getattr(backend.info, "source", "model")))
    evaluator = PanopticEvaluator(data.gt, instance_ap=False, semantic=False)
    for image_id, r in zip(data.image_ids or [], results):
        evaluator.process(r, image_id)
    pq = evaluator.evaluate(require_all=False)["panoptic"]
    return {f"{k}_{g}": float(pq[g][k]) for g in ("All", "Things", "Stuff") for k in ("PQ", "SQ", "RQ")}


@dataclass
class GateReport:
    pq_model: float
    pq_reference: float
    delta_pq: float  # PQ(model) - PQ(reference), PQ points
    limit: float
    min_pixel_agreement: float
    mean_pixel_agreement: float
    unmatched_segments: int
    category_mismatches: int

    @property
    def ok(self) -> bool:
        return abs(self.delta_pq) <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def compare(model: Backend, reference: Backend | list[Any], data: ImageSet, limit: float,
            reference_pq: float | None = None) -> GateReport:
    """Gate ``model`` against ``reference`` (a backend, or its precomputed results) on ``data``."""
    ref_results = reference if isinstance(reference, list) else panoptic_results(reference, data)
    results = panoptic_results(model, data)
    agreements = [result_agreement(a, b) for a, b in zip(ref_results, results)]
    pq_m = pq_of(results, data, model)["PQ_All"]
    pq_r = reference_pq if reference_pq is not None else pq_of(ref_results, data, model)["PQ_All"]
    pixels = [a.pixel_agreement for a in agreements]
    return GateReport(pq_m, pq_r, pq_m - pq_r, limit, min(pixels), sum(pixels) / len(pixels),
                      sum(a.unmatched_a + a.unmatched_b for a in agreements),
                      sum(a.category_mismatch for a in agreements))
