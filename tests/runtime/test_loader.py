"""open_model: one call for every artifact, results equal to the paths they replace, and clear errors on bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml
from pfcn.contract import ArtifactError, make_canvas
from pfcn.export.onnx_export import export_onnx
from pfcn.predictor import Predictor, default_meta
from pfcn.runtime import Backend, open_model, predict
from pfcn.runtime.compare import result_agreement
from pfcn.runtime.ort import OrtBackend

from ..pfcn.parity import SMALL_CONFIG, calibrated_model, synthetic_image

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """A calibrated small model saved as a pfcn checkpoint (config inside), and its fixed and dynamic graphs."""
    root = tmp_path_factory.mktemp("artifacts")
    images = [synthetic_image(96, 128, 1), synthetic_image(96, 128, 2)]
    model, cfg = calibrated_model(SMALL_CONFIG, 0, images)
    meta = default_meta(cfg)
    ckpt = save_checkpoint(root / "small.pth", model, meta, cfg_to_yaml(cfg))
    fixed = export_onnx(model, cfg, meta, root / "fixed.onnx", input_size=(96, 128), batch=2)
    dynamic = export_onnx(model, cfg, meta, root / "dynamic.onnx", dynamic=(32, 32, 256, 256), dynamic_batch=True)
    return {"root": root, "ckpt": ckpt, "fixed": fixed, "dynamic": dynamic, "cfg": cfg, "model": model}


def _same(a, b) -> None:
    agreement = result_agreement(a, b)
    assert agreement.pixel_agreement >= 0.999 and agreement.category_mismatch == 0, agreement
    assert agreement.unmatched_a == agreement.unmatched_b == 0, agreement


def test_every_artifact_opens_behind_one_interface(artifacts):
    torch_backend = open_model(artifacts["ckpt"])  # config read from the checkpoint
    assert isinstance(torch_backend, Predictor) and isinstance(torch_backend, Backend)
    assert torch_backend.info.config_hash == open_model(artifacts["dynamic"]).info.config_hash
    images = [synthetic_image(96, 128, 5), synthetic_image(80, 100, 6), synthetic_image(96, 128, 7)]
    ref = predict(torch_backend, images, file_names=["a", "b", "c"], image_ids=[1, 2, 3])
    assert [r.image_id for r in ref] == [1, 2, 3] and [r.height for r in ref] == [96, 80, 96]
    dynamic = open_model(artifacts["dynamic"], batch_size=2)
    assert isinstance(dynamic, OrtBackend) and dynamic.info.meta.categories() == torch_backend.info.meta.categories()
    for a, b in zip(ref, predict(dynamic, images)):
        _same(a, b)
    # a fixed graph's network canvas is fixed: PyTorch on the same canvas gives the same result for every image
    fixed = open_model(artifacts["fixed"])
    torch_backend.fixed_net_size = fixed.info.net_size
    for a, b in zip(predict(torch_backend, images), predict(fixed, images)):
        _same(a, b)


def test_fixed_batch_graph_fills_and_drops_padding(artifacts):
    backend = open_model(artifacts["fixed"])
    assert backend.info.batch == 2 and backend.max_batch() == 2
    images = [synthetic_image(96, 128, s) for s in (8, 9, 10)]  # 3 images -> runs of 2 + 1 (filled)
    results = predict(backend, images)
    assert len(results) == 3
    single = predict(backend, images[2:])
    np.testing.assert_array_equal(results[2].panoptic, single[0].panoptic)


def test_batch_of_the_torch_backend_equals_single_images(artifacts):
    backend = open_model(artifacts["ckpt"], batch_size=2)
    images = [synthetic_image(96, 128, 11), synthetic_image(96, 128, 12)]
    both = predict(backend, images)
    for image, result in zip(images, both):
        np.testing.assert_array_equal(predict(backend, [image])[0].panoptic, result.panoptic)


def test_open_model_errors_name_the_file(artifacts, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(Path(artifacts["dynamic"]).read_bytes()[:5000])
    with pytest.raises(ArtifactError, match=r"truncated\.onnx: ONNX Runtime cannot load it"):
        open_model(truncated)
    foreign = tmp_path / "foreign.onnx"  # a valid ONNX model without pfcn metadata
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph([node], "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 19)]), foreign)
    with pytest.raises(ArtifactError, match=r"foreign\.onnx: no pfcn metadata"):
        open_model(foreign)
    with pytest.raises(ArtifactError, match=r"unknown artifact type '\.bin'"):
        open_model(tmp_path / "model.bin")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        open_model(tmp_path / "missing.onnx")
    plain = tmp_path / "plain.pth"  # an official-style checkpoint: no stored config
    import torch

    torch.save({"model": artifacts["model"].state_dict()}, plain)
    with pytest.raises(ArtifactError, match="carries no config"):
        open_model(plain)
    assert open_model(plain, config=SMALL_CONFIG).info.source == str(plain)
    with pytest.raises(ArtifactError, match="no model given"):
        open_model(None)
    with pytest.raises(ValueError, match="--device 'gpu': use cpu, cuda or cuda:N"):
        open_model(artifacts["ckpt"], device="gpu")


def test_canvas_errors():
    with pytest.raises(ValueError, match="x.jpg: image 200x100 does not fit the graph's fixed input 96x128"):
        make_canvas([np.zeros((200, 100, 3), np.uint8)], fixed_hw=(96, 128), names=["x.jpg"])
    with pytest.raises(ValueError, match="expected an HxWx3 uint8 RGB array, got float32"):
        make_canvas([np.zeros((10, 10, 3), np.float32)])
    with pytest.raises(ValueError, match="3 images given to a graph with a fixed batch of 2"):
        make_canvas([np.zeros((10, 10, 3), np.uint8)] * 3, batch=2)


# A Python that cannot import torch (nor torchvision): what a deployment machine with `pfcn[runtime]` has.
_NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'torchvision'):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: torch-free test)")
sys.meta_path.insert(0, _NoTorch())
from pfcn.tools.predict import main
code = main(sys.argv[1:])
assert 'torch' not in sys.modules
sys.exit(code)
"""


def test_onnx_prediction_runs_without_torch(artifacts, tmp_path):
    image = synthetic_image(90, 120, 13)
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "pred"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path / "photo.png"), "--model",
                           str(artifacts["dynamic"]), "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "json" / "photo.json").read_text())
    ref = predict(open_model(artifacts["ckpt"]), [image])[0]
    assert len(summary["segments_info"]) == len(ref.segments_info)
    assert json.loads((out / "model.json").read_text())["backend"] == "onnxruntime"
    panoptic = np.array(Image.open(out / "panoptic" / "photo.png"))
    assert panoptic.shape[:2] == (90, 120)
