"""Calibrated random weights: a PanopticFCN that gives non-degenerate outputs without training.

A plainly initialised model is useless for testing inference: frozen BN at identity statistics lets activations grow
to ~1e4, deformable offsets then point far outside the map, and mask logits saturate so that every thing mask covers
the image. Calibration fixes the scale of each stage on real pixels:
  * every FrozenBatchNorm takes the per-channel mean/variance of its input on the calibration images (one pass, in
    order), so each block sees unit-scale activations;
  * the offset/mask convs of the deformable layers get small weights (offsets of about a pixel);
  * the kernel generators are scaled so that mask logits spread over a few units around zero;
  * optionally (``class_logit_std``) the thing-centre and stuff-region classifiers are scaled so that their logits
    spread that much: a *decisive* model, whose candidate ranking and per-pixel stuff class are not near-ties. Without
    it the class logits hardly vary, so a rounding-level change (FP16, INT8) reorders candidates and flips pixels,
    which says nothing about the graph's numerics;
  * optionally (``residual_gain`` < 1) each bottleneck's residual branch is scaled down, as training leaves a
    ResNet: a random R50 at unit gain amplifies a rounding-level perturbation about 100x over its 16 blocks
    (measured: FP16 rounding gives 6e-4 relative error after the stem, 5e-2 after res5), which a trained one does
    not.
Used by ``make demo`` before a trained model exists and by every parity test.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from .backbone import BottleneckBlock
from .layers import FrozenBatchNorm2d, ModulatedDeformConvWithOff
from .model import PanopticFCN


@torch.no_grad()
def calibrate_random_model(model: PanopticFCN, images: list[np.ndarray], seed: int = 0,
                           offset_std: float = 0.02, mask_logit_std: float = 3.0,
                           class_logit_std: float | None = None, residual_gain: float = 1.0,
                           progress: bool = True) -> PanopticFCN:
    """Re-draw a model's random weights and calibrate them on ``images`` (HxWx3 uint8 RGB). Returns the model.

    Memory stays at about one inference of the batch: no autograd graph, and the mask-logit spread is computed from
    two small E x E Gram matrices per image instead of the [kernels x pixels] logit matrix (19 GB on the R50 at
    800x1333 with two images). ``progress`` shows a tqdm bar over the calibration steps.
    """
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
    norms = [m for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    # the last norm of every bottleneck: its scale is the residual branch's gain
    branch_ends = {id(m.conv3.norm) for m in model.modules() if isinstance(m, BottleneckBlock)}
    bar = tqdm(total=len(norms) + 3, desc="calibrating random weights", unit="step", disable=not progress)
    calls: dict[int, int] = {}

    def calibrate_bn(module: FrozenBatchNorm2d, inputs):
        x = inputs[0]
        var, mean = torch.var_mean(x.double(), dim=(0, 2, 3))
        module.running_mean.copy_(mean.float())
        module.running_var.copy_(var.float().clamp(min=1e-4))
        module.weight.fill_(residual_gain if id(module) in branch_ends else 1.0)
        module.bias.zero_()
        calls[id(module)] = calls.get(id(module), 0) + 1
        bar.update(1 if bar.n < len(norms) else 0)

    hooks = [m.register_forward_pre_hook(calibrate_bn) for m in norms]
    try:
        heads = model.forward_features(batch)  # sets every FrozenBN on the way, each before it runs
    finally:
        for h in hooks:
            h.remove()
    bar.n = len(norms)
    if any(n > 1 for n in calls.values()):
        # A FrozenBN used twice in one forward ran once with statistics it later replaced: recompute the outputs.
        del heads
        heads = model.forward_features(batch)
    bar.update(1)
    if class_logit_std is not None:
        for head, maps in ((model.position_head.out_inst, heads.centers), (model.position_head.out_sem, heads.regions)):
            bias = head.bias.reshape(1, -1, 1, 1)
            spread = torch.cat([(m - bias).flatten() for m in maps]).double().std().item()
            head.weight.mul_(class_logit_std / max(spread, 1e-12))

    # The encoded feature ends in a ReLU, so it has a large common component: a random kernel would switch a whole
    # mask on or off. Make every generated kernel orthogonal to the mean feature, then scale the generator so that
    # (kernel . encoded feature) spreads over a few units around zero across pixels.
    encoded = heads.encoded.flatten(2).double()  # [B, E, HW]
    mean = encoded.mean(dim=(0, 2))
    unit = (mean / mean.norm().clamp(min=1e-12)).float()
    feature_gram = encoded @ encoded.transpose(1, 2)  # [B, E, E]
    feature_sum = encoded.sum(dim=2)  # [B, E]
    pixels = encoded.shape[2]
    kernels = heads.weights[0].flatten(2).transpose(1, 2)  # P3 kernels, [B, N, C]
    del heads, encoded
    for gen_module in (model.thing_generator, model.stuff_generator):
        weight = gen_module.embed_extractor.weight  # [E, C, 1, 1]
        flat = weight.flatten(1)
        flat = flat - torch.outer(unit, unit @ flat)
        weight.copy_(flat.reshape(weight.shape))
        std = _logit_std(gen_module(kernels).double(), feature_gram, feature_sum, pixels)
        gen_module.embed_extractor.weight.mul_(mask_logit_std / max(std, 1e-12))
        bar.update(1)
    bar.close()
    return model


def _logit_std(embedded: torch.Tensor, feature_gram: torch.Tensor, feature_sum: torch.Tensor, pixels: int) -> float:
    """Standard deviation (unbiased) of every mask logit ``embedded[b, n] . feature[b, :, p]`` without forming them.

    With A = embedded[b] ([N, E]) and F = feature[b] ([E, P]): sum(A F) = (1^T A)(F 1) and
    sum((A F)^2) = <A^T A, F F^T>, so two E x E matrices per image give the exact moments of the N x P logits.
    """
    total = (embedded.sum(dim=1) * feature_sum).sum()
    squares = ((embedded.transpose(1, 2) @ embedded) * feature_gram).sum()
    count = embedded.shape[0] * embedded.shape[1] * pixels
    var = (squares - total * total / count) / max(count - 1, 1)
    return float(var.clamp(min=0.0).sqrt())


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

