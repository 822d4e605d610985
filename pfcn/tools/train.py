"""pfcn-train: train PanopticFCN (the official recipe) on COCO-panoptic-format data.

    pfcn-train --config C [--out DIR] [--resume | --overwrite] [--num-gpus N] [--device cpu|cuda] [--weights W]
               [--seed S]
               [--train-dataset NAME_OR_DIR | --train-images DIR --train-json J [--train-png DIR]]
               [--test-dataset NAME_OR_DIR | --test-images DIR --test-json J [--test-png DIR]]
               [--keep N] [--log-period N] [--global-loss-norm] [--no-eval] [KEY VALUE ...]

Datasets default to DATASETS.TRAIN / DATASETS.TEST of the config, resolved by pfcn.data (official names under
$PFCN_DATASETS, or folders holding images/, panoptic/ and panoptic.json, such as pfcn-synth writes). The model is
evaluated on the test set every TEST.EVAL_PERIOD iterations and at the end (--no-eval: never). OUTPUT (--out, else
OUTPUT_DIR) receives model_XXXXXXX.pth / model_final.pth (official {"model": ...} format plus "meta" and "cfg"),
last_checkpoint, config.yaml, metrics.jsonl, tb/, eval/, log.txt and loss_curve.png. A folder that holds an earlier
run is refused unless --resume (continue it) or --overwrite (replace it). Ctrl-C stops after the current iteration
and writes a checkpoint; --resume continues from it.

Processes: one by default. Under torchrun (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR in the environment, also
across machines) every process joins one DistributedDataParallel group: NCCL on --device cuda (each process takes
cuda:LOCAL_RANK), gloo on cpu. Without torchrun, --num-gpus N > 1 spawns N local processes itself (on cpu too,
which is how the tests exercise DDP). SOLVER.IMS_PER_BATCH is the global batch.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from pfcn.arguments import add_model_args, make_parser, load_cfg, parse_with_overrides, run_cli

__all__ = ["build_parser", "main"]

INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C (128 + SIGINT), with a checkpoint written
_DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pfcn-train", __doc__)
    add_model_args(p, config_required=True, training=True)
    for action in p._actions:
        if action.dest == "device":
            action.default = "auto"
            action.help = "cpu or cuda (auto: cuda when available, else cpu)"
    p.add_argument("--out", dest="output", default=None, help="output folder (default: the config's OUTPUT_DIR)")
    p.add_argument("--output", dest="output", help=argparse.SUPPRESS)  # the former name, still accepted
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT/last_checkpoint (model, optimizer, schedule, RNG and data position); "
                        "starts from the initial weights when there is none")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an OUTPUT that holds an earlier run, deleting its checkpoints, metrics, "
                        "TensorBoard events and evaluations first (default: refuse such a folder)")
    p.add_argument("--num-gpus", type=int, default=1,
                   help="local processes to spawn when not launched by torchrun (default: 1)")
    p.add_argument("--seed", type=int, default=None, help="overrides SEED (negative: a random seed, recorded)")
    p.add_argument("--keep", type=int, default=3,
                   help="periodic checkpoints kept, newest first; 0 keeps all (default: 3; model_final.pth stays)")
    p.add_argument("--log-period", type=int, default=20, help="iterations between log lines (default: 20)")
    p.add_argument("--global-loss-norm", action="store_true",
                   help="normalise losses by the object counts of all processes (N processes then compute the "
                        "1-process gradient); default: per process, as the official code")
    p.add_argument("--workers", type=int, default=None, help="data loader processes (default: DATALOADER.NUM_WORKERS)")
    p.add_argument("--no-eval", action="store_true", help="never evaluate during or after training")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    for split in ("train", "test"):
        g = p.add_argument_group(f"{split} data (default: DATASETS.{split.upper()})")
        g.add_argument(f"--{split}-dataset", action="append", default=None, metavar="NAME_OR_DIR",
                       help="dataset name under $PFCN_DATASETS, or a folder holding images/, panoptic/ and "
                            "panoptic.json (what pfcn-synth writes; repeat to concatenate)")
        g.add_argument(f"--{split}-images", help="folder of the photographs")
        g.add_argument(f"--{split}-json", help="COCO panoptic JSON")
        g.add_argument(f"--{split}-png", help="folder of the panoptic PNGs (default: the JSON path without .json)")
    return p


def _datasets(args: argparse.Namespace, cfg: Any, split: str) -> list[Any]:
    """The datasets of one split from the flags, else from the config (one entry per name)."""
    from pfcn.data import PanopticDataset, build_dataset

    names = getattr(args, f"{split}_dataset")
    images, js, png = (getattr(args, f"{split}_{k}") for k in ("images", "json", "png"))
    if names and (images or js or png):
        raise ValueError(f"give either --{split}-dataset or --{split}-images/--{split}-json/--{split}-png, not both")
    if js or images or png:
        if not (js and images):
            raise ValueError(f"--{split}-images and --{split}-json are both needed to give the {split} data by path")
        js_path = Path(js)
        return [PanopticDataset(images, png or js_path.with_suffix(""), js_path, name=str(js_path))]
    names = names or list(cfg.DATASETS.TRAIN if split == "train" else cfg.DATASETS.TEST)
    if split == "train":
        if not names:
            raise ValueError("no training data: set DATASETS.TRAIN or give --train-dataset / --train-images")
        return [build_dataset(names)]
    return [build_dataset(name) for name in names]


def _configure_logging(output: Path, rank: int) -> None:
    root = logging.getLogger("pfcn")
    root.handlers.clear()
    root.propagate = False
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    fmt = logging.Formatter("[%(asctime)s pfcn-train] %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    root.addHandler(console)
    if rank == 0:
        output.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(output / "log.txt")
        handler.setFormatter(fmt)
        root.addHandler(handler)


def _device(requested: str, local_rank: int) -> str:
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available on this machine")
        if int(os.environ.get("WORLD_SIZE", 1)) > 1:
            return f"cuda:{local_rank}"
    elif requested != "cpu":
        raise ValueError(f"--device {requested!r}: expected cpu, cuda or cuda:i")
    return requested


def _run(args: argparse.Namespace) -> int:
    """One training process (rank from the environment)."""
    import torch
    import torch.distributed as dist

    from pfcn.training.trainer import TrainOptions, check_output_folder, train

    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    args.device = _device(args.device, local_rank)
    if world > 1:
        if args.device.startswith("cuda"):
            torch.cuda.set_device(args.device)
        if "OMP_NUM_THREADS" not in os.environ:  # share the cores between the local processes
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        dist.init_process_group(backend="nccl" if args.device.startswith("cuda") else "gloo")
    try:
        if args.seed is not None:
            args.opts = list(args.opts) + ["SEED", str(args.seed)]
        cfg = load_cfg(args)
        output = Path(args.output or cfg.OUTPUT_DIR)
        check_output_folder(output, args.resume, args.overwrite)  # before log.txt is opened in it
        _configure_logging(output, rank)
        train_sets = _datasets(args, cfg, "train")
        test_sets = [] if args.no_eval else _datasets(args, cfg, "test")
        options = TrainOptions(output_dir=output, resume=args.resume, keep=args.keep, log_period=args.log_period,
                               global_loss_norm=args.global_loss_norm, num_workers=args.workers,
                               tensorboard=not args.no_tensorboard, overwrite=args.overwrite)
        summary = train(cfg, train_sets[0], test_sets, options)
        if rank == 0:
            _report(summary, args, output)
        if summary.get("interrupted"):
            return INTERRUPTED
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _report(summary: dict[str, Any], args: argparse.Namespace, output: Path) -> None:
    if summary.get("interrupted"):
        print(f"pfcn-train: stopped by Ctrl-C after iteration {summary['iterations_done']}; checkpoint "
              f"{summary['checkpoint']}. Continue with the same command plus --resume.")
        return
    print(f"pfcn-train: {summary['iterations']} iteration(s) in {summary['seconds']:.1f} s (seed {summary['seed']}) "
          f"-> {summary['final_checkpoint']}")
    if summary.get("eval"):
        pan = summary["eval"]["panoptic"]
        groups = ("All", "Things", "Stuff")
        print("pfcn-train: held-out " + "  ".join(
            f"{g}: PQ {pan[g]['PQ']:.1f} SQ {pan[g]['SQ']:.1f} RQ {pan[g]['RQ']:.1f}" for g in groups))
    if summary.get("loss_curve"):
        tensorboard = f", TensorBoard {summary['tensorboard']}" if summary.get("tensorboard") else ""
        print(f"pfcn-train: loss curve {summary['loss_curve']}, metrics {summary['metrics']}{tensorboard}")
    print(f"next: pfcn-eval --config {args.config} --weights {summary['final_checkpoint']} --dataset DIR_OR_NAME")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, args: argparse.Namespace, world: int, port: int) -> None:
    """Entry of a process started by --num-gpus: the torchrun environment of one machine, then `_run`."""
    os.environ.update({"RANK": str(local_rank), "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    code = run_cli(lambda _: _run(args))
    if code:
        sys.exit(code)  # the parent reports the failed process


def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv)
    if args.num_gpus < 1:
        raise ValueError(f"--num-gpus {args.num_gpus}: must be >= 1")
    if args.keep < 0:
        raise ValueError(f"--keep {args.keep}: must be >= 0 (0 keeps every periodic checkpoint)")
    if args.log_period < 1:
        raise ValueError(f"--log-period {args.log_period}: must be >= 1")
    launched = int(os.environ.get("WORLD_SIZE", 1)) > 1
    if launched and args.num_gpus > 1:
        raise ValueError("--num-gpus spawns local processes; under torchrun give the process count to torchrun "
                         "(--nproc-per-node) instead")
    if args.num_gpus > 1:
        import torch.multiprocessing as mp

        present = [k for k in _DIST_ENV if k in os.environ and k not in ("MASTER_ADDR", "MASTER_PORT")]
        if present:
            raise ValueError(f"--num-gpus {args.num_gpus}: the environment already sets {', '.join(present)}")
        context = mp.start_processes(_spawned, args=(args, args.num_gpus, _free_port()), nprocs=args.num_gpus,
                                     start_method="spawn", join=False)
        while True:
            try:
                if context.join():
                    return 0
            except KeyboardInterrupt:  # the processes got Ctrl-C too: wait while they write their checkpoint
                print("pfcn-train: Ctrl-C: the training processes stop after the current iteration "
                      "(Ctrl-C again aborts them)", file=sys.stderr)
                continue
            except mp.ProcessExitedException as e:
                if e.exit_code == INTERRUPTED:
                    return INTERRUPTED
                print(f"error: training process {e.error_index} exited with code {e.exit_code}", file=sys.stderr)
                return int(e.exit_code) if e.exit_code and e.exit_code > 0 else 1
    return _run(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
