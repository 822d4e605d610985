"""Dataset names -> folders under $PFCN_DATASETS (detectron2's layout), synth folders, unknown names."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pfcn.data import DATA_ROOT_ENV, build_dataset, data_root, dataset_paths, known_datasets
from pfcn.data.synth import SynthSpec, generate_dataset
from tests.pfcn.data.panoptic_files import SAMPLE_IMAGES, SAMPLE_JSON, SAMPLE_PNGS


def test_official_names_use_detectron2_layout(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert data_root() == tmp_path
    for name in ("coco_2017_val_panoptic_separated", "coco_2017_val_panoptic"):
        p = dataset_paths(name)
        assert p.image_root == tmp_path / "coco" / "val2017"
        assert p.panoptic_root == tmp_path / "coco" / "panoptic_val2017"
        assert p.panoptic_json == tmp_path / "coco" / "annotations" / "panoptic_val2017.json"
    p = dataset_paths("coco_2017_train_panoptic_separated")
    assert (p.image_root, p.panoptic_root, p.panoptic_json) == (
        tmp_path / "coco/train2017", tmp_path / "coco/panoptic_train2017",
        tmp_path / "coco/annotations/panoptic_train2017.json")
    monkeypatch.delenv(DATA_ROOT_ENV)
    assert data_root() == Path("datasets")
    assert {"coco_2017_train_panoptic_separated", "coco_2017_val_panoptic_separated",
            "coco_2017_train_panoptic", "coco_2017_val_panoptic"} <= set(known_datasets())


def test_named_dataset_loads_from_root(monkeypatch, tmp_path):
    """The real sample laid out as COCO val2017 under a data root."""
    coco = tmp_path / "coco"
    shutil.copytree(SAMPLE_IMAGES, coco / "val2017")
    shutil.copytree(SAMPLE_PNGS, coco / "panoptic_val2017")
    (coco / "annotations").mkdir()
    shutil.copy(SAMPLE_JSON, coco / "annotations" / "panoptic_val2017.json")
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    ds = build_dataset("coco_2017_val_panoptic_separated")
    assert len(ds) == 2 and ds.meta.num_things == 80
    both = build_dataset(["coco_2017_val_panoptic", "coco_2017_val_panoptic_separated"])
    assert len(both) == 4 and both.gt_record(2).image_id == ds.gt_record(0).image_id


def test_missing_data_root_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    where = rf"panoptic_train2017\.json.*looked up under {tmp_path}.*PFCN_DATASETS"
    with pytest.raises(FileNotFoundError, match=where):
        build_dataset("coco_2017_train_panoptic_separated")


def test_unknown_name_lists_known_ones():
    message = (r"unknown dataset 'coco_2017_val_panoptic_seperated'.*Did you mean "
               r"'coco_2017_val_panoptic_separated'.*Known names: .*coco_2017_train_panoptic")
    with pytest.raises(ValueError, match=message):
        dataset_paths("coco_2017_val_panoptic_seperated")
    with pytest.raises(ValueError, match="no dataset name"):
        build_dataset([])


def test_synth_folder_is_a_name(tmp_path):
    generate_dataset(tmp_path / "s", 2, SynthSpec(height=32, width=32), seed=0, progress=False)
    p = dataset_paths(str(tmp_path / "s"))
    assert p.panoptic_json == tmp_path / "s" / "panoptic.json"
    assert len(build_dataset(str(tmp_path / "s"))) == 2
