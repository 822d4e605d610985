"""pfcn.layers: FrozenBatchNorm2d computes, bit for bit, what detectron2's FrozenBatchNorm2d computes.

detectron2 normalises with ``F.batch_norm(training=False)`` when no gradient flows through the input and with a
precomputed per-channel scale and shift when one does. The two forms round differently, so a layer that used the
wrong one would not give the official network's tensors; the tests compare with ``torch.equal``.
"""

from __future__ import annotations

import ast

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from pfcn.layers import FrozenBatchNorm2d

from .training.official_code import DETECTRON2_ENV, SourcesNotConfigured, read_source


def random_frozen_bn(channels: int, seed: int) -> FrozenBatchNorm2d:
    """A layer with random statistics spanning several orders of magnitude (as in trained ResNets)."""
    gen = torch.Generator().manual_seed(seed)
    bn = FrozenBatchNorm2d(channels)
    bn.weight.copy_(torch.randn(channels, generator=gen) * 2)
    bn.bias.copy_(torch.randn(channels, generator=gen))
    bn.running_mean.copy_(torch.randn(channels, generator=gen) * 3)
    bn.running_var.copy_(torch.rand(channels, generator=gen) * 10 ** torch.empty(channels).uniform_(-3, 2,
                                                                                                   generator=gen))
    return bn


def detectron2_inference(bn: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """detectron2's inference branch, written from its definition: batch norm in inference mode."""
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)


def detectron2_training(bn: FrozenBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
    """detectron2's branch for inputs that need gradients: scale = weight / sqrt(var + eps), shift = bias - mean*scale."""
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    shift = bn.bias - bn.running_mean * scale
    return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)


@pytest.mark.parametrize("seed,shape", [(0, (2, 64, 17, 23)), (1, (1, 256, 9, 31)), (2, (3, 3, 50, 50))])
def test_frozen_bn_inference_is_batch_norm_bit_for_bit(seed, shape):
    bn = random_frozen_bn(shape[1], seed)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed + 10)) * 5
    with torch.no_grad():
        ours = bn(x)
    assert torch.equal(ours, detectron2_inference(bn, x))
    assert torch.equal(bn(x), detectron2_inference(bn, x))  # no_grad or not: x itself needs no gradient


def test_frozen_bn_with_gradient_is_scale_shift_bit_for_bit():
    bn = random_frozen_bn(64, 3)
    x = (torch.randn(2, 64, 19, 21, generator=torch.Generator().manual_seed(4)) * 5).requires_grad_()
    ours = bn(x)
    assert torch.equal(ours, detectron2_training(bn, x))
    ours.sum().backward()
    scale = bn.weight * (bn.running_var + bn.eps).rsqrt()
    assert torch.equal(x.grad, scale.reshape(1, -1, 1, 1).expand_as(x))
    assert not any(b.requires_grad for b in bn.buffers())


def test_the_two_forms_differ_so_the_branch_matters():
    """Rounding differs between the forms on random statistics: the bit-exact tests above can tell them apart."""
    bn = random_frozen_bn(256, 5)
    x = torch.randn(4, 256, 32, 32, generator=torch.Generator().manual_seed(6)) * 5
    assert not torch.equal(detectron2_inference(bn, x), detectron2_training(bn, x))


def _detectron2_class() -> type[nn.Module]:
    """detectron2's own FrozenBatchNorm2d class, executed from its source (the clone named by PFCN_DETECTRON2_REPO)."""
    try:
        source = read_source(DETECTRON2_ENV, "detectron2/layers/batch_norm.py")
    except SourcesNotConfigured as err:
        pytest.skip(str(err))
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FrozenBatchNorm2d")
    namespace = {"torch": torch, "nn": nn, "F": F}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "detectron2/layers/batch_norm.py", "exec"), namespace)
    return namespace["FrozenBatchNorm2d"]


@pytest.mark.parametrize("requires_grad", [False, True])
def test_frozen_bn_equals_detectron2_source(requires_grad):
    ours = random_frozen_bn(128, 7)
    theirs = _detectron2_class()(128)
    theirs.load_state_dict(ours.state_dict())
    x = (torch.randn(2, 128, 15, 20, generator=torch.Generator().manual_seed(8)) * 5).requires_grad_(requires_grad)
    assert torch.equal(ours(x), theirs(x))
