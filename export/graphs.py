"""The modules that are exported: thin wrappers that fix the graph's inputs and outputs.

They hold no logic of their own: each calls the model's static forward (``pfcn.model`` / ``pfcn.inference``) and
returns a flat tuple in the order of its ``output_names``, so that every runtime reads outputs by name.
"""

from __future__ import annotations

import torch
from torch import nn

from pfcn.contract import E2E_OUTPUTS
from pfcn.inference import InferenceParams, dataset_category_ids, generate_kernels
from pfcn.metadata import CategoryMeta
from pfcn.model import PanopticFCN
from pfcn.predictor import category_tables


class EndToEndGraph(nn.Module):
    """uint8 RGB images at their original size -> the complete panoptic result, with dataset category ids.

    Inputs: ``images`` [B, 3, H, W] uint8 RGB, image i top-left in the canvas; ``sizes`` [B, 2] int64 (h, w).
    ``net_size`` None makes the network canvas follow the input size (dynamic graphs); a pair fixes it.
    ``outputs``: the names returned, in ``E2E_OUTPUTS`` order (``pfcn.contract.OUTPUT_SETS``).
    """

    def __init__(self, model: PanopticFCN, meta: CategoryMeta, net_size: tuple[int, int] | None,
                 outputs: tuple[str, ...] = E2E_OUTPUTS):
        super().__init__()
        self.model = model
        self.net_size = net_size
        self.outputs = outputs
        things, stuff = category_tables(meta)
        self.register_buffer("thing_ids", things, persistent=False)
        self.register_buffer("stuff_ids", stuff, persistent=False)

    def forward(self, images: torch.Tensor, sizes: torch.Tensor):
        if self.net_size is None:
            hw = torch._shape_as_tensor(images)[2:]
            net = self.model.network_size_tensor(hw)
        else:
            net = self.net_size
        out = self.model(images, sizes, net)
        out["instance_category_ids"], out["segment_category_ids"] = dataset_category_ids(out, self.thing_ids,
                                                                                         self.stuff_ids)
        return tuple(out[name] for name in self.outputs)


class NetworkGraph(nn.Module):
    """Resized uint8 RGB images -> fused thing kernels, stuff kernels and the encoded feature.

    For applications that run the mask products and the merge themselves. Inputs: ``images`` [B, 3, Hn, Wn] uint8
    RGB already resized by the shortest-edge rule and placed top-left (Hn, Wn multiples of 32); ``resized_sizes``
    [B, 2] int64, the resized image sizes (pixels beyond them are treated as padding).
    Masks are ``sigmoid(kernels @ encoded)`` at stride 4 (see ``pfcn.inference.thing_masks``).
    """

    def __init__(self, model: PanopticFCN, params: InferenceParams):
        super().__init__()
        self.model = model
        self.params = params

    def forward(self, images: torch.Tensor, resized_sizes: torch.Tensor):
        m = self.model
        x = m.normalize_resized(images.to(torch.float32), resized_sizes)
        heads = m.forward_features(x)
        return generate_kernels(heads, m.thing_generator, m.stuff_generator, self.params) + (heads.encoded,)
