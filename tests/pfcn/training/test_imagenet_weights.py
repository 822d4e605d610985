"""MODEL.WEIGHTS initialisation from files the tests create: an MSRA-style Caffe2 .pkl, torchvision ResNets, pfcn
checkpoints, a detectron2 model-zoo pickle; and the refusals (unsafe pickles, wrong shapes, URLs)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from pfcn.checkpoint import CheckpointError, save_checkpoint
from pfcn.config import load_config
from pfcn.model import build_model
from pfcn.training.imagenet_weights import (BOTTOM_UP, UnsafePickleError, c2_name, initialize_from_weights,
                                            load_c2_pickle, torchvision_name)

REPO = Path(__file__).resolve().parents[3]
R50 = REPO / "configs" / "PanopticFCN-R50-1x.yaml"
SMALL = REPO / "configs" / "PanopticFCN-Small.yaml"


def _model(config: Path, overrides: list[str] | None = None):
    cfg = load_config(config, ["MODEL.DEVICE", "cpu"] + list(overrides or []))
    torch.manual_seed(0)
    return build_model(cfg), cfg


@pytest.fixture(scope="module")
def r50():
    return _model(R50)


def _msra_arrays(model: torch.nn.Module, seed: int = 0) -> dict[str, np.ndarray]:
    """An MSRA-style ImageNet file for the model's backbone: Caffe2 names, BN folded (no running statistics),
    the ImageNet classifier and Caffe2 momentum blobs."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for key, value in model.state_dict().items():
        if key.startswith(BOTTOM_UP) and not key.endswith(("running_mean", "running_var")):
            arrays[c2_name(key[len(BOTTOM_UP):])] = rng.standard_normal(tuple(value.shape)).astype(np.float32)
    arrays["fc1000_w"] = rng.standard_normal((1000, 2048)).astype(np.float32)
    arrays["fc1000_b"] = np.zeros(1000, np.float32)
    arrays["res2_0_branch2a_w_momentum"] = np.zeros((64, 64, 1, 1), np.float32)
    return arrays


def test_name_tables_match_detectron2_and_torchvision() -> None:
    assert c2_name("stem.conv1.weight") == "conv1_w"
    assert c2_name("stem.conv1.norm.weight") == "res_conv1_bn_s"
    assert c2_name("stem.conv1.norm.bias") == "res_conv1_bn_b"
    assert c2_name("res2.0.conv1.weight") == "res2_0_branch2a_w"
    assert c2_name("res2.0.conv1.norm.weight") == "res2_0_branch2a_bn_s"
    assert c2_name("res3.0.shortcut.weight") == "res3_0_branch1_w"
    assert c2_name("res4.5.conv2.norm.running_mean") == "res4_5_branch2b_bn_rm"
    assert c2_name("res5.2.conv3.norm.bias") == "res5_2_branch2c_bn_b"
    assert torchvision_name("stem.conv1.weight") == "conv1.weight"
    assert torchvision_name("stem.conv1.norm.running_var") == "bn1.running_var"
    assert torchvision_name("res2.1.conv3.norm.weight") == "layer1.1.bn3.weight"
    assert torchvision_name("res5.0.shortcut.weight") == "layer4.0.downsample.0.weight"
    assert torchvision_name("res3.0.shortcut.norm.bias") == "layer2.0.downsample.1.bias"
    with pytest.raises(ValueError, match="fpn_lateral2"):
        c2_name("fpn_lateral2.weight")


@pytest.mark.parametrize("protocol", [2, 4])
def test_msra_pkl_loads_the_backbone_only(r50, tmp_path: Path, protocol: int) -> None:
    model, cfg = r50
    arrays = _msra_arrays(model)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(arrays, protocol=protocol))
    heads_before = model.position_head.out_inst.weight.clone()
    report = initialize_from_weights(model, path, cfg)
    state = model.state_dict()
    for key in ("stem.conv1.weight", "stem.conv1.norm.weight", "res2.0.shortcut.norm.bias", "res5.2.conv3.weight",
                "res4.3.conv2.norm.weight"):
        assert torch.equal(state[BOTTOM_UP + key], torch.from_numpy(arrays[c2_name(key)])), key
    # BN folded into scale and bias: the statistics are the neutral ones (scale applies exactly).
    bn = model.backbone.bottom_up.res3[1].conv2.norm
    assert torch.equal(bn.running_mean, torch.zeros_like(bn.running_mean))
    assert torch.allclose(bn.running_var + bn.eps, torch.ones_like(bn.running_var))
    assert torch.equal(model.position_head.out_inst.weight, heads_before)
    assert report.kind == "caffe2"
    n_bottom = sum(k.startswith(BOTTOM_UP) for k in state)
    assert report.loaded["backbone.bottom_up"] == (len(arrays) - 3, n_bottom)
    assert len(report.kept_default) == n_bottom - (len(arrays) - 3)
    assert report.loaded["position_head"][0] == 0
    assert set(report.skipped) == {"fc1000_w", "fc1000_b"}
    assert "backbone.bottom_up" in report.summary()


def test_msra_pkl_blobs_wrapper_and_python2_style(r50, tmp_path: Path) -> None:
    """Detectron detection pickles wrap the arrays in "blobs"; Python 2 pickles need latin1 decoding."""
    model, cfg = r50
    arrays = _msra_arrays(model, seed=1)
    path = tmp_path / "wrapped.pkl"
    path.write_bytes(pickle.dumps({"blobs": arrays}, protocol=2))
    loaded, is_d2 = load_c2_pickle(path)
    assert not is_d2 and "res2_0_branch2a_w_momentum" not in loaded and "conv1_w" in loaded
    initialize_from_weights(model, path, cfg)
    assert torch.equal(model.backbone.bottom_up.stem.conv1.weight, torch.from_numpy(arrays["conv1_w"]))


def test_msra_pkl_errors_name_the_tensors(r50, tmp_path: Path) -> None:
    model, cfg = r50
    arrays = _msra_arrays(model)
    missing = dict(arrays)
    del missing["res4_2_branch2b_w"]
    (tmp_path / "missing.pkl").write_bytes(pickle.dumps(missing))
    with pytest.raises(CheckpointError, match="res4_2_branch2b_w"):
        initialize_from_weights(model, tmp_path / "missing.pkl", cfg)
    wrong = dict(arrays, res3_1_branch2c_w=np.zeros((1, 2, 3, 3), np.float32))
    (tmp_path / "wrong.pkl").write_bytes(pickle.dumps(wrong))
    with pytest.raises(CheckpointError, match=r"res3_1_branch2c_w: file \(1, 2, 3, 3\)"):
        initialize_from_weights(model, tmp_path / "wrong.pkl", cfg)
    extra = dict(arrays, res5_3_branch2a_w=np.zeros((512, 2048, 1, 1), np.float32))  # a deeper ResNet's block
    (tmp_path / "extra.pkl").write_bytes(pickle.dumps(extra))
    with pytest.raises(CheckpointError, match="res5_3_branch2a_w"):
        initialize_from_weights(model, tmp_path / "extra.pkl", cfg)


class _RunsCode:
    """A pickle payload that would create a folder when unpickled by a plain unpickler."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (str(self.target),))


def test_unsafe_pickles_are_refused_before_running(r50, tmp_path: Path) -> None:
    model, cfg = r50
    marker = tmp_path / "was_run"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"conv1_w": np.zeros(3, np.float32), "x": _RunsCode(marker)}))
    with pytest.raises(UnsafePickleError, match=r"evil\.pkl.*posix\.mkdir|evil\.pkl.*os\.mkdir"):
        initialize_from_weights(model, path, cfg)
    assert not marker.exists()
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="junk.pkl"):
        load_c2_pickle(tmp_path / "junk.pkl")
    (tmp_path / "list.pkl").write_bytes(pickle.dumps({"conv1_w": [1.0, 2.0]}))
    with pytest.raises(CheckpointError, match="'conv1_w' is a list"):
        load_c2_pickle(tmp_path / "list.pkl")


def test_torchvision_resnet50(r50, tmp_path: Path) -> None:
    model, cfg = r50
    torch.manual_seed(3)
    tv = torchvision.models.resnet50()
    with torch.no_grad():  # non-trivial statistics, so that a mix-up of BN tensors would show
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.bias.uniform_(-1, 1)
    path = tmp_path / "resnet50.pth"
    torch.save(tv.state_dict(), path)
    report = initialize_from_weights(model, path, cfg)
    bu = model.backbone.bottom_up
    assert torch.equal(bu.stem.conv1.weight, tv.conv1.weight)
    assert torch.equal(bu.stem.conv1.norm.running_var, tv.bn1.running_var)
    assert torch.equal(bu.res3[0].shortcut.weight, tv.layer2[0].downsample[0].weight)
    assert torch.equal(bu.res3[0].shortcut.norm.running_mean, tv.layer2[0].downsample[1].running_mean)
    assert torch.equal(bu.res5[2].conv2.norm.bias, tv.layer4[2].bn2.bias)
    assert torch.equal(bu.res4[5].conv3.weight, tv.layer3[5].conv3.weight)
    n_bottom = sum(k.startswith(BOTTOM_UP) for k in model.state_dict())
    assert report.kind == "torchvision" and report.loaded["backbone.bottom_up"] == (n_bottom, n_bottom)
    assert "fc.weight" in report.skipped and "layer1.0.bn1.num_batches_tracked" in report.skipped
    assert any("STRIDE_IN_1X1" in n for n in report.notes)  # official configs put the stride in the 1x1 conv


def test_torchvision_resnet18_needs_a_matching_backbone(tmp_path: Path) -> None:
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    small, cfg = _model(SMALL)  # half-width ResNet-18: the shapes differ
    with pytest.raises(CheckpointError, match=r"conv1\.weight: file \(64, 3, 7, 7\)"):
        initialize_from_weights(small, path, cfg)
    full_width = ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.RESNETS.STEM_OUT_CHANNELS", "64",
                  "MODEL.RESNETS.NORM", "FrozenBN", "MODEL.RESNETS.STRIDE_IN_1X1", "False", "INPUT.FORMAT", "RGB"]
    model, cfg = _model(SMALL, full_width)
    report = initialize_from_weights(model, path, cfg)
    tv = torch.load(path, weights_only=True)
    assert torch.equal(model.backbone.bottom_up.res4[1].conv2.norm.weight, tv["layer3.1.bn2.weight"])
    assert report.loaded["backbone.bottom_up"][0] == report.loaded["backbone.bottom_up"][1]
    assert not any("STRIDE_IN_1X1" in n or "FORMAT" in n for n in report.notes)


def test_full_checkpoints_load_strictly(tmp_path: Path) -> None:
    trained, cfg = _model(SMALL)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)
    path = save_checkpoint(tmp_path / "model.pth", trained, cfg_yaml="x: 1")
    fresh, _ = _model(SMALL)
    report = initialize_from_weights(fresh, path, cfg)
    assert report.kind == "checkpoint" and report.checkpoint["cfg"] == "x: 1"
    for (k, a), b in zip(trained.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(n == total for n, total in report.loaded.values())
    state = dict(trained.state_dict())
    del state["position_head.out_sem.bias"]
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="position_head.out_sem.bias"):
        initialize_from_weights(fresh, tmp_path / "partial.pth", cfg)
    # A detectron2 model-zoo pickle: detectron2 names, numpy arrays, loaded as a whole checkpoint.
    d2 = {"model": {k: v.numpy() for k, v in trained.state_dict().items()}, "__author__": "pfcn test"}
    (tmp_path / "d2.pkl").write_bytes(pickle.dumps(d2))
    other, _ = _model(SMALL)
    assert initialize_from_weights(other, tmp_path / "d2.pkl", cfg).kind == "checkpoint"
    assert torch.equal(other.position_head.out_sem.bias, trained.position_head.out_sem.bias)


def test_other_files_and_urls_are_refused(r50, tmp_path: Path) -> None:
    model, cfg = r50
    with pytest.raises(CheckpointError, match="does not download"):
        initialize_from_weights(model, "detectron2://ImageNetPretrained/MSRA/R-50.pkl", cfg)
    with pytest.raises(CheckpointError, match="no such file"):
        initialize_from_weights(model, tmp_path / "absent.pth", cfg)
    torch.save({"encoder.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="neither a PanopticFCN checkpoint"):
        initialize_from_weights(model, tmp_path / "other.pth", cfg)
