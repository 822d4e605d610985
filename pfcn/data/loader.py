"""Training and test DataLoaders: worker processes, a seeded infinite sampler that resumes exactly, sharding.

Training follows detectron2's ``build_detection_train_loader`` semantics: an infinite stream of shuffled epochs
(``torch.randperm`` per epoch from one seeded generator, the same on every rank), rank r taking every
world_size-th element from position r; optional aspect-ratio grouping puts landscape (w > h) and portrait images in
separate batches, each bucket emitting a batch once full. Unlike detectron2 (which groups after loading, inside the
workers), grouping here is decided by the sampler from the image sizes the JSON records, so the whole batch
sequence is a pure function of (seed, rank, world size, batch size). Each sample's augmentation draws from
``numpy.random.default_rng([seed, position])`` where position is the sample's place in the global stream, so
samples do not depend on which worker loads them. Resuming at iteration k replays the index stream (no pixels) and
reproduces batches k, k+1, ... bit for bit.

A batch is a list of sample dicts (see `pfcn.data.coco_panoptic.PanopticDataset.sample`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pfcn.data.coco_panoptic import PanopticDataset
from pfcn.data.transforms import Transform, build_transforms

__all__ = [
    "TrainLoader",
    "TrainingBatchSampler",
    "aspect_group",
    "build_test_loader",
    "build_train_loader",
    "shard_indices",
    "trivial_collate",
]

SampleKey = tuple[int, int, int]  # (dataset index, seed, position in the global sample stream)


def trivial_collate(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep a batch as the list of its sample dicts (images differ in size; the model pads them)."""
    return batch


def aspect_group(height: int, width: int) -> int:
    """detectron2's aspect-ratio bucket: 0 for landscape (w > h), 1 otherwise."""
    return 0 if width > height else 1


def shard_indices(size: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(size)`` for inference (detectron2's InferenceSampler split:
    the first ``size % world_size`` ranks take one more)."""
    _check_rank(rank, world_size)
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world size {world_size}: need 0 <= rank < world_size")


def _worker_init(_: int) -> None:
    # Samples are decoded with numpy / PIL; one torch thread per worker avoids oversubscribing the cores.
    torch.set_num_threads(1)


class TrainingBatchSampler(Sampler[list[SampleKey]]):
    """Infinite, seeded, sharded batches of sample keys, optionally grouped by aspect ratio.

    Args:
        indices: dataset indices to draw from (e.g. after dropping images without instances).
        batch_size: images per batch on this rank.
        seed: shuffling and augmentation seed, the same on every rank.
        rank, world_size: this process's shard of the stream.
        groups: aspect bucket of each entry of ``indices`` (see `aspect_group`); None disables grouping.
        shuffle: shuffle each epoch (else ``indices`` in order, repeated).
        start_iter: number of batches already consumed; iteration starts at batch ``start_iter``.
    """

    def __init__(self, indices: Sequence[int], batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 groups: Sequence[int] | None = None, shuffle: bool = True, start_iter: int = 0) -> None:
        if len(indices) == 0:
            raise ValueError("TrainingBatchSampler: no images to sample from")
        if batch_size < 1:
            raise ValueError(f"TrainingBatchSampler: batch_size must be >= 1, got {batch_size}")
        if groups is not None and len(groups) != len(indices):
            raise ValueError(f"TrainingBatchSampler: {len(groups)} groups for {len(indices)} indices")
        if start_iter < 0:
            raise ValueError(f"TrainingBatchSampler: start_iter must be >= 0, got {start_iter}")
        _check_rank(rank, world_size)
        self.indices = [int(i) for i in indices]
        self.batch_size = int(batch_size)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.groups = None if groups is None else [int(g) for g in groups]
        self.shuffle = shuffle
        self.start_iter = int(start_iter)

    def _global_stream(self) -> Iterator[int]:
        """Positions into ``indices``: shuffled epochs, back to back, forever."""
        g = torch.Generator()
        g.manual_seed(self.seed)
        n = len(self.indices)
        while True:
            yield from (torch.randperm(n, generator=g).tolist() if self.shuffle else range(n))

    def _rank_stream(self) -> Iterator[tuple[int, int]]:
        """(global position, entry of ``indices``) of this rank's share of the stream."""
        stream = enumerate(self._global_stream())
        return itertools.islice(stream, self.rank, None, self.world_size)

    def _batches(self) -> Iterator[list[tuple[int, int]]]:
        stream = self._rank_stream()
        if self.groups is None:
            while True:
                yield list(itertools.islice(stream, self.batch_size))
        buckets: dict[int, list[tuple[int, int]]] = {}
        for pos, j in stream:
            bucket = buckets.setdefault(self.groups[j], [])
            bucket.append((pos, j))
            if len(bucket) == self.batch_size:
                yield bucket[:]
                bucket.clear()

    def __iter__(self) -> Iterator[list[SampleKey]]:
        batches = itertools.islice(self._batches(), self.start_iter, None)
        for batch in batches:
            yield [(self.indices[j], self.seed, pos) for pos, j in batch]


class _SeededSamples(Dataset):
    """Maps a sample key to the sample, its augmentation drawn from ``default_rng([seed, position])``."""

    def __init__(self, dataset: PanopticDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: SampleKey) -> dict[str, Any]:
        index, seed, pos = key
        return self.dataset.sample(index, np.random.default_rng([seed, pos]))


class TrainLoader:
    """The infinite training batch stream, whose position can be saved and restored.

    ``state_dict()`` records how many batches were handed out; a loader built with the same data, seed, batch size
    and world size then ``load_state_dict``-ed (or built with ``start_iter``) continues with the very next batch.
    """

    def __init__(self, dataset: PanopticDataset, sampler: TrainingBatchSampler, num_workers: int) -> None:
        self.dataset = dataset
        self.sampler = sampler
        self.num_workers = int(num_workers)
        self.iter = sampler.start_iter

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        self.sampler.start_iter = self.iter
        loader = DataLoader(_SeededSamples(self.dataset), batch_sampler=self.sampler, num_workers=self.num_workers,
                            collate_fn=trivial_collate, worker_init_fn=_worker_init if self.num_workers else None)
        batches = iter(loader)
        try:
            for batch in batches:
                self.iter += 1
                yield batch
        finally:
            # Stop the workers now, not when a traceback holding this frame is collected (which can be much
            # later, e.g. after a worker's error was reported, and then blocks on the dead workers' queues).
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()

    def state_dict(self) -> dict[str, int]:
        s = self.sampler
        return {"iter": self.iter, "seed": s.seed, "batch_size": s.batch_size, "rank": s.rank,
                "world_size": s.world_size, "num_images": len(s.indices)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position; the stream-defining values must match this loader's."""
        mine = self.state_dict()
        for key in ("seed", "batch_size", "world_size", "rank", "num_images"):
            if key in state and int(state[key]) != mine[key]:
                raise ValueError(f"TrainLoader.load_state_dict: saved {key}={state[key]} but this loader has "
                                 f"{key}={mine[key]}; the batch stream would differ")
        if "iter" not in state or int(state["iter"]) < 0:
            raise ValueError(f"TrainLoader.load_state_dict: no valid 'iter' in {state}")
        self.iter = int(state["iter"])


def _train_seed(cfg, seed: int | None) -> int:
    if seed is not None:
        return int(seed)
    return int(cfg.SEED) if int(cfg.SEED) >= 0 else 0  # a fixed default keeps runs resumable


def build_train_loader(cfg, dataset: PanopticDataset, *, batch_size: int | None = None,
                       num_workers: int | None = None, seed: int | None = None, start_iter: int = 0,
                       rank: int = 0, world_size: int = 1,
                       transforms: Sequence[Transform] | None = None) -> TrainLoader:
    """The training loader of ``cfg`` over ``dataset``.

    Args:
        cfg: reads INPUT.* (augmentation, FORMAT), DATALOADER.NUM_WORKERS / ASPECT_RATIO_GROUPING /
            FILTER_EMPTY_ANNOTATIONS, SOLVER.IMS_PER_BATCH and SEED.
        dataset: the untransformed dataset (e.g. from `pfcn.data.build_dataset`).
        batch_size: images per batch on this rank; default SOLVER.IMS_PER_BATCH / world_size.
        num_workers: loader processes; default DATALOADER.NUM_WORKERS (0 = load in this process).
        seed: default cfg.SEED, or 0 when cfg.SEED is negative (a fixed seed keeps training resumable).
        start_iter: batches already consumed (resume).
        rank, world_size: distributed shard.
        transforms: replaces the config's augmentation list.
    """
    _check_rank(rank, world_size)
    if batch_size is None:
        total = int(cfg.SOLVER.IMS_PER_BATCH)
        if total % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={total} is not divisible by the world size {world_size}")
        batch_size = total // world_size
    view = dataset.with_transforms(build_transforms(cfg, True) if transforms is None else transforms,
                                   image_format=str(cfg.INPUT.FORMAT), with_targets=True)
    indices = list(range(len(view)))
    if bool(cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS):
        indices = [i for i in indices if view.has_instances(i)]
        if not indices:
            raise ValueError(f"{dataset.name}: no image has a non-crowd thing segment, so "
                             "DATALOADER.FILTER_EMPTY_ANNOTATIONS leaves nothing to train on")
    groups = None
    if bool(cfg.DATALOADER.ASPECT_RATIO_GROUPING):
        groups = [aspect_group(*view.image_size(i)) for i in indices]
    sampler = TrainingBatchSampler(indices, batch_size, seed=_train_seed(cfg, seed), rank=rank,
                                   world_size=world_size, groups=groups, start_iter=start_iter)
    workers = int(cfg.DATALOADER.NUM_WORKERS) if num_workers is None else int(num_workers)
    return TrainLoader(view, sampler, workers)


def build_test_loader(cfg, dataset: PanopticDataset, *, batch_size: int = 1, num_workers: int | None = None,
                      rank: int = 0, world_size: int = 1, with_targets: bool = False) -> DataLoader:
    """One pass over this rank's contiguous shard, in dataset order, with the test resize of ``cfg``.

    Samples carry image / height / width / file_name / image_id; ``with_targets=True`` adds instances and sem_seg
    at the test resolution (evaluation reads the original-size ground truth itself).
    """
    if batch_size < 1:
        raise ValueError(f"build_test_loader: batch_size must be >= 1, got {batch_size}")
    view = dataset.with_transforms(build_transforms(cfg, False), image_format=str(cfg.INPUT.FORMAT),
                                   with_targets=with_targets)
    workers = int(cfg.DATALOADER.NUM_WORKERS) if num_workers is None else int(num_workers)
    return DataLoader(view, sampler=list(shard_indices(len(view), rank, world_size)), batch_size=batch_size,
                      num_workers=workers, collate_fn=trivial_collate,
                      worker_init_fn=_worker_init if workers else None)
