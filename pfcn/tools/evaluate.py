"""pfcn-eval: PQ/SQ/RQ, mask AP and stuff mIoU of a model, or of any backend's prediction files.

    pfcn-eval --config C [--weights W] (--dataset NAME | --images DIR --gt-json J --gt-png DIR) [--out DIR]
              [--device cpu|cuda] [--batch N] [KEY VALUE ...]
    pfcn-eval --predictions DIR_OR_JSON (--dataset NAME | --gt-json J --gt-png DIR) [--out DIR]

With a model it predicts every ground-truth image (progress bar), writes OUT/predictions (COCO panoptic, plus
instances.json and semantic/ for AP and mIoU, see `pfcn.evaluation.predictions_io`), scores them and writes
OUT/metrics.json and OUT/report.md. With --predictions it only scores files: PQ always, AP and mIoU when the
prediction JSON carries the pfcn extension. Under torchrun (WORLD_SIZE > 1) each rank predicts a shard of the
images, rank 0 gathers the metric state and the JSON entries and scores.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from pfcn.runtime import predict
from pfcn.evaluation import (PanopticEvaluator, PanopticGroundTruth, PanopticPredictionWriter, encode_masks,
                             evaluate_prediction_files, format_table, write_metrics_json, write_report_md)
from pfcn.arguments import (add_model_args, add_progress_arg, ensure_dir, make_parser, open_from_args,
                            parse_with_overrides, run_cli)
from pfcn.data.ground_truth import ground_truth, image_path_for, model_categories
from pfcn.image_io import read_image

__all__ = ["build_parser", "main", "predict_dataset"]


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pfcn-eval", __doc__)
    add_model_args(p)
    p.add_argument("--batch", type=int, default=1, help="images per forward pass")
    data = p.add_argument_group("ground truth")
    data.add_argument("--dataset", help="a dataset name resolved under $PFCN_DATASETS "
                                        "(e.g. coco_2017_val_panoptic_separated) or a dataset folder")
    data.add_argument("--images", help="folder of the photographs")
    data.add_argument("--gt-json", help="COCO panoptic ground-truth JSON")
    data.add_argument("--gt-png", help="folder of ground-truth panoptic PNGs (default: the JSON path without .json)")
    p.add_argument("--predictions", help="score this prediction folder or panoptic JSON instead of running a model")
    p.add_argument("--out", default="eval_out", help="output folder")
    add_progress_arg(p)
    return p


def predict_dataset(backend: Any, gt: PanopticGroundTruth, images: Path, image_ids: list[Any], batch: int = 1,
                    progress: bool = True) -> Iterator[tuple[Any, Any]]:
    """Run any backend (``pfcn.runtime``) over GT images: yields (image_id, PanopticResult) in ``image_ids`` order."""
    bar = tqdm(total=len(image_ids), desc="pfcn-eval", unit="img", disable=not progress)
    try:
        for start in range(0, len(image_ids), max(1, batch)):
            ids = image_ids[start:start + max(1, batch)]
            paths = [image_path_for(gt, images, i) for i in ids]
            results = predict(backend, [read_image(p) for p in paths], file_names=[p.name for p in paths],
                              image_ids=ids)
            for image_id, result in zip(ids, results):
                yield image_id, result
            bar.update(len(ids))
    finally:
        bar.close()


def _distributed() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _gather(payload: Any, rank: int, world: int) -> list[Any] | None:
    """Collect one picklable object per rank on rank 0 (gloo, also when the model runs under NCCL)."""
    import torch.distributed as dist

    group = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else None
    out: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(payload, out, dst=0, group=group)
    return out


def _evaluate_model(args: argparse.Namespace, gt: PanopticGroundTruth, images: Path | None,
                    out: Path) -> dict[str, Any] | None:
    if images is None:
        raise ValueError("--images DIR is required to run a model on --gt-json")
    rank, world = _distributed()
    if world > 1:
        import torch
        import torch.distributed as dist

        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
        dist.init_process_group(backend="nccl" if args.device.startswith("cuda") else "gloo")
    try:
        backend = open_from_args(args, batch_size=args.batch)
        meta = model_categories(backend.info.meta, gt.meta, backend.info.source)
        if meta is not backend.info.meta:
            backend.info = dataclasses.replace(backend.info, meta=meta)
        if args.random_weights and rank == 0:
            print("pfcn-eval: WARNING: evaluating a randomly initialised model (--random-weights)")
        image_ids = gt.image_ids[rank::world]
        evaluator = PanopticEvaluator(gt)
        writer = PanopticPredictionWriter(out / "predictions", gt.meta)
        for image_id, result in predict_dataset(backend, gt, images, image_ids, args.batch,
                                                progress=not args.no_progress and rank == 0):
            rles = encode_masks(result.instance_masks)
            writer.add(result, image_id=image_id, instance_rles=rles)
            evaluator.process(result, image_id=image_id, instance_rles=rles)
        if world > 1:
            gathered = _gather((evaluator.state(), writer.entries()), rank, world)
            if rank != 0:
                return None
            for other_rank, (state, entries) in enumerate(gathered or []):
                if other_rank != 0:
                    evaluator.merge(state)
                    writer.extend(entries)
        writer.close()
        return evaluator.evaluate()
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    gt, images = ground_truth(args.dataset, args.images, args.gt_json, args.gt_png)
    start = time.perf_counter()
    out = ensure_dir(args.out)
    if args.predictions:
        if args.config or args.model:
            raise ValueError("--predictions scores files; it takes no --config/--model")
        results = evaluate_prediction_files(gt, args.predictions, progress=not args.no_progress)
        source = f"prediction files {args.predictions}"
    else:
        results = _evaluate_model(args, gt, images, out)
        if results is None:  # a non-zero rank: rank 0 reports
            return 0
        source = f"model {args.model or '(random weights)'}" + (f" with config {args.config}" if args.config else "")
    elapsed = time.perf_counter() - start
    extra = {"predictions": source, "ground_truth": f"{gt.json_path} + {gt.folder}",
             "seconds": round(elapsed, 2), "seconds_per_image": round(elapsed / max(1, results["num_images"]), 4)}
    write_metrics_json(results, out / "metrics.json", extra=extra)
    write_report_md(results, out / "report.md", extra=extra)
    print(format_table(results))
    print(f"pfcn-eval: {results['num_images']} image(s) in {elapsed:.1f} s -> {out / 'metrics.json'}, "
          f"{out / 'report.md'}")
    if not args.predictions:
        print(f"next: re-score the saved predictions with  pfcn-eval --predictions {out / 'predictions'} "
              f"--gt-json {gt.json_path} --gt-png {gt.folder}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
