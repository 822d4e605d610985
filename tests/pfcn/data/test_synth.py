"""pfcn.data.synth: determinism, COCO-panoptic correctness (checked with panopticapi / pycocotools), variety."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from panopticapi.utils import rgb2id
from pycocotools import mask as mask_utils

from pfcn.data import PanopticDataset
from pfcn.data.synth import STUFF_ID_OFFSET, SynthSpec, generate_dataset, render_sample, synth_categories

SPEC = SynthSpec(height=64, width=80, num_things=4, num_stuff=3, max_instances=6)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, 24, SPEC, seed=3, progress=False)
    return root


def test_same_seed_same_bytes_other_seed_differs(synth, tmp_path):
    generate_dataset(tmp_path / "again", 24, SPEC, seed=3, progress=False)
    assert _files(tmp_path / "again") == _files(synth)
    generate_dataset(tmp_path / "other", 24, SPEC, seed=4, progress=False)
    other = _files(tmp_path / "other")
    assert other.keys() == _files(synth).keys()
    differing = [k for k in other if k.startswith("images/") and other[k] != _files(synth)[k]]
    assert len(differing) == 24
    # image i depends on (seed, i) only: a shorter run is a prefix
    generate_dataset(tmp_path / "short", 5, SPEC, seed=3, progress=False)
    short = _files(tmp_path / "short")
    assert all(short[k] == _files(synth)[k] for k in short if not k.endswith(".json"))


def test_no_temporary_files_left(synth):
    assert not [p for p in synth.rglob("*") if p.name.startswith(".")]
    assert len(list((synth / "images").glob("*.jpg"))) == len(list((synth / "panoptic").glob("*.png"))) == 24


def test_panoptic_format_is_exact(synth):
    """Every PNG id is in segments_info and vice versa; area and bbox equal what pycocotools measures."""
    js = json.loads((synth / "panoptic.json").read_text())
    cats = {c["id"]: c for c in js["categories"]}
    images = {im["id"]: im for im in js["images"]}
    assert len(js["annotations"]) == len(images) == 24
    for ann in js["annotations"]:
        im = images[ann["image_id"]]
        with Image.open(synth / "images" / im["file_name"]) as photo:
            assert photo.mode == "RGB" and photo.size == (SPEC.width, SPEC.height) == (im["width"], im["height"])
        with Image.open(synth / "panoptic" / ann["file_name"]) as png:
            assert png.mode == "RGB"
            ids = rgb2id(np.asarray(png, dtype=np.uint32))
        listed = {s["id"] for s in ann["segments_info"]}
        assert len(listed) == len(ann["segments_info"])
        assert set(np.unique(ids).tolist()) - {0} == listed
        for s in ann["segments_info"]:
            assert s["category_id"] in cats and s["iscrowd"] == 0
            rle = mask_utils.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
            assert s["area"] == int(mask_utils.area(rle)) > 0
            assert s["bbox"] == [int(v) for v in mask_utils.toBbox(rle)]
        stuff_cats = [s["category_id"] for s in ann["segments_info"] if not cats[s["category_id"]]["isthing"]]
        assert len(stuff_cats) == len(set(stuff_cats)), "a stuff class must be one segment per image"


def test_categories():
    cats = synth_categories(3, 2)
    assert [c["id"] for c in cats] == [1, 2, 3, STUFF_ID_OFFSET + 1, STUFF_ID_OFFSET + 2]
    assert [c["isthing"] for c in cats] == [1, 1, 1, 0, 0]
    assert [c["name"] for c in cats] == ["circle", "square", "triangle", "grain", "stripes"]
    colors = [tuple(c["color"]) for c in synth_categories(8, 8)]
    assert len(set(colors)) == 16
    assert len({c["name"] for c in synth_categories(20, 12)}) == 32  # repeated shapes get a suffix


def test_variety_scales_occlusion_void(synth):
    """Things from ~8 px to most of the image, occlusions, void seams, every class present somewhere."""
    js = json.loads((synth / "panoptic.json").read_text())
    thing_sides, thing_cats, stuff_cats, void = [], set(), set(), 0
    for ann in js["annotations"]:
        for s in ann["segments_info"]:
            if s["category_id"] < STUFF_ID_OFFSET:
                thing_sides.append(max(s["bbox"][2:]))
                thing_cats.add(s["category_id"])
            else:
                stuff_cats.add(s["category_id"])
        with Image.open(synth / "panoptic" / ann["file_name"]) as png:
            ids = rgb2id(np.asarray(png, dtype=np.uint32))
        void += int((ids == 0).any())
    assert thing_cats == {1, 2, 3, 4} and stuff_cats == {101, 102, 103}
    assert min(thing_sides) <= 12 and max(thing_sides) >= 0.5 * min(SPEC.height, SPEC.width)
    assert np.median(thing_sides) >= 12  # not tiny on average
    assert 0 < void < 24

    # occlusion: things overlap, so some thing pixels border pixels of another thing
    touching = 0
    for i in range(24):
        _, ids, segments = render_sample(SPEC, 3, i)
        thing = np.isin(ids, [s["id"] for s in segments if s["category_id"] < STUFF_ID_OFFSET])
        pair = thing[:, 1:] & thing[:, :-1] & (ids[:, 1:] != ids[:, :-1])
        touching += int(pair.any())
    assert touching >= 3


def test_readable_by_pfcn_dataset(synth):
    ds = PanopticDataset(synth / "images", synth / "panoptic", synth / "panoptic.json")
    assert ds.meta.thing_ids == (1, 2, 3, 4) and ds.meta.stuff_ids == (101, 102, 103)
    for i in range(len(ds)):
        s = ds[i]
        assert s["sem_seg"].shape == (SPEC.height, SPEC.width)
        assert len(s["instances"]["classes"]) == sum(
            1 for x in ds.gt_record(i).segments_info if x["category_id"] < STUFF_ID_OFFSET)


def test_stuff_only_and_things_only(tmp_path):
    _, ids, segs = render_sample(SynthSpec(height=32, width=32, num_things=0, num_stuff=2), 0, 0)
    assert segs and all(s["category_id"] > STUFF_ID_OFFSET for s in segs)
    _, ids, segs = render_sample(SynthSpec(height=32, width=32, num_things=2, num_stuff=0), 0, 0)
    assert segs and all(s["category_id"] <= 2 for s in segs) and (ids == 0).any()


def test_png_photos(tmp_path):
    spec = SynthSpec(height=32, width=40, image_format="png")
    generate_dataset(tmp_path, 2, spec, seed=0, progress=False)
    with Image.open(tmp_path / "images" / "000001.png") as f:
        a = np.asarray(f)
    image, _, _ = render_sample(spec, 0, 1)
    assert np.array_equal(a, image)  # lossless photos are exactly the rendered pixels


@pytest.mark.parametrize("kwargs, message", [
    ({"height": 8}, "at least 16x16"),
    ({"num_things": 0, "num_stuff": 0}, "at least one"),
    ({"num_things": 51}, "num_things must be in 0..50"),
    ({"max_instances": 0}, "max_instances"),
    ({"image_format": "gif"}, "image_format"),
])
def test_bad_spec(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SynthSpec(**kwargs)


def test_bad_num(tmp_path):
    with pytest.raises(ValueError, match="num must be >= 1"):
        generate_dataset(tmp_path, 0)
