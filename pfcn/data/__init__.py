"""Data: COCO-panoptic datasets with PanopticFCN's targets, augmentation, loaders, and a synthetic generator.

    catalog       -> dataset names of the official configs -> folders under $PFCN_DATASETS
    coco_panoptic -> PanopticDataset: images + panoptic PNGs + JSON -> sample dicts (instances, sem_seg)
    transforms    -> shortest-edge resize and flip, detectron2's rules
    loader        -> training (infinite, seeded, resumable, grouped, sharded) and test DataLoaders
    synth         -> a learnable synthetic COCO-panoptic dataset (pfcn-synth)
"""

from pfcn.data.catalog import DATA_ROOT_ENV, DatasetPaths, build_dataset, data_root, dataset_paths, known_datasets
from pfcn.data.coco_panoptic import (
    IGNORE_LABEL,
    PanopticDataError,
    PanopticDataset,
    PanopticRecord,
    ids_from_rgb,
    panoptic_targets,
    read_panoptic_png,
)
from pfcn.data.loader import (
    TrainingBatchSampler,
    TrainLoader,
    aspect_group,
    build_test_loader,
    build_train_loader,
    shard_indices,
    trivial_collate,
)
from pfcn.data.synth import SynthSpec, generate_dataset, render_sample, synth_categories
from pfcn.data.transforms import RandomFlip, ResizeShortestEdge, apply_transforms, build_transforms, resized_shape

__all__ = [
    "DATA_ROOT_ENV",
    "IGNORE_LABEL",
    "DatasetPaths",
    "PanopticDataError",
    "PanopticDataset",
    "PanopticRecord",
    "RandomFlip",
    "ResizeShortestEdge",
    "SynthSpec",
    "TrainLoader",
    "TrainingBatchSampler",
    "apply_transforms",
    "aspect_group",
    "build_dataset",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "data_root",
    "dataset_paths",
    "generate_dataset",
    "ids_from_rgb",
    "known_datasets",
    "panoptic_targets",
    "read_panoptic_png",
    "render_sample",
    "resized_shape",
    "shard_indices",
    "synth_categories",
    "trivial_collate",
]
