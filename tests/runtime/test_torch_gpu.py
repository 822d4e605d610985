"""The PyTorch fast path: the static-buffer runner, the output sets and the reduced-precision islands on the CPU;
CUDA graphs, FP16 and torch.compile against FP32 eager on a GPU (``gpu`` tests)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from pfcn.contract import E2E_OUTPUTS, OUTPUT_SETS
from pfcn.predictor import Predictor, default_meta
from pfcn.runtime import predict
from pfcn.runtime.backend import canvas_for
from pfcn.runtime.compare import result_agreement
from pfcn.layers import Conv2d, FrozenBatchNorm2d, ModulatedDeformConv
from pfcn.runtime.torch_gpu import StrictFp32, TorchGpuBackend, fold_frozen_bn, signature

from ..pfcn.parity import SMALL_CONFIG, calibrated_model, synthetic_image

H, W = 96, 128


@pytest.fixture(scope="module")
def small():
    model, cfg = calibrated_model(SMALL_CONFIG, 0, [synthetic_image(H, W, 1)])
    return model, default_meta(cfg)


def _inputs(backend, *images):
    return canvas_for(backend, list(images))


def test_static_path_equals_predictor(small):
    model, meta = small
    eager, fast = Predictor(model, meta), TorchGpuBackend(model, meta, device="cpu", precision="fp32")
    for seed in (3, 4):  # the second run reuses the first run's static buffers with new content
        canvas, sizes = _inputs(fast, synthetic_image(H, W, seed))
        out, ref = fast.run(canvas, sizes), eager.run(canvas, sizes)
        assert list(out) == list(E2E_OUTPUTS)
        for name, value in ref.items():
            np.testing.assert_array_equal(out[name], value.numpy(), err_msg=name)
    assert fast.runner.builds == 1


def test_panoptic_output_set_leaves_masks_on_the_device(small):
    model, meta = small
    eager = Predictor(model, meta)
    fast = TorchGpuBackend(model, meta, device="cpu", precision="fp32", outputs="panoptic")
    panoptic = OUTPUT_SETS["panoptic"]
    assert "instance_masks" not in panoptic and len(panoptic) == len(E2E_OUTPUTS) - 1
    images = [synthetic_image(H, W, 5), synthetic_image(80, 100, 6)]
    canvas, sizes = _inputs(fast, images[0])
    out = fast.run(canvas, sizes)
    assert set(out) == set(panoptic)
    ref = eager.run(canvas, sizes)
    for name in panoptic:
        np.testing.assert_array_equal(out[name], ref[name].numpy(), err_msg=name)
    for a, b in zip(predict(eager, images), predict(fast, images)):
        assert result_agreement(a, b).pixel_agreement == 1.0
        assert b.instance_masks.shape[1:] == (0, 0) and len(b.instance_scores) == len(a.instance_scores)


def test_one_entry_per_signature_least_recent_dropped(small):
    model, meta = small
    fast = TorchGpuBackend(model, meta, device="cpu", precision="fp32", outputs="panoptic", max_graphs=2)
    a, b, c = synthetic_image(H, W, 1), synthetic_image(64, 64, 2), synthetic_image(64, 96, 3)
    for image in (a, b, a, b):
        fast.run(*_inputs(fast, image))
    assert fast.runner.builds == 2 and len(fast.runner.entries) == 2
    fast.run(*_inputs(fast, c))  # a third signature drops the least recently used one (a)
    assert fast.runner.builds == 3
    assert signature((1, 3, H, W), model.network_size(H, W)) not in fast.runner.entries
    fast.run(*_inputs(fast, b))
    assert fast.runner.builds == 3  # b was kept
    fast.run(*_inputs(fast, a))
    assert fast.runner.builds == 4


def test_reduced_precision_islands(small):
    """bf16 on the CPU stands in for FP16 on CUDA: the network body in the half type, post-processing in FP32."""
    model, meta = small
    seen: dict[str, torch.dtype] = {}

    def record(name: str, dtype: torch.dtype) -> None:  # a hook that returns None keeps the module's output
        seen.setdefault(name, dtype)

    hooks = [model.backbone.register_forward_hook(lambda m, i, o: record("body", o["p3"].dtype)),
             model.thing_generator.register_forward_hook(lambda m, i, o: record("kernels", i[0].dtype)),
             model.merge.register_forward_hook(lambda m, i, o: record("merge", i[1].dtype))]
    try:
        fast = TorchGpuBackend(model, meta, device="cpu", precision="bf16")
        canvas, sizes = _inputs(fast, synthetic_image(H, W, 8))
        out = fast.run(canvas, sizes)
    finally:
        for h in hooks:
            h.remove()
    assert seen == {"body": torch.bfloat16, "kernels": torch.float32, "merge": torch.float32}
    ref = Predictor(model, meta).run(canvas, sizes)
    assert {k: v.dtype for k, v in out.items()} == {k: v.numpy().dtype for k, v in ref.items()}


def test_from_predictor_keeps_the_checkpoint_identity(small):
    model, meta = small
    base = Predictor(model, meta, cfg=None, source="weights.pth")
    base.info.props["config_hash"] = "abc"
    fast = TorchGpuBackend.from_predictor(base, precision="bf16", outputs="panoptic")
    assert fast.info.config_hash == "abc" and fast.info.precision == "bf16" and fast.info.source == "weights.pth"
    assert fast.name == "pytorch-fast" and fast.max_batch() == 1


def _random_bn(channels: int, gen: torch.Generator) -> FrozenBatchNorm2d:
    bn = FrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
    bn.bias.copy_(torch.randn(channels, generator=gen))
    bn.running_mean.copy_(torch.randn(channels, generator=gen))
    bn.running_var.copy_(torch.rand(channels, generator=gen) + 0.1)
    return bn


def test_fold_frozen_bn_keeps_each_layer_map():
    gen = torch.Generator().manual_seed(0)
    conv = Conv2d(8, 16, 3, padding=1, bias=False, norm=_random_bn(16, gen), activation=torch.relu)
    deform = ModulatedDeformConv(8, 16, norm=_random_bn(16, gen))
    x = torch.randn(2, 8, 12, 12, generator=gen)
    offset, mask = torch.randn(2, 18, 12, 12, generator=gen), torch.rand(2, 9, 12, 12, generator=gen)
    with torch.no_grad():
        ref = conv(x), deform(x, offset, mask)
        model = torch.nn.ModuleList([conv, deform])
        assert fold_frozen_bn(model) == 2 and conv.norm is None and deform.norm is None
        assert fold_frozen_bn(model) == 0  # nothing left to fold
        out = conv(x), deform(x, offset, mask)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_folded_backend_matches_eager():
    """An R50-like body (frozen BN, calibrated statistics) through the fast path with its BNs folded."""
    model, cfg = calibrated_model(SMALL_CONFIG, 0, [synthetic_image(H, W, 1)], ["MODEL.RESNETS.NORM", "FrozenBN"])
    meta = default_meta(cfg)
    bns = sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    fast = TorchGpuBackend(model, meta, device="cpu", precision="fp32", fold_bn=True)
    assert fast.folded_bn == bns > 0 and not any(isinstance(m, FrozenBatchNorm2d) for m in fast.model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) == bns  # the caller's model is unchanged
    images = [synthetic_image(H, W, s) for s in (21, 22)]
    for a, b in zip(predict(Predictor(model, meta), images), predict(fast, images)):
        agreement = result_agreement(a, b)
        assert agreement.pixel_agreement >= 0.999 and agreement.category_mismatch == 0, agreement


def test_strict_fp32_turns_tf32_off_for_the_call_only():
    seen = []
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = True
    try:
        StrictFp32(lambda x: seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)))(1)
        assert seen == [(False, False)] and torch.backends.cudnn.allow_tf32
        with pytest.raises(ZeroDivisionError):
            StrictFp32(lambda x: 1 / x)(0)
        assert torch.backends.cudnn.allow_tf32  # restored after an error too
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_interpolate_resize_is_the_official_kernel_per_size(small):
    """resize="interpolate": the official F.interpolate calls with the sizes read on the host, one module (graph) per
    canvas and image sizes; on the CPU that is exactly what the eager path computes."""
    model, meta = small
    eager = Predictor(model, meta)
    fast = TorchGpuBackend(model, meta, device="cpu", precision="fp32", resize="interpolate", batch_size=2)
    a, b = synthetic_image(H, W, 31), synthetic_image(80, 100, 32)  # same network canvas, different sizes
    for images in ([a], [a], [b], [a, b]):
        canvas, sizes = canvas_for(fast, images)
        out, ref = fast.run(canvas, sizes), eager.run(canvas, sizes)
        for name, value in ref.items():
            np.testing.assert_array_equal(out[name], value.numpy(), err_msg=name)
    assert fast.runner.builds == 3  # [a] once, [b], and the batch [a, b]: sizes are part of the signature
    key = signature((1, 3, H, W), model.network_size(H, W), np.array([[H, W]]))
    assert key in fast.runner.entries


def test_bad_options(small):
    model, meta = small
    with pytest.raises(ValueError, match="precision fp16 runs on CUDA"):
        TorchGpuBackend(model, meta, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="outputs 'masks'"):
        TorchGpuBackend(model, meta, device="cpu", outputs="masks")
    with pytest.raises(ValueError, match="precision 'int8'"):
        TorchGpuBackend(model, meta, device="cpu", precision="int8")
    with pytest.raises(ValueError, match="resize 'nearest'"):
        TorchGpuBackend(model, meta, device="cpu", resize="nearest")


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.parametrize("options, min_agreement", [
    ({"precision": "fp32", "cuda_graphs": True}, 0.999),
    ({"precision": "fp16", "cuda_graphs": True}, 0.99),
    ({"precision": "fp16", "cuda_graphs": True, "outputs": "panoptic"}, 0.99),
    ({"precision": "fp16", "cuda_graphs": True, "compile": True}, 0.99),
    ({"precision": "fp16", "cuda_graphs": True, "resize": "interpolate"}, 0.99),
], ids=["fp32-graphs", "fp16-graphs", "fp16-graphs-panoptic", "fp16-graphs-compiled", "fp16-graphs-interpolate"])
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_paths_match_fp32_eager(small, options, min_agreement):
    model, meta = small
    eager = Predictor(model, meta)  # FP32 eager on the CPU: the reference
    fast = TorchGpuBackend(copy.deepcopy(model), meta, device="cuda", **options)
    images = [synthetic_image(H, W, s) for s in (11, 12, 13)] + [synthetic_image(80, 100, 14)]
    for a, b in zip(predict(eager, images), predict(fast, images)):  # replays with new content, then a new shape
        agreement = result_agreement(a, b)
        assert agreement.pixel_agreement >= min_agreement, (options, agreement)
        assert agreement.category_mismatch == 0, (options, agreement)
    assert fast.runner.builds == 2
