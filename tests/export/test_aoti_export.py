"""AOTInductor packages: ``pfcn-export --format aoti`` builds a CPU ``.pt2`` of the small config that ``open_model``
runs with the results and PQ of eager PyTorch, carries pfcn's metadata, and refuses bad files and bad requests.

One package is compiled per test session (about 1.5 min on two cores; module-scoped fixture). The CUDA packages
(FP32 and FP16) are compiled and checked by the ``gpu`` tests.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile

import numpy as np
import pytest
import torch

from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml
from pfcn.contract import E2E_OUTPUTS, METADATA_KEYS, ArtifactError
from pfcn.data.synth import SynthSpec, generate_dataset
from pfcn.export.aoti import export_aoti
from pfcn.export.cli import main as export_main
from pfcn.export.onnx_export import ExportError
from pfcn.metadata import CategoryMeta
from pfcn.predictor import Predictor
from pfcn.runtime import open_model, predict
from pfcn.runtime.aoti import AotiBackend, _metadata_from_zip, read_package_metadata
from pfcn.runtime.backend import canvas_for
from pfcn.runtime.compare import result_agreement, tensor_errors
from pfcn.tools.parity import main as parity_main

from ..pfcn.parity import SMALL_CONFIG, calibrated_model, synthetic_image

# the Small config's heads for a 3-thing / 3-stuff synthetic set, with the deformable position head so that the
# package calls torchvision's deform_conv2d operator (as every R50 package does)
HEADS = ["MODEL.POSITION_HEAD.THING.NUM_CLASSES", "3", "MODEL.POSITION_HEAD.STUFF.NUM_CLASSES", "4",
         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "4", "MODEL.POSITION_HEAD.DEFORM", "True"]
H, W = 96, 128


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A calibrated small model, its checkpoint and a synthetic dataset with ground truth."""
    root = tmp_path_factory.mktemp("aoti")
    gt_json = generate_dataset(root / "synth", 3, SynthSpec(height=H, width=W, num_things=3, num_stuff=3), seed=4,
                               progress=False)
    meta = CategoryMeta.from_json(gt_json)
    model, cfg = calibrated_model(SMALL_CONFIG, 0, [synthetic_image(H, W, 1)], HEADS)
    ckpt = save_checkpoint(root / "small.pth", model, meta, cfg_to_yaml(cfg))
    return {"root": root, "gt_json": gt_json, "ckpt": ckpt, "cfg": cfg, "model": model, "meta": meta}


@pytest.fixture(scope="module")
def package(small):
    """``small`` and its CPU .pt2 built by the CLI (the one CPU compile of this module)."""
    root, ckpt = small["root"], small["ckpt"]
    out = root / "small.pt2"
    start = time.perf_counter()
    # the config comes from the checkpoint, as a user exporting a pfcn checkpoint does it
    code = export_main(["--format", "aoti", "--weights", str(ckpt), "--out", str(out), "--input-size", str(H), str(W)])
    seconds = time.perf_counter() - start
    assert code == 0 and out.is_file()
    print(f"\nAOTInductor CPU package: {out.stat().st_size / 2**20:.1f} MB, exported + compiled in {seconds:.0f} s")
    return dict(small, pt2=out)


def test_package_carries_pfcn_metadata(package):
    backend = open_model(package["pt2"])
    assert isinstance(backend, AotiBackend) and backend.name == "aoti"
    info = backend.info
    assert info.graph == "e2e" and info.fixed_hw == (H, W) and info.batch == 1 and info.precision == "fp32"
    assert info.meta.categories() == package["meta"].categories()
    assert info.config_hash == open_model(package["ckpt"]).info.config_hash
    # what AOTInductor's own loader reports (the C++ AOTIModelPackageLoader::get_metadata() reads the same map)
    props = backend.metadata()
    assert set(METADATA_KEYS) | {"precision", "device"} <= set(props)
    assert props["device"] == "cpu" and props["AOTI_DEVICE_KEY"] == "cpu"
    assert json.loads(props["output_names"]) == list(E2E_OUTPUTS)
    assert props == read_package_metadata(package["pt2"])
    assert props == _metadata_from_zip(package["pt2"])  # the reader for a torch without load_metadata_from_package


def test_package_matches_eager(package):
    backend = open_model(package["pt2"])
    eager = Predictor(package["model"], package["meta"])
    eager.fixed_net_size = backend.info.net_size  # the package's fixed network canvas, for any image that fits
    images = [synthetic_image(H, W, 5), synthetic_image(80, 100, 6), synthetic_image(H, W, 7)]
    for image in images:
        canvas, sizes = canvas_for(backend, [image])
        out, ref = backend.run(canvas, sizes), eager.run(canvas, sizes)
        assert list(out) == list(E2E_OUTPUTS)
        errors = tensor_errors(ref, out)
        for name in ("panoptic", "semantic", "instance_valid", "segment_valid", "instance_classes",
                     "segment_category_ids"):
            assert errors[name]["mismatch"] <= 1e-3, (name, errors[name])
        assert errors["instance_scores"]["max_abs"] <= 1e-3, errors["instance_scores"]
    for a, b in zip(predict(eager, images), predict(backend, images)):
        agreement = result_agreement(a, b)
        assert agreement.pixel_agreement >= 0.999, agreement
        assert agreement.unmatched_a == agreement.unmatched_b == agreement.category_mismatch == 0, agreement


def test_parity_gates_with_pq(package, capsys):
    out_dir = package["root"] / "parity"
    code = parity_main(["--model", str(package["pt2"]), "--reference", str(package["ckpt"]),
                        "--dataset", str(package["gt_json"].parent), "--out", str(out_dir), "--no-progress"])
    report = json.loads((out_dir / "parity.json").read_text())
    assert code == 0, capsys.readouterr().out
    assert report["backends"] == ["aoti", "pytorch"] and report["images"] == 3
    assert report["gates"]["pixel_agreement"]["value"] >= 0.999
    assert report["gates"]["delta_pq"]["value"] <= 0.05
    print(f"\nAOTInductor vs eager: dPQ {report['gates']['delta_pq']['value']:.4f}, worst pixel agreement "
          f"{report['gates']['pixel_agreement']['value']:.5f}")


def test_wrong_canvas_and_device(package):
    backend = open_model(package["pt2"])
    with pytest.raises(ValueError, match="does not fit the graph's fixed input 96x128"):
        predict(backend, [synthetic_image(120, 90, 1)])
    with pytest.raises(ArtifactError, match=r"takes images \[1, 3, 96, 128\]"):
        backend.run(np.zeros((1, 3, 64, 64), np.uint8), np.array([[64, 64]]))
    with pytest.raises(ArtifactError, match="compiled for cpu, not cuda; open it with --device cpu"):
        open_model(package["pt2"], device="cuda")


def test_bad_files(package, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt2"):
        open_model(tmp_path / "missing.pt2")
    data = package["pt2"].read_bytes()
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated.pt2: not an AOTInductor package"):
        open_model(truncated)
    saved = tmp_path / "weights.pt2"  # a zip archive, but torch.save's
    torch.save({"x": torch.zeros(2)}, saved)
    with pytest.raises(ArtifactError, match="weights.pt2: no AOTInductor model"):
        open_model(saved)
    # the same package with pfcn's keys removed from its metadata: an AOTInductor package pfcn did not write
    foreign = tmp_path / "foreign.pt2"
    with zipfile.ZipFile(package["pt2"]) as src, zipfile.ZipFile(foreign, "w") as dst:
        for item in src.infolist():
            body = src.read(item)
            if item.filename.endswith("_metadata.json"):
                body = json.dumps({k: v for k, v in json.loads(body).items() if k.startswith("AOTI_")}).encode()
            dst.writestr(item, body)
    with pytest.raises(ArtifactError, match="foreign.pt2: no pfcn metadata"):
        open_model(foreign)
    copied = tmp_path / "copy.pt2"  # a package moved elsewhere still opens
    shutil.copy(package["pt2"], copied)
    assert open_model(copied).info.fixed_hw == (H, W)


def test_export_refuses_what_a_package_cannot_be(package, tmp_path):
    model, cfg, meta = package["model"], package["cfg"], package["meta"]
    with pytest.raises(ExportError, match="--dynamic: AOTInductor packages have a fixed input size"):
        export_aoti(model, cfg, meta, tmp_path / "d.pt2", dynamic=(32, 32, 256, 256))
    with pytest.raises(ExportError, match="--precision fp16: FP16 packages are compiled for CUDA"):
        export_aoti(model, cfg, meta, tmp_path / "h.pt2", precision="fp16")
    with pytest.raises(ExportError, match="must be named \\*.pt2"):
        export_aoti(model, cfg, meta, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="--precision 'int8'"):
        export_aoti(model, cfg, meta, tmp_path / "i.pt2", precision="int8")
    assert not list(tmp_path.iterdir())  # nothing half-written


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_package_matches_eager(small, precision, tmp_path):
    package = small  # the CUDA packages are compiled here; the CPU one is not needed
    out = export_aoti(package["model"], package["cfg"], package["meta"], tmp_path / f"cuda_{precision}.pt2",
                      input_size=(H, W), device="cuda", precision=precision)
    backend = open_model(out, device="cuda")
    assert backend.info.precision == precision and backend.metadata()["device"] == "cuda"
    eager = Predictor(package["model"], package["meta"])
    eager.fixed_net_size = backend.info.net_size
    images = [synthetic_image(H, W, 5), synthetic_image(80, 100, 6)]
    for a, b in zip(predict(eager, images), predict(backend, images)):
        agreement = result_agreement(a, b)
        assert agreement.pixel_agreement >= (0.999 if precision == "fp32" else 0.99), agreement
        assert agreement.category_mismatch == 0, agreement
