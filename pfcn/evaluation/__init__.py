"""Evaluation of panoptic predictions: PQ/SQ/RQ (panopticapi rules), mask AP (COCOeval segm), stuff mIoU.

Read top to bottom:
    panoptic_format   -> PNG ids, segment lists, ground-truth sets, format errors
    panoptic_quality  -> PQ statistics, exactly panopticapi's pq_compute, vectorised
    instance_ap       -> mask AP with pycocotools over instances derived from the panoptic GT
    semantic_miou     -> stuff-head confusion matrix and mIoU (detectron2 SemSegEvaluator)
    predictions_io    -> predictions on disk (COCO panoptic + the pfcn extension for AP / mIoU)
    evaluator         -> PanopticEvaluator: all metrics, one image at a time, mergeable across shards
    report            -> console table, metrics.json, report.md
"""

from pfcn.evaluation.evaluator import EvalState, PanopticEvaluator, evaluate_prediction_files, match_predictions
from pfcn.evaluation.instance_ap import InstanceAPAccumulator, encode_masks
from pfcn.evaluation.panoptic_format import (PanopticFormatError, PanopticGroundTruth, id2rgb, read_panoptic_png,
                                             rgb2id)
from pfcn.evaluation.panoptic_quality import PQStat, pq_compute_arrays, pq_compute_files
from pfcn.evaluation.predictions_io import PanopticPredictionWriter, PanopticPredictions, write_panoptic_predictions
from pfcn.evaluation.report import format_table, write_metrics_json, write_report_md
from pfcn.evaluation.semantic_miou import ConfusionMatrix, semantic_from_panoptic

__all__ = [
    "ConfusionMatrix", "EvalState", "InstanceAPAccumulator", "PQStat", "PanopticEvaluator", "PanopticFormatError",
    "PanopticGroundTruth", "PanopticPredictionWriter", "PanopticPredictions", "encode_masks",
    "evaluate_prediction_files", "format_table", "id2rgb", "match_predictions", "pq_compute_arrays", "pq_compute_files",
    "read_panoptic_png", "rgb2id", "semantic_from_panoptic", "write_metrics_json", "write_panoptic_predictions",
    "write_report_md",
]
