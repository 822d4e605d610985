"""PanopticDataset: the real sample, the separated category mapping, targets, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from panopticapi.utils import rgb2id
from pycocotools import mask as mask_utils

from pfcn.data import IGNORE_LABEL, PanopticDataError, PanopticDataset, RandomFlip, read_panoptic_png
from pfcn.image_io import read_image
from pfcn.metadata import CategoryMeta
from tests.pfcn.data.panoptic_files import (
    CATEGORIES,
    SAMPLE_IMAGES,
    SAMPLE_JSON,
    SAMPLE_PNGS,
    copy_sample,
    rgb_from_ids,
    seg,
    simple_image,
    write_dataset,
)


def _sample_dataset(**kw) -> PanopticDataset:
    return PanopticDataset(SAMPLE_IMAGES, SAMPLE_PNGS, SAMPLE_JSON, **kw)


def test_sample_loads_with_reference_targets():
    """Every mask, class, box and stuff label of the real sample, checked against panopticapi + pycocotools."""
    ds = _sample_dataset()
    data = json.loads(SAMPLE_JSON.read_text())
    cats = data["categories"]
    thing_ids = [c["id"] for c in cats if c["isthing"]]
    stuff_ids = [c["id"] for c in cats if not c["isthing"]]
    assert len(ds) == len(data["annotations"]) == 2
    assert (ds.meta.num_things, ds.meta.num_stuff) == (80, 54)
    for i, ann in enumerate(data["annotations"]):
        s = ds[i]
        with Image.open(SAMPLE_PNGS / ann["file_name"]) as png:
            ids = rgb2id(np.asarray(png, dtype=np.uint32))
        h, w = ids.shape
        assert s["image"].dtype == torch.uint8 and s["image"].shape == (3, h, w)
        assert (s["height"], s["width"]) == (h, w)
        assert s["image_id"] == ann["image_id"]
        assert Path(s["file_name"]).name == Path(ann["file_name"]).with_suffix(".jpg").name

        things = [x for x in ann["segments_info"] if x["category_id"] in thing_ids and not x["iscrowd"]]
        inst = s["instances"]
        assert inst["masks"].dtype == torch.bool and inst["classes"].dtype == torch.int64
        assert inst["boxes"].dtype == torch.float32
        assert len(things) == inst["masks"].shape[0] == len(inst["classes"]) == len(inst["boxes"])
        for k, x in enumerate(things):
            ref = ids == x["id"]
            assert np.array_equal(inst["masks"][k].numpy(), ref)
            assert int(inst["classes"][k]) == thing_ids.index(x["category_id"])
            bx, by, bw, bh = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(ref.astype(np.uint8))))
            assert inst["boxes"][k].tolist() == [bx, by, bx + bw, by + bh]

        ref_sem = np.full((h, w), 255, np.int64)
        for x in ann["segments_info"]:
            if x["iscrowd"]:
                continue
            cid = x["category_id"]
            ref_sem[ids == x["id"]] = 0 if cid in thing_ids else stuff_ids.index(cid) + 1
        assert np.array_equal(s["sem_seg"].numpy(), ref_sem)
        crowd = [x for x in ann["segments_info"] if x["iscrowd"]]
        assert crowd, "the sample has crowd segments; they must be ignored"
        for x in crowd:
            assert (s["sem_seg"].numpy()[ids == x["id"]] == IGNORE_LABEL).all()


def test_sample_counts_and_coco_head_order():
    """Counts straight from the JSON, and the JSON's category order is the official COCO head order."""
    ds = _sample_dataset()
    data = json.loads(SAMPLE_JSON.read_text())
    coco = CategoryMeta.coco()
    assert (ds.meta.thing_ids, ds.meta.stuff_ids) == (coco.thing_ids, coco.stuff_ids)
    for i, ann in enumerate(data["annotations"]):
        s = ds[i]
        n_things = sum(1 for x in ann["segments_info"] if x["category_id"] in coco.thing_ids and not x["iscrowd"])
        stuff_present = {coco.stuff_ids.index(x["category_id"]) + 1 for x in ann["segments_info"]
                         if x["category_id"] in coco.stuff_ids}
        assert len(s["instances"]["classes"]) == n_things
        assert set(s["sem_seg"].unique().tolist()) == stuff_present | {0, 255}
    # person (id 1) is thing index 0; sports ball (id 37) is 32 in detectron2's COCO mapping.
    s0 = ds[0]
    assert set(s0["instances"]["classes"].tolist()) == {0, 32}


def test_bgr_is_rgb_reversed_and_gt_record():
    rgb = _sample_dataset(image_format="RGB")[1]
    bgr = _sample_dataset()[1]
    assert torch.equal(bgr["image"], rgb["image"].flip(0))
    ref = read_image(SAMPLE_IMAGES / "000000439180.jpg")
    assert np.array_equal(rgb["image"].permute(1, 2, 0).numpy(), ref)
    rec = _sample_dataset().gt_record(1)
    assert rec.image_id == 439180 and Path(rec.pan_seg_file_name) == SAMPLE_PNGS / "000000439180.png"
    assert (rec.height, rec.width) == (360, 640) and len(rec.segments_info) == 32
    with pytest.raises(ValueError, match="INPUT.FORMAT"):
        _sample_dataset(image_format="YUV")


def test_flip_moves_masks_boxes_and_sem_seg_together():
    ds = _sample_dataset()
    flipped = ds.with_transforms([RandomFlip(prob=1.0)])
    a, b = ds[0], flipped[0]
    w = a["width"]
    assert torch.equal(b["image"], a["image"].flip(-1))
    assert torch.equal(b["sem_seg"], a["sem_seg"].flip(-1))
    assert torch.equal(b["instances"]["masks"], a["instances"]["masks"].flip(-1))
    boxes = a["instances"]["boxes"]
    mirrored = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    assert torch.equal(b["instances"]["boxes"], mirrored)


def test_hand_made_mapping_crowd_void_and_noncontiguous_ids(tmp_path):
    root = write_dataset(tmp_path / "d", [simple_image()])
    ds = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")
    s = ds[0]
    ids = simple_image()["ids"]
    assert s["instances"]["classes"].tolist() == [0, 1]  # category 3 -> 0, category 7 -> 1; crowd 13 dropped
    sem = s["sem_seg"].numpy()
    assert (sem[ids == 1000] == 1).all() and (sem[ids == 2000] == 2).all()  # stuff 20 -> 1, 31 -> 2
    assert (sem[(ids == 11) | (ids == 12)] == 0).all()
    assert (sem[(ids == 13) | (ids == 0)] == 255).all()
    assert s["instances"]["boxes"].tolist() == [[3, 2, 9, 6], [20, 12, 27, 18]]
    assert ds.has_instances(0)


def test_given_meta_sets_head_order_and_must_cover_json(tmp_path):
    root = write_dataset(tmp_path / "d", [simple_image()])
    meta = CategoryMeta.from_categories([CATEGORIES[1], CATEGORIES[0], CATEGORIES[3], CATEGORIES[2]])
    s = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json", meta=meta)[0]
    assert s["instances"]["classes"].tolist() == [1, 0]
    assert set(s["sem_seg"].unique().tolist()) == {0, 1, 2, 255}
    partial = CategoryMeta.from_categories(CATEGORIES[:3])
    with pytest.raises(PanopticDataError, match="category id 31"):
        PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json", meta=partial)


def test_no_images_list_finds_photo_by_png_stem(tmp_path):
    root = write_dataset(tmp_path / "d", [simple_image()])
    js = json.loads((root / "panoptic.json").read_text())
    del js["images"]
    (root / "panoptic.json").write_text(json.dumps(js))
    ds = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")
    assert Path(ds.gt_record(0).file_name).name == "0000.png"
    assert ds.image_size(0) == (20, 30)


# ---- bad input ---------------------------------------------------------------------------------------------------
def _edit_json(path: Path, fn) -> None:
    js = json.loads(path.read_text())
    fn(js)
    path.write_text(json.dumps(js))


def test_missing_image_names_file_and_id(tmp_path):
    root = copy_sample(tmp_path / "s")
    (root / "input_images" / "000000439180.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000439180\.jpg.*439180"):
        PanopticDataset(root / "input_images", root / "panoptic_examples", root / "panoptic_examples.json")


def test_missing_png_names_file_and_id(tmp_path):
    root = copy_sample(tmp_path / "s")
    (root / "panoptic_examples" / "000000142238.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"000000142238\.png.*142238"):
        PanopticDataset(root / "input_images", root / "panoptic_examples", root / "panoptic_examples.json")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image folder"):
        PanopticDataset(tmp_path / "nope", SAMPLE_PNGS, SAMPLE_JSON)
    with pytest.raises(FileNotFoundError, match="no such panoptic JSON"):
        PanopticDataset(SAMPLE_IMAGES, SAMPLE_PNGS, tmp_path / "nope.json")


def test_png_id_missing_from_json(tmp_path):
    root = copy_sample(tmp_path / "s")
    _edit_json(root / "panoptic_examples.json",
               lambda js: js["annotations"][1]["segments_info"].pop(3))  # id 2626802
    ds = PanopticDataset(root / "input_images", root / "panoptic_examples", root / "panoptic_examples.json")
    ds[0]  # the other image is fine
    with pytest.raises(PanopticDataError, match=r"000000439180\.png.*439180.*\[2626802\].*in the PNG but not"):
        ds[1]


def test_json_segment_absent_from_png(tmp_path):
    root = copy_sample(tmp_path / "s")
    _edit_json(root / "panoptic_examples.json",
               lambda js: js["annotations"][0]["segments_info"].append(
                   {"id": 4242, "category_id": 1, "iscrowd": 0, "area": 1, "bbox": [0, 0, 1, 1]}))
    ds = PanopticDataset(root / "input_images", root / "panoptic_examples", root / "panoptic_examples.json")
    with pytest.raises(PanopticDataError, match=r"000000142238\.png.*\[4242\].*not in the PNG"):
        ds[0]


def test_unknown_category(tmp_path):
    root = copy_sample(tmp_path / "s")

    def bad(js):
        js["annotations"][1]["segments_info"][5]["category_id"] = 91  # 91 is not a COCO panoptic category
    _edit_json(root / "panoptic_examples.json", bad)
    with pytest.raises(PanopticDataError, match=r"439180.*segment id 5119213 has unknown category_id 91"):
        PanopticDataset(root / "input_images", root / "panoptic_examples", root / "panoptic_examples.json")


@pytest.mark.parametrize("mode", ["RGBA", "L", "P", "I;16"])
def test_wrong_png_mode(tmp_path, mode):
    root = write_dataset(tmp_path / "d", [simple_image()])
    png = root / "panoptic" / "0000.png"
    with Image.open(png) as f:
        rgb = np.asarray(f)
    img = Image.fromarray(rgb).convert(mode) if mode != "I;16" else Image.fromarray(rgb[:, :, 0].astype(np.uint16))
    img.save(png)
    ds = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")
    with pytest.raises(PanopticDataError, match=r"0000\.png: panoptic PNG must be 8-bit RGB"):
        ds[0]


def test_16bit_rgb_png_is_refused(tmp_path):
    """PIL silently truncates 48-bit PNGs to 8-bit RGB; the reader must notice from the raw mode."""
    import struct
    import zlib

    arr = np.full((4, 5, 3), 1000, np.uint16)
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(4))

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path = tmp_path / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 5, 4, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(PanopticDataError, match=r"x\.png.*8-bit RGB.*RGB;16"):
        read_panoptic_png(path)


def test_png_and_image_size_differ(tmp_path):
    root = write_dataset(tmp_path / "d", [simple_image()])
    Image.fromarray(np.zeros((21, 30, 3), np.uint8)).save(root / "images" / "0000.png")
    ds = PanopticDataset(root / "images", root / "panoptic", root / "panoptic.json")
    with pytest.raises(PanopticDataError, match=r"0000\.png is 30x20 but its image .*0000\.png is 30x21"):
        ds[0]


def test_json_structure_errors(tmp_path):
    root = write_dataset(tmp_path / "d", [simple_image(), simple_image()])
    js_path = root / "panoptic.json"
    original = js_path.read_text()
    args = (root / "images", root / "panoptic", js_path)
    cases = [
        (lambda js: js["annotations"][0]["segments_info"].append(seg(11, 3)), "segment id 11 appears twice"),
        (lambda js: js["annotations"][1].update(image_id=100), "a second annotation"),
        (lambda js: js["annotations"].pop(1), r"images without a panoptic annotation: image_id 101"),
        (lambda js: js["annotations"][1].update(image_id=555), r"image_id 555.*no entry with this id in 'images'"),
        (lambda js: js["annotations"][0]["segments_info"].append(seg(2**24, 3)), "outside 1..16777215"),
        (lambda js: js["annotations"][0]["segments_info"][0].update(iscrowd=2), "iscrowd=2"),
        (lambda js: js.pop("annotations"), "no 'annotations' list"),
        (lambda js: js.pop("categories"), "no 'categories' list"),
    ]
    for edit, message in cases:
        js_path.write_text(original)
        _edit_json(js_path, edit)
        with pytest.raises(PanopticDataError, match=message):
            PanopticDataset(*args)
    js_path.write_text("{not json")
    with pytest.raises(PanopticDataError, match="cannot read panoptic JSON"):
        PanopticDataset(*args)


def test_png_written_ids_roundtrip(tmp_path):
    ids = np.array([[0, 1, 255], [256, 65536, 16777215]], np.int64)
    Image.fromarray(rgb_from_ids(ids)).save(tmp_path / "p.png")
    assert np.array_equal(read_panoptic_png(tmp_path / "p.png"), ids)


def test_targets_refuse_ids_without_segment():
    from pfcn.data import panoptic_targets

    with pytest.raises(PanopticDataError, match=r"segment ids \[5\]"):
        panoptic_targets(np.array([[0, 5]]), [seg(7, 3)], {3: 0}, {})
