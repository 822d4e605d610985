"""The PanopticFCN training loop: one process or many (DistributedDataParallel), exact resume, periodic
checkpoints and evaluation, JSON-lines / TensorBoard metrics.

The loop is detectron2's ``DefaultTrainer`` reduced to what PanopticFCN uses: SGD + WarmupPolyLR (`pfcn.training.
solver`), the official targets and losses, optional AMP, gradient clipping, ``PeriodicCheckpointer`` and
``EvalHook``. Checkpoints number iterations from 0 as in detectron2: after iteration ``i`` a periodic checkpoint
``model_{i:07d}.pth`` is written when ``(i + 1) % SOLVER.CHECKPOINT_PERIOD == 0``, storing ``"iteration": i``; resuming
starts at ``i + 1``. ``last_checkpoint`` names the newest file, as detectron2's checkpointer does. What a user reads
about progress (the console, metrics.jsonl, TensorBoard, eval/metrics_N.json) counts iterations done: "iteration N"
there is the state after N iterations, the one ``model_{N-1:07d}.pth`` holds.

Output folder: a folder that holds an earlier run is refused unless ``resume`` (continue it) or ``overwrite`` (remove
its checkpoints, metrics, TensorBoard events and evaluations first), so two runs never mix. Ctrl-C (SIGINT) stops the
run after the current iteration and writes a checkpoint to resume from; a failed write (disk full, read-only) raises
a `TrainingWriteError` naming the file and the last good checkpoint, which is never deleted before a newer one exists.

Exact resume: a checkpoint holds the model, optimizer, scheduler, AMP scaler, the seed, and per rank (lists indexed
by rank) the loader position (`pfcn.data.TrainLoader.state_dict`) and the python / numpy / torch / CUDA RNG states. The data stream
is a pure function of (seed, position), so a run killed at any point and resumed from its last checkpoint computes
the same iterations as an uninterrupted run, bit for bit on the same machine and thread count.

Distributed: ``torch.distributed`` must be initialised by the caller (``pfcn-train`` does it from torchrun's
environment or by spawning local processes). SOLVER.IMS_PER_BATCH is the global batch; each rank loads
IMS_PER_BATCH / world_size images. As in the official code, each rank normalises its losses by its own object counts
and DDP averages the gradients, which is close to but not exactly a single process on the whole batch;
``global_loss_norm=True`` all-reduces the counts instead, which makes N processes compute the single-process
gradient (up to float summation order).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import random
import re
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import (CheckpointError, CheckpointWriteError, atomic_torch_save, load_checkpoint_file,
                          match_state_dict)
from ..config import cfg_to_yaml
from ..data import PanopticDataset, build_train_loader
from ..evaluation import PanopticEvaluator, PanopticGroundTruth, write_metrics_json
from ..image_io import read_image
from ..metadata import CategoryMeta
from ..model import PanopticFCN, build_model
from ..predictor import Predictor, check_meta
from .events import LOSS_KEYS, EtaMeter, MetricsLog, TensorBoardLog, format_seconds, plot_loss_curve, read_metrics
from .imagenet_weights import initialize_from_weights
from .losses import LossParams, panoptic_losses
from .solver import GradientClipper, build_lr_scheduler, build_optimizer
from .targets import TargetParams, generate_targets

__all__ = ["TrainOptions", "TrainingModel", "Trainer", "train", "LAST_CHECKPOINT", "FINAL_CHECKPOINT",
           "periodic_checkpoints", "resolve_seed", "earlier_run_files", "check_output_folder", "OutputInUseError",
           "TrainingWriteError"]

logger = logging.getLogger("pfcn.train")

LAST_CHECKPOINT = "last_checkpoint"  # detectron2's pointer file: holds the newest checkpoint's file name
FINAL_CHECKPOINT = "model_final.pth"
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


@dataclass
class TrainOptions:
    """How to run a training (the config says what to train).

    Attributes:
        output_dir: checkpoints, metrics.jsonl, tb/, eval/, loss_curve.png, config.yaml.
        resume: continue from ``output_dir/last_checkpoint`` if it exists (else start from MODEL.WEIGHTS).
        keep: periodic checkpoints kept on disk, newest first (0 = all); model_final.pth is always kept.
        log_period: iterations between console lines / metric records.
        global_loss_norm: all-reduce the loss normalisers over ranks (see the module docstring).
        num_workers: loader processes; None = DATALOADER.NUM_WORKERS.
        tensorboard: also write TensorBoard events under output_dir/tb.
        overwrite: start afresh in a folder that holds an earlier run, removing that run's files first.
    """

    output_dir: Path
    resume: bool = False
    keep: int = 3
    log_period: int = 20
    global_loss_norm: bool = False
    num_workers: int | None = None
    tensorboard: bool = True
    overwrite: bool = False


class OutputInUseError(ValueError):
    """The output folder holds an earlier run and neither resume nor overwrite was asked for."""


class TrainingWriteError(OSError):
    """Writing a checkpoint (or the pointer to it) failed; the message names the file and the last good checkpoint."""

    def __init__(self, message: str, cause: OSError):
        super().__init__(cause.errno, message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class TrainingModel(nn.Module):
    """Network, targets and losses in one forward, so that DDP sees every parameter the losses use."""

    def __init__(self, model: PanopticFCN, cfg: Any):
        super().__init__()
        self.model = model
        self.target_params = TargetParams.from_cfg(cfg)
        self.loss_params = LossParams.from_cfg(cfg)

    def forward(self, samples: list[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Losses of a batch of dataset samples, and the batch's loss normalisers [things, stuff] (int64)."""
        x, _ = self.model.normalize([s["image"] for s in samples])
        heads = self.model.forward_features(x)
        targets = generate_targets(samples, tuple(x.shape[-2:]), [tuple(c.shape[-2:]) for c in heads.centers],
                                   tuple(heads.encoded.shape[-2:]), self.target_params, device=x.device)
        losses = panoptic_losses(heads, targets, self.model.thing_generator, self.model.stuff_generator,
                                 self.loss_params)
        counts = torch.stack([sum(lv.slot_valid.sum() for lv in targets.levels),
                              sum(lv.sem_slot_valid.sum() for lv in targets.levels)])
        return losses, counts


# ---- small helpers -----------------------------------------------------------------------------------------------
def _rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def resolve_seed(cfg_seed: int, device: torch.device) -> int:
    """SEED, or for SEED < 0 a fresh random seed drawn on rank 0 and shared with every rank."""
    if cfg_seed >= 0:
        return int(cfg_seed)
    seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
    rank, world = _rank_world()
    if world > 1:
        t = torch.tensor([seed], dtype=torch.int64, device=device)
        dist.broadcast(t, src=0)
        seed = int(t.item())
    return seed


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    """This process's RNG states in types ``torch.load(weights_only=True)`` reads back."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _all_gather(obj: Any) -> list[Any]:
    rank, world = _rank_world()
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def periodic_checkpoints(folder: Path) -> list[Path]:
    """The folder's ``model_XXXXXXX.pth`` files, oldest first."""
    found = [(int(m.group(1)), p) for p in folder.glob("model_*.pth") if (m := _PERIODIC.match(p.name))]
    return [p for _, p in sorted(found)]


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise


# What a run writes into its folder (log.txt and config.yaml are rewritten by every run and do not count).
_RUN_FILES = (LAST_CHECKPOINT, FINAL_CHECKPOINT, "metrics.jsonl")
_RUN_FOLDERS = ("tb", "eval")


def earlier_run_files(folder: Path) -> list[Path]:
    """The files of an earlier training run in ``folder``: checkpoints, last_checkpoint, metrics.jsonl."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [folder / n for n in _RUN_FILES if (folder / n).exists()] + periodic_checkpoints(folder)


def check_output_folder(folder: Path, resume: bool, overwrite: bool) -> None:
    """Refuse a folder that is a file, or that holds an earlier run when neither resume nor overwrite is asked."""
    folder = Path(folder)
    if resume and overwrite:
        raise ValueError("--resume continues the run in the output folder and --overwrite replaces it: give one")
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} is a file, not a folder: give a folder for the training outputs (--out)")
    earlier = [] if resume or overwrite else earlier_run_files(folder)
    if earlier:
        raise OutputInUseError(
            f"{folder} holds an earlier training run ({', '.join(p.name for p in earlier[:4])}"
            f"{', ...' if len(earlier) > 4 else ''}): pass --resume to continue it, --overwrite to replace it, "
            f"or choose another --out")


def _remove_earlier_run(folder: Path) -> list[str]:
    """Delete an earlier run's checkpoints, metrics, TensorBoard events, evaluations and loss curve."""
    removed = []
    for path in earlier_run_files(folder) + [folder / "loss_curve.png"]:
        if path.is_file():
            path.unlink()
            removed.append(path.name)
    for name in _RUN_FOLDERS:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
            removed.append(name + "/")
    return removed


class _StopOnInterrupt:
    """Turns the first Ctrl-C (SIGINT) into a request to stop after the current iteration; a second one aborts.

    Only the main thread can own signal handlers; elsewhere (a trainer driven from a thread) Ctrl-C keeps its default.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None
        self._pid = -1

    def __enter__(self) -> "_StopOnInterrupt":
        if threading.current_thread() is threading.main_thread():
            self._pid = os.getpid()
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked data-loader worker inherited the handler: it keeps serving until the loader closes
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        # os.write, not logging: a signal handler may interrupt a write of the same buffered stream (re-entry error)
        os.write(2, b"Ctrl-C: stopping after the current iteration and writing a checkpoint to resume from "
                    b"(Ctrl-C again aborts without one)\n")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


# The buffers (FrozenBN statistics) never change in training: DDP need not re-send them every forward (detectron2
# sets broadcast_buffers=False; torch >= 2.14 renames the per-forward part forward_sync_buffers).
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


def _autocast_dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.bfloat16


# ---- the trainer -------------------------------------------------------------------------------------------------
class Trainer:
    """Builds everything a run needs from a config and datasets, then ``train()`` runs it.

    Args:
        cfg: frozen config (MODEL.DEVICE selects the device; under DDP on CUDA use ``cuda:LOCAL_RANK``).
        train_dataset: the untransformed training dataset (its ``meta`` must match the heads).
        test_datasets: datasets evaluated every TEST.EVAL_PERIOD iterations and at the end ([] = no evaluation).
        options: `TrainOptions`.
    """

    def __init__(self, cfg: Any, train_dataset: PanopticDataset, test_datasets: Sequence[PanopticDataset],
                 options: TrainOptions):
        self.cfg = cfg
        self.options = options
        self.rank, self.world = _rank_world()
        self.device = torch.device(cfg.MODEL.DEVICE)
        self.out = Path(options.output_dir)
        self.meta: CategoryMeta = check_meta(train_dataset.meta, cfg, f"training dataset {train_dataset.name}")
        for ds in test_datasets:
            if (ds.meta.thing_ids, ds.meta.stuff_ids) != (self.meta.thing_ids, self.meta.stuff_ids):
                raise ValueError(f"test dataset {ds.name}: its categories differ from the training dataset "
                                 f"{train_dataset.name}'s")
        self.train_dataset = train_dataset
        self.test_datasets = list(test_datasets)
        self.max_iter = int(cfg.SOLVER.MAX_ITER)
        self.amp = bool(cfg.SOLVER.AMP.ENABLED)
        if self.amp and self.device.type not in ("cuda", "cpu"):
            raise ValueError(f"SOLVER.AMP.ENABLED on device {self.device}: only cuda (float16) and cpu (bfloat16)")
        if options.keep < 0:
            raise ValueError(f"keep={options.keep}: must be >= 0 (0 keeps every periodic checkpoint)")
        if options.log_period < 1:
            raise ValueError(f"log_period={options.log_period}: must be >= 1")
        check_output_folder(self.out, options.resume, options.overwrite)

        resume_from = self._resume_path()
        ckpt = load_checkpoint_file(resume_from) if resume_from else None
        if ckpt is not None:
            missing = [k for k in ("optimizer", "scheduler", "iteration", "loader", "rng", "seed") if k not in ckpt]
            if missing:
                raise CheckpointError(f"{resume_from}: not a pfcn training checkpoint (no {', '.join(missing)}); "
                                      f"it cannot be resumed — pass it as MODEL.WEIGHTS / --weights instead")
            self.seed = int(ckpt["seed"]) if int(cfg.SEED) < 0 else int(cfg.SEED)
        else:
            self.seed = resolve_seed(int(cfg.SEED), self.device)

        # Same initial weights whatever the world size (DDP would broadcast rank 0's anyway), then per-rank streams.
        _seed_all(self.seed)
        self.model = build_model(cfg).to(self.device)
        self.init_report = None
        if ckpt is None and cfg.MODEL.WEIGHTS:
            self.init_report = initialize_from_weights(self.model, cfg.MODEL.WEIGHTS, cfg)
        self.model.train()
        _seed_all(self.seed + self.rank)

        train_model: nn.Module = TrainingModel(self.model, cfg)
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=ids, **_NO_BUFFER_SYNC)
        self.train_model = train_model
        self.optimizer = build_optimizer(cfg, self.model)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer)
        self.clipper = GradientClipper.from_cfg(cfg)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp and self.device.type == "cuda" else None
        self.start_iter = 0
        if ckpt is not None:
            self._load_training_state(ckpt, resume_from)
        self.loader = build_train_loader(cfg, train_dataset, seed=self.seed, start_iter=self.start_iter,
                                         rank=self.rank, world_size=self.world, num_workers=options.num_workers)
        if ckpt is not None:
            self.loader.load_state_dict(ckpt["loader"][self.rank])  # checks seed / batch / rank / world size
        self._rng_to_restore = ckpt["rng"][self.rank] if ckpt is not None else None
        self.resumed_from = resume_from

    # ---- checkpoints -------------------------------------------------------------------------------------------
    def _resume_path(self) -> Path | None:
        if not self.options.resume:
            return None
        pointer = self.out / LAST_CHECKPOINT
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        path = self.out / name
        if not path.is_file():
            raise FileNotFoundError(f"{pointer} names {name}, which does not exist in {self.out}")
        return path

    def _load_training_state(self, ckpt: dict[str, Any], path: Path) -> None:
        match_state_dict(self.model, ckpt["model"], source=str(path))
        saved_world = len(ckpt["rng"])
        if saved_world != self.world:
            raise CheckpointError(f"{path} was written by {saved_world} process(es); resume it with the same number "
                                  f"(now {self.world}) so the data order and RNG streams continue exactly")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_iter = int(ckpt["iteration"]) + 1

    def _training_state(self, iteration: int) -> dict[str, Any]:
        """Everything to continue after ``iteration`` (collective: every rank must call it)."""
        rng = _all_gather(_rng_state())
        loaders = _all_gather(self.loader.state_dict())
        return {
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "meta": self.meta.to_dict(),
            "cfg": self._cfg_yaml(),
            "iteration": iteration,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "loader": loaders,
            "seed": self.seed,
            "rng": rng,
        }

    def _cfg_yaml(self) -> str:
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.SEED = self.seed
        cfg.DATASETS.TRAIN = [self.train_dataset.name]
        cfg.DATASETS.TEST = [d.name for d in self.test_datasets]
        return cfg_to_yaml(cfg)

    def save(self, iteration: int, name: str | None = None) -> Path | None:
        """Write a checkpoint after ``iteration`` (rank 0 writes; every rank must call). Returns the path on rank 0."""
        state = self._training_state(iteration)
        if self.rank != 0:
            return None
        name = name or f"model_{iteration:07d}.pth"
        try:
            path = atomic_torch_save(state, self.out / name)
            _atomic_write_text(self.out / LAST_CHECKPOINT, name)
        except OSError as e:
            raise TrainingWriteError(f"{e if isinstance(e, CheckpointWriteError) else self._write_failure(e)}; "
                                     f"{self._last_good()}", e) from e
        if self.options.keep:
            for old in periodic_checkpoints(self.out)[:-self.options.keep]:
                if old.name != name:
                    old.unlink(missing_ok=True)
        return path

    def _write_failure(self, error: OSError) -> str:
        return f"{error.filename or self.out}: cannot write: {error.strerror or error}"

    def _last_good(self) -> str:
        """Where the run can continue from after a failed write (the checkpoint last_checkpoint names)."""
        pointer = self.out / LAST_CHECKPOINT
        name = pointer.read_text().strip() if pointer.is_file() else ""
        if name and (self.out / name).is_file():
            return (f"the last good checkpoint is {self.out / name}: free space (or fix the folder) and rerun with "
                    f"--resume to continue from it")
        return "no earlier checkpoint of this run exists, so the training has to be repeated"

    # ---- evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, iteration: int) -> dict[str, Any] | None:
        """Evaluate the current weights on every test dataset (sharded over ranks). Returns rank 0's results of
        the first dataset (None elsewhere); writes OUTPUT/eval/<dataset>/metrics_<iteration>.json, ``iteration``
        counting the iterations done."""
        first = None
        predictor = Predictor(self.model, self.meta, str(self.device))
        try:
            for ds in self.test_datasets:
                gt = PanopticGroundTruth(ds.panoptic_json, ds.panoptic_root)
                evaluator = PanopticEvaluator(gt)
                for index in range(self.rank, len(ds), self.world):
                    rec = ds.gt_record(index)
                    result = predictor.predict([read_image(rec.file_name)], file_names=[Path(rec.file_name).name],
                                               image_ids=[rec.image_id])[0]
                    evaluator.process(result, image_id=rec.image_id)
                states = _all_gather(evaluator.state())
                if self.rank != 0:
                    continue
                for other, state in enumerate(states):
                    if other != 0:
                        evaluator.merge(state)
                results = evaluator.evaluate()
                folder = self.out / "eval" / re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(ds.name).name or "test")
                write_metrics_json(results, folder / f"metrics_{iteration:07d}.json",
                                   extra={"iteration": iteration, "dataset": ds.name})
                pan = results["panoptic"]
                logger.info("eval %s @ iter %d: PQ %.1f SQ %.1f RQ %.1f | things PQ %.1f | stuff PQ %.1f", ds.name,
                            iteration, pan["All"]["PQ"], pan["All"]["SQ"], pan["All"]["RQ"], pan["Things"]["PQ"],
                            pan["Stuff"]["PQ"])
                first = first or results
        finally:
            self.model.train()
        return first

    # ---- the loop ----------------------------------------------------------------------------------------------
    def _step(self, batch: list[dict[str, Any]]) -> dict[str, float]:
        with torch.autocast(self.device.type, dtype=_autocast_dtype(self.device), enabled=self.amp):
            losses, counts = self.train_model(batch)
        if self.options.global_loss_norm and self.world > 1:
            local = counts.to(torch.float32).clamp(min=1.0)
            total = counts.to(torch.float32)
            dist.all_reduce(total)
            scale = local / total.clamp(min=1.0) * self.world  # rank loss = its sums / global count * world
            losses = {k: v * (scale[1] if k == "loss_seg_st" else scale[0] if k != "loss_pos_st" else 1.0)
                      for k, v in losses.items()}
        loss = sum(losses.values())
        values = {k: float(v.detach()) for k, v in losses.items()}
        if not all(math.isfinite(v) for v in values.values()):
            raise FloatingPointError(f"loss became infinite or NaN at iteration {self.iter}: {values}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if self.clipper is not None:
                self.clipper(self.optimizer)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.clipper is not None:
                self.clipper(self.optimizer)
            self.optimizer.step()
        self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this iteration used (detectron2 logs it)
        self.scheduler.step()
        return values

    def _reduce_mean(self, sums: dict[str, float], n: int) -> dict[str, float]:
        """Window means of the losses, averaged over ranks (what detectron2 logs)."""
        keys = list(LOSS_KEYS)
        t = torch.tensor([sums.get(k, 0.0) / max(n, 1) for k in keys], dtype=torch.float64)
        if self.world > 1:
            t = t.to(self.device)
            dist.all_reduce(t)
            t = t / self.world
        return dict(zip(keys, t.cpu().tolist()))

    def _stop_requested(self, interrupt: _StopOnInterrupt) -> bool:
        """Whether any rank was asked to stop (collective: every rank must call it each iteration)."""
        if self.world == 1:
            return interrupt.requested
        flag = torch.tensor([1.0 if interrupt.requested else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def train(self) -> dict[str, Any]:
        """Run from ``start_iter`` to SOLVER.MAX_ITER. Returns a summary (rank 0: losses, eval results, paths).

        Ctrl-C stops after the current iteration: a checkpoint is written and the summary says ``interrupted``.
        """
        cfg, opts = self.cfg, self.options
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            if opts.overwrite:
                removed = _remove_earlier_run(self.out)
                if removed:
                    logger.warning("--overwrite: removed the earlier run in %s (%s)", self.out, ", ".join(removed))
            _atomic_write_text(self.out / "config.yaml", self._cfg_yaml())
            if self.init_report is not None:
                logger.info("%s", self.init_report.summary())
        metrics = MetricsLog(self.out / "metrics.jsonl", self.start_iter) if self.rank == 0 else None
        tb = TensorBoardLog(self.out / "tb", self.start_iter) if self.rank == 0 and opts.tensorboard else None
        if self.resumed_from is not None:
            logger.info("resuming from %s at iteration %d", self.resumed_from, self.start_iter)
        logger.info("training %d -> %d iterations, %d process(es), %d image(s) per batch per process, seed %d, "
                    "device %s%s", self.start_iter, self.max_iter, self.world, self.loader.sampler.batch_size,
                    self.seed, self.device, ", AMP" if self.amp else "")
        period_ckpt = int(cfg.SOLVER.CHECKPOINT_PERIOD)
        period_eval = int(cfg.TEST.EVAL_PERIOD)
        eta = EtaMeter(self.max_iter)
        window: dict[str, float] = {}
        window_n, data_time = 0, 0.0
        last_eval = None
        last_losses: dict[str, float] = {}
        start = time.perf_counter()
        self.iter = self.start_iter
        batches = iter(self.loader)
        if self._rng_to_restore is not None:  # after the loader drew its worker seeds, as the original run did
            _set_rng_state(self._rng_to_restore)
        eta.step()
        final_path: Path | None = None
        interrupted_at: Path | None = None
        try:
            with _StopOnInterrupt() as interrupt:
                while self.iter < self.max_iter:
                    i = self.iter
                    done = i + 1  # iterations done after this one: what the console and the metrics count
                    t0 = time.perf_counter()
                    try:
                        batch = next(batches)
                    except Exception:
                        # In a terminal, Ctrl-C reaches the loader's worker processes too, and they stop: then the
                        # loader fails. Nothing of this iteration ran, so stop as after the previous one.
                        if not (interrupt.requested and self.world == 1):
                            raise
                        logger.warning("the data loader stopped after Ctrl-C")
                        if self.iter > self.start_iter:
                            interrupted_at = self.save(self.iter - 1)
                        break
                    data_time += time.perf_counter() - t0
                    values = self._step(batch)
                    for k, v in values.items():
                        window[k] = window.get(k, 0.0) + v
                    window_n += 1
                    eta.step()
                    if done % opts.log_period == 0 or done == self.max_iter:
                        last_losses = self._reduce_mean(window, window_n)
                        record = {"iteration": done, **last_losses, "total_loss": sum(last_losses.values()),
                                  "lr": self.lr,
                                  "time": eta.seconds_per_iter(), "data_time": data_time / window_n,
                                  "eta_seconds": eta.eta(done)}
                        if self.rank == 0:
                            metrics.write(record)
                            if tb is not None:
                                tb.write(record)
                            logger.info("iter %d/%d  eta %s  total %.3f  %s  lr %.5f  %.3f s/it", done,
                                        self.max_iter, format_seconds(record["eta_seconds"]), record["total_loss"],
                                        "  ".join(f"{k[5:]} {v:.3f}" for k, v in last_losses.items()),
                                        record["lr"], record["time"])
                        window, window_n, data_time = {}, 0, 0.0
                    final = done == self.max_iter
                    if period_ckpt > 0 and done % period_ckpt == 0 and not final:
                        self.save(i)
                        eta.pause()
                    if self.test_datasets and ((period_eval > 0 and done % period_eval == 0) or final):
                        last_eval = self.evaluate(done)
                        if last_eval is not None and self.rank == 0:
                            pan = last_eval["panoptic"]
                            rec = {"iteration": done, **{f"eval/{m}": pan["All"][m] for m in ("PQ", "SQ", "RQ")},
                                   **{f"eval/{m}_{g[:2].lower()}": pan[g][m] for g in ("Things", "Stuff")
                                      for m in ("PQ", "SQ", "RQ")}}
                            metrics.write(rec)
                            if tb is not None:
                                tb.write(rec)
                        eta.pause()
                    self.iter += 1
                    if not final and self._stop_requested(interrupt):
                        interrupted_at = self.save(i)  # collective; the path on rank 0
                        break
            if self.iter >= self.max_iter and (self.start_iter < self.max_iter
                                               or not (self.out / FINAL_CHECKPOINT).is_file()):
                final_path = self.save(self.max_iter - 1, FINAL_CHECKPOINT)
        finally:
            if tb is not None:
                tb.close()
            close = getattr(batches, "close", None)
            if close is not None:
                close()
        elapsed = time.perf_counter() - start
        interrupted = self.iter < self.max_iter
        summary: dict[str, Any] = {"iterations": self.iter - self.start_iter, "seconds": elapsed,
                                   "final_checkpoint": None if interrupted else str(final_path or
                                                                                   self.out / FINAL_CHECKPOINT),
                                   "losses": last_losses, "eval": last_eval, "seed": self.seed,
                                   "interrupted": interrupted, "iterations_done": self.iter,
                                   "checkpoint": str(interrupted_at) if interrupted_at else None,
                                   "metrics": str(self.out / "metrics.jsonl"),
                                   "tensorboard": str(self.out / "tb") if opts.tensorboard else None}
        if self.rank == 0:
            records = read_metrics(self.out / "metrics.jsonl")
            if any("total_loss" in r for r in records):
                summary["loss_curve"] = str(plot_loss_curve(records, self.out / "loss_curve.png",
                                                            title=f"pfcn-train: {Path(self.out).name}"))
            if interrupted:
                logger.warning("stopped by Ctrl-C after iteration %d of %d; checkpoint %s (rerun with --resume to "
                               "continue)", self.iter, self.max_iter, interrupted_at)
            else:
                logger.info("done: %d iteration(s) in %s -> %s", summary["iterations"], format_seconds(elapsed),
                            summary["final_checkpoint"])
        return summary


def train(cfg: Any, train_dataset: PanopticDataset, test_datasets: Sequence[PanopticDataset],
          options: TrainOptions) -> dict[str, Any]:
    """Build a `Trainer` and run it (see `Trainer.train`)."""
    return Trainer(cfg, train_dataset, test_datasets, options).train()
