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
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm

from pfcn.evaluation import (PanopticEvaluator, PanopticGroundTruth, PanopticPredictionWriter, encode_masks,
                             evaluate_prediction_files, format_table, write_metrics_json, write_report_md)
from pfcn.image_io import IMAGE_SUFFIXES, read_image
from pfcn.metadata import CategoryMeta
from pfcn.tools.common import ensure_dir, load_cfg, parse_with_overrides, run_cli

__all__ = ["build_parser", "main", "predict_dataset", "image_path_for"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcn-eval", description=__doc__.split("\n\n")[0],
                                epilog="Trailing KEY VALUE pairs override the config, e.g. "
                                       "MODEL.POSITION_HEAD.THING.THRES 0.2")
    p.add_argument("--config", help="config YAML (needed unless --predictions)")
    p.add_argument("--weights", default=None,
                   help="checkpoint (.pth, official or pfcn); without it the model keeps its random initialisation")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument("--batch", type=int, default=1, help="images per forward pass (default: 1)")
    data = p.add_argument_group("ground truth")
    data.add_argument("--dataset", help="a dataset name resolved under $PFCN_DATASETS "
                                        "(e.g. coco_2017_val_panoptic_separated) or a pfcn-synth folder")
    data.add_argument("--images", help="folder of the photographs")
    data.add_argument("--gt-json", help="COCO panoptic ground-truth JSON")
    data.add_argument("--gt-png", help="folder of ground-truth panoptic PNGs (default: the JSON path without .json)")
    p.add_argument("--predictions", help="score this prediction folder or panoptic JSON instead of running a model")
    p.add_argument("--out", default="eval_out", help="output folder (default: eval_out)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _resolve_dataset(name: str) -> tuple[Path | None, Path, Path]:
    """(images folder, GT JSON, GT PNG folder) of a named dataset (or a pfcn-synth folder), from pfcn.data."""
    from pfcn.data.catalog import dataset_paths  # the data package owns the name -> folder layout

    paths = dataset_paths(name)
    return Path(paths.image_root), Path(paths.panoptic_json), Path(paths.panoptic_root)


def _ground_truth(args: argparse.Namespace) -> tuple[PanopticGroundTruth, Path | None]:
    if args.dataset:
        if args.gt_json or args.gt_png or args.images:
            raise ValueError("give either --dataset or --images/--gt-json/--gt-png, not both")
        images, gt_json, gt_png = _resolve_dataset(args.dataset)
    else:
        if not args.gt_json:
            raise ValueError("the ground truth is missing: give --dataset NAME or --gt-json J (with --gt-png DIR)")
        images = Path(args.images) if args.images else None
        gt_json, gt_png = Path(args.gt_json), Path(args.gt_png) if args.gt_png else None
    return PanopticGroundTruth(gt_json, gt_png), images


def image_path_for(gt: PanopticGroundTruth, images: Path, image_id: Any) -> Path:
    """The photograph of a GT image: the ``images`` entry's file_name, else the PNG's stem with an image suffix."""
    name = gt.image_info(image_id).get("file_name")
    if name:
        return images / name
    stem = Path(gt.annotations[image_id]["file_name"]).stem
    for suffix in IMAGE_SUFFIXES:
        if (images / f"{stem}{suffix}").is_file():
            return images / f"{stem}{suffix}"
    raise FileNotFoundError(f"{images}: no image file for image_id {image_id!r} (looked for {stem}.*)")


def _model_meta(predictor_meta: CategoryMeta, gt_meta: CategoryMeta, source: str) -> CategoryMeta:
    """The model must speak the dataset's categories; a model without metadata (generic ids) adopts them."""
    if (predictor_meta.thing_ids, predictor_meta.stuff_ids) == (gt_meta.thing_ids, gt_meta.stuff_ids):
        return predictor_meta
    generic = CategoryMeta.generic(predictor_meta.num_things, predictor_meta.num_stuff)
    same_size = (predictor_meta.num_things, predictor_meta.num_stuff) == (gt_meta.num_things, gt_meta.num_stuff)
    if same_size and (predictor_meta.thing_ids, predictor_meta.stuff_ids) == (generic.thing_ids, generic.stuff_ids):
        return gt_meta
    raise ValueError(f"{source}: the model's categories ({predictor_meta.num_things} things, ids "
                     f"{list(predictor_meta.thing_ids)[:5]}..., {predictor_meta.num_stuff - 1} stuff) are not the "
                     f"dataset's ({gt_meta.num_things} things, ids {list(gt_meta.thing_ids)[:5]}..., "
                     f"{gt_meta.num_stuff - 1} stuff)")


def predict_dataset(predictor: Any, gt: PanopticGroundTruth, images: Path, image_ids: list[Any], batch: int = 1,
                    progress: bool = True) -> Iterator[tuple[Any, Any]]:
    """Run the model over GT images: yields (image_id, PanopticResult) in ``image_ids`` order.

    The only place that touches the model, so any backend with ``predict(images, file_names, image_ids)`` fits.
    """
    bar = tqdm(total=len(image_ids), desc="pfcn-eval", unit="img", disable=not progress)
    try:
        for start in range(0, len(image_ids), max(1, batch)):
            ids = image_ids[start:start + max(1, batch)]
            paths = [image_path_for(gt, images, i) for i in ids]
            results = predictor.predict([read_image(p) for p in paths], file_names=[p.name for p in paths],
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
    if not args.config:
        raise ValueError("--config is required to run a model (or give --predictions to score files)")
    if images is None:
        raise ValueError("--images DIR is required to run a model on --gt-json")
    from pfcn.predictor import Predictor  # imported here: scoring files needs no torch model

    rank, world = _distributed()
    if world > 1:
        import torch
        import torch.distributed as dist

        if args.device.startswith("cuda"):
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(args.device)
        dist.init_process_group(backend="nccl" if args.device.startswith("cuda") else "gloo")
    try:
        cfg = load_cfg(args)
        predictor = Predictor.from_files(cfg, args.weights, args.device, batch_size=args.batch)
        predictor.meta = _model_meta(predictor.meta, gt.meta, str(args.weights or args.config))
        if args.weights is None and rank == 0:
            print("pfcn-eval: no --weights given; evaluating the randomly initialised model")
        image_ids = gt.image_ids[rank::world]
        evaluator = PanopticEvaluator(gt)
        writer = PanopticPredictionWriter(out / "predictions", gt.meta)
        for image_id, result in predict_dataset(predictor, gt, images, image_ids, args.batch,
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
    gt, images = _ground_truth(args)
    start = time.perf_counter()
    out = ensure_dir(args.out)
    if args.predictions:
        if args.config or args.weights:
            raise ValueError("--predictions scores files; it takes no --config/--weights")
        results = evaluate_prediction_files(gt, args.predictions, progress=not args.no_progress)
        source = f"prediction files {args.predictions}"
    else:
        results = _evaluate_model(args, gt, images, out)
        if results is None:  # a non-zero rank: rank 0 reports
            return 0
        source = f"model {args.config} with weights {args.weights or '(random init)'}"
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
