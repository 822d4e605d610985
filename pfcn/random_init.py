"""Calibrated random weights: a PanopticFCN that gives non-degenerate outputs without training.

A plainly initialised model is useless for testing inference: frozen BN at identity statistics lets activations grow
to ~1e4, deformable offsets then point far outside the map, and mask logits saturate so that every thing mask covers
the image. Calibration fixes the scale of each stage on real pixels:
  * every FrozenBatchNorm takes the per-channel mean/variance of its input on the calibration images (one pass, in
    order), so each block sees unit-scale activations;
  * the offset/mask convs of the deformable layers get small weights (offsets of about a pixel);
  * the kernel generators are scaled so that mask logits spread over a few units around zero.
Used by ``make demo`` before a trained model exists and by every parity test.
"""

from __future__ import annotations

import numpy as np
import torch

from .layers import FrozenBatchNorm2d, ModulatedDeformConvWithOff
from .model import PanopticFCN


@torch.no_grad()
def calibrate_random_model(model: PanopticFCN, images: list[np.ndarray], seed: int = 0,
                           offset_std: float = 0.02, mask_logit_std: float = 3.0) -> PanopticFCN:
    """Re-draw a model's random weights and calibrate them on ``images`` (HxWx3 uint8 RGB). Returns the model."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, ModulatedDeformConvWithOff):
            module.offset_mask_conv.weight.copy_(torch.randn(module.offset_mask_conv.weight.shape, generator=gen)
                                                 * offset_std)
            module.offset_mask_conv.bias.zero_()
    for head in (model.position_head.out_inst, model.position_head.out_sem):
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 0.05)
    for gen_module in (model.thing_generator, model.stuff_generator):
        w = gen_module.embed_extractor.weight
        w.copy_(torch.randn(w.shape, generator=gen))
        gen_module.embed_extractor.bias.zero_()

    model.eval()
    batch = _network_batch(model, images)

    def calibrate_bn(module: FrozenBatchNorm2d, inputs):
        x = inputs[0].double()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)).float())
        module.running_var.copy_(x.var(dim=(0, 2, 3)).float().clamp(min=1e-4))
        module.weight.fill_(1.0)
        module.bias.zero_()

    hooks = [m.register_forward_pre_hook(calibrate_bn) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        heads = model.forward_features(batch)
    finally:
        for h in hooks:
            h.remove()
    heads = model.forward_features(batch)

    # The encoded feature ends in a ReLU, so it has a large common component: a random kernel would switch a whole
    # mask on or off. Make every generated kernel orthogonal to the mean feature, then scale the generator so that
    # (kernel . encoded feature) spreads over a few units around zero across pixels.
    b, e, h, w = heads.encoded.shape
    enc = heads.encoded.reshape(b, e, h * w)
    mean = enc.mean(dim=(0, 2))
    unit = mean / mean.norm().clamp(min=1e-12)
    kernels = heads.weights[0].flatten(2).transpose(1, 2)  # P3 kernels, [B, N, C]
    for gen_module in (model.thing_generator, model.stuff_generator):
        weight = gen_module.embed_extractor.weight  # [E, C, 1, 1]
        flat = weight.flatten(1)
        flat = flat - torch.outer(unit, unit @ flat)
        weight.copy_(flat.reshape(weight.shape))
        logits = torch.matmul(gen_module(kernels), enc)
        gen_module.embed_extractor.weight.mul_(mask_logit_std / logits.std().clamp(min=1e-12))
    return model


def _network_batch(model: PanopticFCN, images: list[np.ndarray]) -> torch.Tensor:
    """Preprocess calibration images into one normalised batch at the largest network canvas."""
    sizes = [(im.shape[0], im.shape[1]) for im in images]
    nets = [model.network_size(h, w) for h, w in sizes]
    net = (max(n[0] for n in nets), max(n[1] for n in nets))
    canvas = torch.zeros(len(images), 3, max(s[0] for s in sizes), max(s[1] for s in sizes), dtype=torch.uint8)
    for i, im in enumerate(images):
        canvas[i, :, : im.shape[0], : im.shape[1]] = torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)
    x, _ = model.preprocess(canvas, torch.tensor(sizes, dtype=torch.int64), net)
    return x

