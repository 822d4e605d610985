"""Loaders: worker processes, determinism, exact resume, aspect grouping, sharding, empty-image filtering."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from pfcn.config import get_cfg
from pfcn.data import (
    PanopticDataset,
    TrainingBatchSampler,
    build_test_loader,
    build_train_loader,
    shard_indices,
)
from pfcn.data.synth import SynthSpec, generate_dataset
from tests.pfcn.data.panoptic_files import seg, simple_image, write_dataset


def _synth(root: Path, num: int, h: int, w: int, seed: int) -> PanopticDataset:
    generate_dataset(root, num, SynthSpec(height=h, width=w, num_things=2, num_stuff=2, max_instances=3),
                     seed=seed, progress=False)
    return PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> PanopticDataset:
    """10 landscape and 6 portrait images with the same categories."""
    base = tmp_path_factory.mktemp("mixed")
    land = _synth(base / "land", 10, 24, 40, seed=1)
    port = _synth(base / "port", 6, 40, 24, seed=2)
    return PanopticDataset.concat([land, port])


def _cfg(grouping: bool = False, workers: int = 0):
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (20, 24, 28)
    cfg.INPUT.MAX_SIZE_TRAIN = 60
    cfg.INPUT.MIN_SIZE_TEST = 32
    cfg.INPUT.MAX_SIZE_TEST = 60
    cfg.DATALOADER.ASPECT_RATIO_GROUPING = grouping
    cfg.DATALOADER.NUM_WORKERS = workers
    cfg.SOLVER.IMS_PER_BATCH = 4
    cfg.SEED = 7
    return cfg


def _take(loader, n):
    return list(itertools.islice(iter(loader), n))


def _same(a, b) -> bool:
    """Batches equal sample by sample: file, image pixels, targets."""
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if x["file_name"] != y["file_name"] or not torch.equal(x["image"], y["image"]):
            return False
        if not torch.equal(x["sem_seg"], y["sem_seg"]):
            return False
        if not torch.equal(x["instances"]["masks"], y["instances"]["masks"]):
            return False
    return True


def test_workers_give_the_same_batches_as_the_main_process(mixed):
    """Augmentation is keyed on the sample's stream position, not on the worker that loads it."""
    main = _take(build_train_loader(_cfg(), mixed, batch_size=2, num_workers=0), 5)
    workers = _take(build_train_loader(_cfg(), mixed, batch_size=2, num_workers=2), 5)
    assert all(_same(a, b) for a, b in zip(main, workers))
    sizes = {tuple(s["image"].shape[1:]) for batch in main for s in batch}
    assert len(sizes) > 1  # the short side is drawn per image from MIN_SIZE_TRAIN
    for batch in main:
        for s in batch:
            assert min(s["image"].shape[1:]) in (20, 24, 28) and s["image"].dtype == torch.uint8
            assert s["sem_seg"].shape == s["image"].shape[1:]
            assert s["instances"]["masks"].shape[1:] == s["image"].shape[1:]


def test_resume_reproduces_the_continuation(mixed):
    cfg = _cfg(grouping=True)
    reference = build_train_loader(cfg, mixed, batch_size=3)
    stream = iter(reference)
    first = [next(stream) for _ in range(4)]
    state = reference.state_dict()
    assert state["iter"] == 4
    rest = [next(stream) for _ in range(5)]

    resumed = build_train_loader(cfg, mixed, batch_size=3)
    resumed.load_state_dict(state)
    again = _take(resumed, 5)
    assert all(_same(a, b) for a, b in zip(rest, again))
    assert not _same(first[0], again[0])
    also = _take(build_train_loader(cfg, mixed, batch_size=3, start_iter=4), 2)
    assert _same(also[0], rest[0]) and _same(also[1], rest[1])

    other_seed = build_train_loader(cfg, mixed, batch_size=3, seed=8)
    with pytest.raises(ValueError, match="seed"):
        other_seed.load_state_dict(state)


def test_aspect_ratio_grouping(mixed):
    loader = build_train_loader(_cfg(grouping=True), mixed, batch_size=3)
    batches = _take(loader, 12)
    kinds = set()
    for batch in batches:
        landscape = {s["image"].shape[2] > s["image"].shape[1] for s in batch}
        assert len(landscape) == 1, "a batch mixes landscape and portrait images"
        kinds |= landscape
    assert kinds == {True, False}
    ungrouped = _take(build_train_loader(_cfg(grouping=False), mixed, batch_size=3), 12)
    assert any(len({s["image"].shape[2] > s["image"].shape[1] for s in b}) == 2 for b in ungrouped)


def test_sampler_epochs_and_shards():
    indices = list(range(10, 22))  # 12 entries
    one = TrainingBatchSampler(indices, 3, seed=5)
    keys = [k for b in itertools.islice(iter(one), 8) for k in b]  # two epochs
    assert sorted(k[0] for k in keys[:12]) == indices and sorted(k[0] for k in keys[12:]) == indices
    assert [k[2] for k in keys] == list(range(24)) and all(k[1] == 5 for k in keys)
    assert [k[0] for k in keys[:12]] != indices  # shuffled

    ranks = [TrainingBatchSampler(indices, 3, seed=5, rank=r, world_size=2) for r in range(2)]
    per_rank = [[k for b in itertools.islice(iter(s), 2) for k in b] for s in ranks]
    assert sorted(k[2] for ks in per_rank for k in ks) == list(range(12))
    assert sorted(k[0] for ks in per_rank for k in ks) == indices  # the ranks split the first epoch
    merged = sorted((k for ks in per_rank for k in ks), key=lambda k: k[2])
    assert merged == keys[:12]  # the same global stream as a single process

    with pytest.raises(ValueError, match="rank"):
        TrainingBatchSampler(indices, 3, seed=5, rank=2, world_size=2)
    with pytest.raises(ValueError, match="no images"):
        TrainingBatchSampler([], 3, seed=5)


def test_batch_size_from_config_and_world_size(mixed):
    loader = build_train_loader(_cfg(), mixed, world_size=2, rank=1)
    assert loader.sampler.batch_size == 2
    with pytest.raises(ValueError, match="IMS_PER_BATCH=4 is not divisible"):
        build_train_loader(_cfg(), mixed, world_size=3, rank=0)


def test_filter_empty_annotations(tmp_path):
    stuff_only = simple_image()
    ids = stuff_only["ids"].copy()
    ids[(ids == 11) | (ids == 12)] = 1000
    ids[ids == 13] = 2000
    root = write_dataset(tmp_path / "d", [simple_image(), {"ids": ids, "segments": [seg(1000, 20), seg(2000, 31)]}])
    ds = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")
    assert [ds.has_instances(i) for i in range(2)] == [True, False]
    cfg = _cfg()
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True
    loader = build_train_loader(cfg, ds, batch_size=2)
    assert loader.sampler.indices == [0]
    assert {s["image_id"] for b in _take(loader, 2) for s in b} == {100}
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = False
    assert build_train_loader(cfg, ds, batch_size=2).sampler.indices == [0, 1]


def test_test_loader_shards_in_order_at_test_size(mixed):
    n = len(mixed)
    shards = [list(shard_indices(n, r, 3)) for r in range(3)]
    assert [len(s) for s in shards] == [6, 5, 5] and sum(shards, []) == list(range(n))
    cfg = _cfg(workers=2)
    seen = []
    for r in range(3):
        for batch in build_test_loader(cfg, mixed, batch_size=2, rank=r, world_size=3):
            for s in batch:
                h, w = s["image"].shape[1:]
                assert min(h, w) == 32 and "instances" not in s
                assert (s["height"], s["width"]) in ((24, 40), (40, 24))
                seen.append(s["image_id"])
    assert len(seen) == n
    assert seen == [mixed.gt_record(i).image_id for i in range(n)]
    with_targets = next(iter(build_test_loader(cfg, mixed, num_workers=0, with_targets=True)))[0]
    assert with_targets["sem_seg"].shape == with_targets["image"].shape[1:]


def test_worker_errors_name_the_file(tmp_path):
    root = write_dataset(tmp_path / "d", [simple_image()])
    ds = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")
    (root / "panoptic" / "0000.png").write_bytes(b"not a png")
    with pytest.raises(Exception, match=r"0000\.png: cannot decode panoptic PNG"):
        _take(build_train_loader(_cfg(), ds, batch_size=1, num_workers=2), 1)


def test_seed_defaults_and_seed_matters(mixed):
    cfg = _cfg()
    cfg.SEED = -1
    assert build_train_loader(cfg, mixed, batch_size=2).sampler.seed == 0  # fixed, so runs stay resumable
    assert build_train_loader(_cfg(), mixed, batch_size=2).sampler.seed == 7  # cfg.SEED

    def files(seed):
        return [s["file_name"] for b in _take(build_train_loader(_cfg(), mixed, batch_size=2, seed=seed), 4)
                for s in b]
    assert files(1) == files(1)
    assert files(1) != files(2)
