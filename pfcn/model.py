"""PanopticFCN: the network and its static end-to-end forward.

``forward`` goes from uint8 RGB images at their original size to the fixed-size panoptic outputs of
``pfcn.inference.postprocess``: in-graph resize and normalisation, the network, then post-processing. Training uses
``normalize`` + ``forward_features`` and the losses in ``pfcn.training``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .backbone import FPN, ResNet
from .heads import FeatureEncoder, KernelGenerator, KernelHead, PositionHead, SemanticFPN
from .inference import HeadOutputs, InferenceParams, PanopticMerge, postprocess
from .resize import pil_bilinear_resize, shortest_edge_size, shortest_edge_size_py

LEVEL_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


class PanopticFCN(nn.Module):
    """Backbone + semantic FPN + feature encoder + per-level position/kernel heads + kernel generators.

    Attribute names equal the official state_dict prefixes.
    """

    def __init__(self, backbone: FPN, semantic_fpn: SemanticFPN, feature_encoder: FeatureEncoder,
                 position_head: PositionHead, kernel_head: KernelHead, thing_generator: KernelGenerator,
                 stuff_generator: KernelGenerator, in_features: list[str], pixel_mean: list[float],
                 pixel_std: list[float], input_format: str, params: InferenceParams, min_size_test: int,
                 max_size_test: int):
        super().__init__()
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"INPUT.FORMAT={input_format!r}: pfcn supports 'BGR' and 'RGB'")
        self.backbone = backbone
        self.semantic_fpn = semantic_fpn
        self.feature_encoder = feature_encoder
        self.position_head = position_head
        self.kernel_head = kernel_head
        self.thing_generator = thing_generator
        self.stuff_generator = stuff_generator
        self.in_features = list(in_features)
        self.input_format = input_format
        self.params = params
        self.min_size_test = min_size_test
        self.max_size_test = max_size_test
        self.merge = PanopticMerge(params, position_head.out_sem.out_channels)
        # Not in the official state_dict: the official model applies them through a lambda.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).reshape(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).reshape(1, 3, 1, 1),
                             persistent=False)

    size_divisibility = FPN.size_divisibility

    # ------------------------------------------------------------------ network
    def forward_features(self, x: torch.Tensor) -> HeadOutputs:
        """Network outputs for a normalised batch x [B, 3, H, W] (H, W multiples of 32)."""
        feats = self.backbone(x)
        encoded = self.feature_encoder(self.semantic_fpn(feats))
        centers, regions, weights = [], [], []
        for name in self.in_features:
            center, region = self.position_head(feats[name])
            centers.append(center)
            regions.append(region)
            weights.append(self.kernel_head(feats[name]))
        return HeadOutputs(centers, regions, weights, encoded)

    def normalize(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Training/ImageList-style batching: images already in INPUT.FORMAT order ([3, h, w] uint8), normalised,
        then zero-padded bottom/right to a common size divisible by 32."""
        sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
        hmax = _ceil_to(max(s[0] for s in sizes), self.size_divisibility)
        wmax = _ceil_to(max(s[1] for s in sizes), self.size_divisibility)
        batch = self.pixel_mean.new_zeros(len(images), 3, hmax, wmax)
        for i, im in enumerate(images):
            x = (im.to(batch.device, torch.float32) - self.pixel_mean[0]) / self.pixel_std[0]
            batch[i, :, : sizes[i][0], : sizes[i][1]] = x
        return batch, sizes

    # ---------------------------------------------------------------- inference
    def network_size(self, h: int, w: int) -> tuple[int, int]:
        """Padded network canvas for an image of size h x w: its test-resized size rounded up to 32."""
        rh, rw = shortest_edge_size_py(h, w, self.min_size_test, self.max_size_test)
        return _ceil_to(rh, self.size_divisibility), _ceil_to(rw, self.size_divisibility)

    def network_size_tensor(self, hw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``network_size`` on a [2] int64 tensor (a traced input shape), for graphs with dynamic sizes."""
        r = shortest_edge_size(hw.reshape(1, 2), self.min_size_test, self.max_size_test)[0]
        div = self.size_divisibility
        net = torch.div(r + (div - 1), div, rounding_mode="floor") * div
        return net[0], net[1]

    def preprocess(self, images: torch.Tensor, sizes: torch.Tensor,
                   net_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 RGB canvas [B, 3, H, W] holding each image top-left at ``sizes`` -> normalised network input.

        Resizes each image by the shortest-edge rule into a ``net_size`` canvas with PIL's bilinear filter, bit for
        bit (``pfcn.resize.pil_bilinear_resize``: detectron2 resizes uint8 images with PIL, antialiased when
        shrinking), then channel order, mean/std, and zero padding.
        """
        hn, wn = net_size
        resized = self.resized_sizes(sizes, net_size)
        # A fixed network canvas comes with a fixed input canvas (dynamic graphs trace both as tensors), so its
        # shape is a constant and bounds how much any image can shrink: the resize reads a fixed window of pixels.
        fixed = isinstance(hn, int) and isinstance(wn, int)
        shrink = self.max_shrink((int(images.shape[2]), int(images.shape[3])), (hn, wn)) if fixed else None
        x = pil_bilinear_resize(images, sizes, resized, (hn, wn), shrink)  # [B, 3, hn, wn] integers 0..255
        return self.normalize_resized(x, resized, (hn, wn)), resized

    def resized_sizes(self, sizes: torch.Tensor, net_size: tuple[int, int]) -> torch.Tensor:
        """[B, 2] int64 (h, w) of each image after the shortest-edge rule, within a ``net_size`` canvas.

        An image whose resized size does not fit the canvas (a fixed-size graph fed an image of another aspect ratio)
        is squeezed into it rather than cropped; within its own canvas this never triggers.
        """
        hn, wn = net_size
        resized = shortest_edge_size(sizes, self.min_size_test, self.max_size_test)
        if isinstance(hn, int) and isinstance(wn, int) and not torch.jit.is_tracing():
            # device arithmetic only: no host-to-device copy, so a CUDA graph can capture the whole forward
            return torch.stack([resized[:, 0].clamp(max=hn), resized[:, 1].clamp(max=wn)], 1)
        # a traced ONNX graph (the canvas may be a traced shape)
        limit = torch.stack([torch.as_tensor(hn), torch.as_tensor(wn)]).to(resized).reshape(1, 2)
        return torch.minimum(resized, limit)

    def max_shrink(self, in_hw: tuple[int, int], net_hw: tuple[int, int]) -> float:
        """A bound on ``size / resized size`` along either axis for any image that fits an ``in_hw`` canvas and is
        resized into a ``net_hw`` canvas (1.0: every such image is enlarged or kept).

        The shortest-edge rule scales by ``s = min(short / min(h, w), max_size / max(h, w))``, so ``1 / s`` is at
        most the bound for the canvas itself; rounding a shrunk side to an integer (at least 1) can add up to half
        of it, and an image squeezed into the network canvas shrinks by at most canvas / network canvas.
        """
        ih, iw = in_hw
        shrink = max(min(ih, iw) / self.min_size_test, max(ih, iw) / self.max_size_test, ih / net_hw[0],
                     iw / net_hw[1])
        return 1.0 if shrink <= 1 else 1.5 * shrink

    def normalize_resized(self, x: torch.Tensor, resized: torch.Tensor, net_size=None) -> torch.Tensor:
        """Resized RGB pixel values [B, 3, Hn, Wn] (0..255, image i top-left at ``resized[i]``) -> network input:
        the model's channel order, mean/std, and zeros outside each image (detectron2 pads after normalising).

        ``net_size`` (Hn, Wn) is passed where it is a traced tensor (dynamic-size export) rather than read off ``x``.
        """
        hn, wn = net_size if net_size is not None else (x.shape[2], x.shape[3])
        if self.input_format == "BGR":
            x = x.flip(1)
        x = (x - self.pixel_mean) / self.pixel_std
        rows = torch.arange(hn, device=x.device).reshape(1, 1, -1, 1) < resized[:, 0].reshape(-1, 1, 1, 1)
        cols = torch.arange(wn, device=x.device).reshape(1, 1, 1, -1) < resized[:, 1].reshape(-1, 1, 1, 1)
        return x * (rows & cols).to(x.dtype)

    def forward(self, images: torch.Tensor, sizes: torch.Tensor | None = None,
                net_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """Static end-to-end inference.

        Args:
            images: [B, 3, H, W] uint8 RGB; image i occupies the top-left ``sizes[i]`` of the canvas.
            sizes: [B, 2] int64 (h, w); default: every image fills the canvas.
            net_size: padded network canvas; default ``network_size(H, W)``. Images whose own ``network_size``
                equals it get exactly the result they would get alone (GroupNorm and the official rescoring see
                the padded canvas, so a bigger canvas changes results slightly).
        Returns:
            the fixed-size output dict of ``pfcn.inference.postprocess`` at the canvas size H x W.
        """
        b, _, h, w = images.shape
        if sizes is None:
            sizes = torch.stack([torch.full((b,), h, dtype=torch.int64, device=images.device),
                                 torch.full((b,), w, dtype=torch.int64, device=images.device)], 1)
        if net_size is None:
            net_size = self.network_size(h, w)
        x, resized = self.preprocess(images, sizes, net_size)
        heads = self.forward_features(x)
        return postprocess(heads, self.thing_generator, self.stuff_generator, resized, sizes, (h, w), self.params,
                           self.merge)


def _ceil_to(x: int, div: int) -> int:
    return int(math.ceil(x / div) * div)


def build_model(cfg) -> PanopticFCN:
    """Build PanopticFCN from a config; the only place that reads cfg.MODEL for the network."""
    m = cfg.MODEL
    if m.META_ARCHITECTURE != "PanopticFCN":
        raise ValueError(f"MODEL.META_ARCHITECTURE={m.META_ARCHITECTURE!r}: pfcn builds 'PanopticFCN' only")
    r = m.RESNETS
    bottom_up = ResNet(depth=r.DEPTH, norm=r.NORM, stem_out_channels=r.STEM_OUT_CHANNELS,
                       res2_out_channels=r.RES2_OUT_CHANNELS, width_per_group=r.WIDTH_PER_GROUP * r.NUM_GROUPS,
                       stride_in_1x1=r.STRIDE_IN_1X1, res5_dilation=r.RES5_DILATION, freeze_at=m.BACKBONE.FREEZE_AT)
    if r.NUM_GROUPS != 1:
        raise ValueError(f"MODEL.RESNETS.NUM_GROUPS={r.NUM_GROUPS}: grouped (ResNeXt) convs are not supported")
    fpn = FPN(bottom_up, list(m.FPN.IN_FEATURES), m.FPN.OUT_CHANNELS, m.FPN.NORM)
    sem = m.SEMANTIC_FPN
    semantic_fpn = SemanticFPN(list(sem.IN_FEATURES), m.FPN.OUT_CHANNELS, LEVEL_STRIDES, sem.CONVS_DIM,
                               sem.COMMON_STRIDE, sem.NORM)
    enc = m.FEATURE_ENCODER
    feature_encoder = FeatureEncoder(sem.CONVS_DIM, enc.CONVS_DIM, enc.NUM_CONVS, enc.DEFORM, enc.COORD, enc.NORM)
    pos = m.POSITION_HEAD
    position_head = PositionHead(m.FPN.OUT_CHANNELS, pos.CONVS_DIM, pos.NUM_CONVS, pos.THING.NUM_CLASSES,
                                 pos.STUFF.NUM_CLASSES, pos.DEFORM, pos.COORD, pos.NORM, pos.THING.BIAS_VALUE)
    ker = m.KERNEL_HEAD
    kernel_head = KernelHead(m.FPN.OUT_CHANNELS, ker.CONVS_DIM, ker.NUM_CONVS, ker.DEFORM, ker.COORD, ker.NORM)
    thing_generator = KernelGenerator(ker.CONVS_DIM, enc.CONVS_DIM)
    stuff_generator = KernelGenerator(ker.CONVS_DIM, enc.CONVS_DIM, rows_as_batch=True)
    if len(enc.IN_FEATURES) != 5:
        raise ValueError(f"MODEL.FEATURE_ENCODER.IN_FEATURES={list(enc.IN_FEATURES)}: PanopticFCN uses 5 levels")
    return PanopticFCN(fpn, semantic_fpn, feature_encoder, position_head, kernel_head, thing_generator,
                       stuff_generator, list(enc.IN_FEATURES), list(m.PIXEL_MEAN), list(m.PIXEL_STD),
                       cfg.INPUT.FORMAT, InferenceParams.from_cfg(cfg), cfg.INPUT.MIN_SIZE_TEST,
                       cfg.INPUT.MAX_SIZE_TEST)
