"""Where a command's ground truth comes from: a dataset name, or --images/--gt-json/--gt-png; shared by the CLIs.

pfcn-eval and pfcn-parity both read a COCO-panoptic ground truth and the photographs that go with it; this module
is the one place that turns their flags into (ground truth, image folder) and finds each image's file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pfcn.evaluation.panoptic_format import PanopticGroundTruth
from pfcn.image_io import IMAGE_SUFFIXES
from pfcn.metadata import CategoryMeta


def resolve_dataset(name: str) -> tuple[Path, Path, Path]:
    """(images folder, GT JSON, GT PNG folder) of a dataset name under $PFCN_DATASETS, or of a dataset folder."""
    from pfcn.data.catalog import dataset_paths

    paths = dataset_paths(name)
    return Path(paths.image_root), Path(paths.panoptic_json), Path(paths.panoptic_root)


def ground_truth(dataset: str | None, images: str | None, gt_json: str | None,
                 gt_png: str | None) -> tuple[PanopticGroundTruth, Path | None]:
    """The ground truth and the photographs' folder from ``--dataset`` or ``--images/--gt-json/--gt-png``."""
    if dataset:
        if gt_json or gt_png or images:
            raise ValueError("give either --dataset or --images/--gt-json/--gt-png, not both")
        folder, js, png = resolve_dataset(dataset)
        return PanopticGroundTruth(js, png), folder
    if not gt_json:
        raise ValueError("the ground truth is missing: give --dataset NAME or --gt-json J (with --gt-png DIR)")
    return PanopticGroundTruth(Path(gt_json), Path(gt_png) if gt_png else None), Path(images) if images else None


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


def model_categories(model_meta: CategoryMeta, gt_meta: CategoryMeta, source: str) -> CategoryMeta:
    """The model must speak the dataset's categories; a model without metadata (generic ids) adopts them."""
    if (model_meta.thing_ids, model_meta.stuff_ids) == (gt_meta.thing_ids, gt_meta.stuff_ids):
        return model_meta
    generic = CategoryMeta.generic(model_meta.num_things, model_meta.num_stuff)
    same_size = (model_meta.num_things, model_meta.num_stuff) == (gt_meta.num_things, gt_meta.num_stuff)
    if same_size and (model_meta.thing_ids, model_meta.stuff_ids) == (generic.thing_ids, generic.stuff_ids):
        return gt_meta
    raise ValueError(f"{source}: the model's categories ({model_meta.num_things} things, ids "
                     f"{list(model_meta.thing_ids)[:5]}..., {model_meta.num_stuff - 1} stuff) are not the "
                     f"dataset's ({gt_meta.num_things} things, ids {list(gt_meta.thing_ids)[:5]}..., "
                     f"{gt_meta.num_stuff - 1} stuff)")
