"""The PyTorch backend: a PanopticFCN model behind the one backend interface (``pfcn.runtime.backend``).

Images are grouped by their padded network canvas (``PanopticFCN.network_size``): inside a group every image gets
exactly the result it would get alone, because GroupNorm and the official mask rescoring see the whole padded canvas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Hashable, Iterable, Iterator, Mapping

import numpy as np
import torch

import pfcn
from pfcn.runtime.backend import predict

from .checkpoint import checkpoint_meta, load_checkpoint_file, match_state_dict
from .config import cfg_to_yaml, config_hash
from .contract import ArtifactInfo, make_canvas
from .metadata import CategoryMeta
from .inference import dataset_category_ids
from .model import PanopticFCN, build_model
from .result import PanopticResult


def default_meta(cfg) -> CategoryMeta:
    """COCO categories when the head sizes are COCO's (the official configs), else generic placeholder ids."""
    things = cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES
    stuff = cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES
    coco = CategoryMeta.coco()
    if (things, stuff) == (coco.num_things, coco.num_stuff):
        return coco
    return CategoryMeta.generic(things, stuff)


def check_meta(meta: CategoryMeta, cfg, source: str) -> CategoryMeta:
    things = cfg.MODEL.POSITION_HEAD.THING.NUM_CLASSES
    stuff = cfg.MODEL.POSITION_HEAD.STUFF.NUM_CLASSES
    if (meta.num_things, meta.num_stuff) != (things, stuff):
        raise ValueError(f"{source}: categories give {meta.num_things} thing / {meta.num_stuff} stuff-head classes but "
                         f"the config has THING.NUM_CLASSES={things}, STUFF.NUM_CLASSES={stuff}")
    return meta


def category_tables(meta: CategoryMeta) -> tuple[torch.Tensor, torch.Tensor]:
    """[T] dataset ids of the thing classes and [S] of the stuff-head labels (label 0, "things", has id 0)."""
    things = torch.tensor(meta.thing_ids, dtype=torch.int64)
    stuff = torch.tensor((0,) + tuple(meta.stuff_ids), dtype=torch.int64)
    return things, stuff


def to_canvas(images: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack HxWx3 uint8 RGB images top-left into a [B, 3, Hmax, Wmax] uint8 canvas plus their [B, 2] sizes."""
    canvas, sizes = make_canvas(images)
    return torch.from_numpy(canvas), torch.from_numpy(sizes)


def check_device(device: str) -> str:
    """``cpu`` or ``cuda[:i]``, and CUDA only where it exists; anything else is a clear error."""
    if device != "cpu" and not (device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit())):
        raise ValueError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    return device


class Predictor:
    """A PanopticFCN on images of any sizes: the PyTorch backend of ``pfcn.runtime``.

    Args:
        model: a built (and loaded) PanopticFCN.
        meta: the dataset categories of the model's classes.
        device: "cpu" or "cuda[:i]".
        batch_size: images per forward within a canvas group.
        cfg: the config the model was built from (recorded in ``info`` so artifacts can be compared with it).
        source: where the weights came from (for messages).

    ``fixed_net_size`` (None by default) pins the network canvas as a fixed-size export does, so that the PyTorch
    model can be compared with such a graph on the same terms.
    """

    name = "pytorch"

    def __init__(self, model: PanopticFCN, meta: CategoryMeta, device: str = "cpu", batch_size: int = 1,
                 cfg=None, source: str = "PyTorch model"):
        self.device = torch.device(check_device(str(device)))
        self.model = model.to(self.device).eval()
        self.batch_size = max(1, int(batch_size))
        self.fixed_net_size: tuple[int, int] | None = None
        props: dict[str, Any] = {"pfcn_version": pfcn.__version__, "graph": "e2e", "precision": "fp32"}
        if cfg is not None:
            props.update(config=cfg_to_yaml(cfg), config_hash=config_hash(cfg))
        self.info = ArtifactInfo(source=source, props=props, meta=meta, graph="e2e", batch=None, fixed_hw=None,
                                 net_size=None, dynamic_range=None, precision="fp32")

    @classmethod
    def from_files(cls, cfg, weights: str | Path | None, device: str = "cpu", batch_size: int = 1,
                   random_weights: bool = False) -> "Predictor":
        """Build the model from ``cfg`` and load ``weights`` strictly.

        Without weights the model keeps its random initialisation, which is allowed only with ``random_weights``
        (outputs of such a model mean nothing; the demo uses it knowingly).
        """
        model = build_model(cfg)
        meta = default_meta(cfg)
        if weights:
            ckpt = load_checkpoint_file(weights)
            match_state_dict(model, ckpt["model"], source=str(weights))
            stored = checkpoint_meta(ckpt)
            if stored is not None:
                meta = check_meta(stored, cfg, str(weights))
            source = str(weights)
        elif random_weights:
            source = "random weights"
        else:
            raise ValueError("no weights given: pass --weights (or MODEL.WEIGHTS) with a checkpoint, or "
                             "--random-weights to run an untrained model knowingly")
        return cls(model, meta, device, batch_size, cfg=cfg, source=source)

    @property
    def meta(self) -> CategoryMeta:
        return self.info.meta

    # ------------------------------------------------------------------------------------ backend interface
    def group_key(self, h: int, w: int) -> Hashable:
        return self.model.network_size(h, w)

    def max_batch(self) -> int:
        return self.batch_size

    @torch.no_grad()
    def run(self, canvas: np.ndarray, sizes: np.ndarray) -> Mapping[str, torch.Tensor]:
        sizes_t = torch.as_tensor(np.asarray(sizes), dtype=torch.int64)
        nets = [self.model.network_size(int(h), int(w)) for h, w in sizes_t.tolist()]
        net = self.fixed_net_size or (max(n[0] for n in nets), max(n[1] for n in nets))  # one group: all equal
        out = self.model(torch.as_tensor(np.asarray(canvas)).to(self.device), sizes_t.to(self.device), net)
        things, stuff = (t.to(self.device) for t in category_tables(self.info.meta))
        out["instance_category_ids"], out["segment_category_ids"] = dataset_category_ids(out, things, stuff)
        return out

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]

    # ------------------------------------------------------------------------------------ conveniences
    def predict(self, images: list[np.ndarray], file_names: list[str | None] | None = None,
                image_ids: list[Any] | None = None) -> list[PanopticResult]:
        """Predict HxWx3 uint8 RGB images; results come back in input order."""
        return predict(self, images, file_names, image_ids)

    def predict_iter(self, items: Iterable[tuple[Any, np.ndarray]]) -> Iterator[tuple[Any, PanopticResult]]:
        """Stream (key, image) pairs one at a time."""
        for key, image in items:
            yield key, self.predict([image])[0]
