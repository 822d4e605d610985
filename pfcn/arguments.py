"""Flags shared by every pfcn command, defined once so that the commands speak one vocabulary.

``--model`` (any artifact: checkpoint, ``.onnx``, ``.engine``; ``--weights`` is the same flag), ``--config``,
``--random-weights``, ``--device``, ``--providers``, ``--threads``, ``--out``, ``--no-progress``, plus
detectron2-style trailing ``KEY VALUE`` config overrides. ``pfcn-export``, ``pfcn-bench`` and the tools all build
their parsers here, so a flag means the same thing everywhere. Importing this module needs no torch.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
from pathlib import Path
from typing import Any, Callable

from pfcn.config import ConfigError

_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")
# MODEL.WEIGHTS values that name ImageNet backbone weights for training (the official configs' default), not a model.
_BACKBONE_INIT = ("detectron2://", "catalog://", "http://", "https://")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show (None, False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        return super()._get_help_string(action)


def make_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """An argparse parser whose --help shows every default."""
    return argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0],
                                   formatter_class=_HelpFormatter)


def add_model_args(parser: argparse.ArgumentParser, config_required: bool = False, device: bool = True,
                   runtime: bool = True, training: bool = False, model_flag: bool = True) -> None:
    """--model/--weights, --config, --random-weights, --device, --providers, --threads and the trailing overrides.

    Args:
        config_required: the command always builds a PyTorch model from a YAML (training).
        device: the command runs a model on a device (exporting runs on the CPU and has no --device).
        runtime: the command runs exported artifacts (ONNX Runtime providers, threads).
        training: --weights are the initial weights of a training run (no --random-weights, no runtime flags).
        model_flag: add --model/--weights (a command that takes two models names its own flags).
    """
    group = parser.add_argument_group("model")
    if model_flag and training:
        runtime = False
        group.add_argument("--weights", "--model", dest="model", default=None, metavar="PATH",
                           help="initial weights, overrides MODEL.WEIGHTS: an ImageNet backbone (detectron2 MSRA .pkl "
                                "or torchvision resnet .pth) or a pfcn/official checkpoint; ignored when resuming")
    elif model_flag:
        group.add_argument("--model", "--weights", dest="model", default=None, metavar="PATH",
                           help="the model: a checkpoint (.pth/.pkl, official or pfcn), an exported .onnx or a "
                                "TensorRT .engine; overrides MODEL.WEIGHTS")
    group.add_argument("--config", required=config_required, default=None,
                       help="config YAML (official PanopticFCN files load unchanged); default for a pfcn checkpoint: "
                            "the config stored in it")
    if not training:
        group.add_argument("--random-weights", action="store_true",
                           help="run an untrained, randomly initialised model (outputs are meaningless; for tests)")
    if device:
        group.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    if runtime:
        group.add_argument("--providers", default="auto",
                           help="ONNX Runtime execution providers: auto, cpu, cuda, tensorrt")
        group.add_argument("--threads", type=int, default=None, help="CPU threads (default: the backend's choice)")
    parser.epilog = ((parser.epilog or "") + " Trailing KEY VALUE pairs override the config, e.g. "
                     "MODEL.POSITION_HEAD.THING.THRES 0.2").strip()


def add_out_arg(parser: argparse.ArgumentParser, default: str, help: str = "output folder") -> None:
    parser.add_argument("--out", default=default, help=help)


def add_progress_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None,
                         positional: str | None = None) -> argparse.Namespace:
    """Parse flags and collect detectron2-style ``KEY VALUE`` overrides into ``args.opts``.

    Overrides may come anywhere after the flags or the positional arguments: the first token shaped like a config
    key (``MODEL.X.Y``) starts them. Any other unknown token is an error; so is a key without a value.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    opts: list[str] = []
    if positional is not None:
        values = list(getattr(args, positional) or [])
        for i, tok in enumerate(values):
            if _KEY.match(tok):
                opts, values = values[i:], values[:i]
                break
        setattr(args, positional, values)
        if not values:
            parser.error(f"the following arguments are required: {positional}")
    if extra:
        if not _KEY.match(extra[0]) and not (extra[0] == "--" and len(extra) > 1):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        opts += [t for t in extra if t != "--"]
    if len(opts) % 2:
        keys = [t for t in opts[::2] if _KEY.match(t)]
        parser.error(f"config overrides come in KEY VALUE pairs; {keys[-1] if keys else opts[-1]} has no value "
                     f"(got: {' '.join(opts)})")
    args.opts = opts
    weights = [opts[i + 1] for i in range(0, len(opts), 2) if opts[i] == "MODEL.WEIGHTS"]
    if weights and getattr(args, "model", None) is None and hasattr(args, "model"):
        args.model = weights[-1]  # the detectron2 habit: MODEL.WEIGHTS path.pth
    return args


def load_cfg(args: argparse.Namespace):
    """The frozen config of ``--config`` + overrides, with MODEL.DEVICE and MODEL.WEIGHTS from the flags."""
    from pfcn.config import load_config, merge_overrides

    if not getattr(args, "config", None):
        raise ConfigError("--config is required here")
    cfg = load_config(args.config, list(getattr(args, "opts", None) or []), freeze=False)
    extra: list[Any] = []
    if getattr(args, "device", None):
        extra += ["MODEL.DEVICE", args.device]
    model = getattr(args, "model", None)
    if model and Path(model).suffix.lower() in (".pth", ".pt", ".pkl", ".ckpt"):
        extra += ["MODEL.WEIGHTS", str(model)]
    if extra:
        merge_overrides(cfg, extra)
    cfg.freeze()
    return cfg


def model_path(args: argparse.Namespace) -> str | None:
    """The model to run: --model/--weights, else a local MODEL.WEIGHTS of the config file; None for random weights.

    A MODEL.WEIGHTS that names ImageNet backbone weights (the official configs' ``detectron2://`` default) is the
    training initialisation, not a model, and is not used for inference.
    """
    if args.model:
        return str(args.model)
    if getattr(args, "config", None) and not args.random_weights:
        from pfcn.config import load_config

        weights = str(load_config(args.config).MODEL.WEIGHTS or "")
        if weights and not weights.startswith(_BACKBONE_INIT):
            return weights
    if args.random_weights:
        return None
    raise ValueError("no model given: pass --model (a checkpoint, .onnx or .engine; --weights is the same flag) or "
                     "MODEL.WEIGHTS path.pth; to run an untrained model knowingly, pass --random-weights")


def open_from_args(args: argparse.Namespace, batch_size: int = 1):
    """The backend for the command's model flags (``pfcn.runtime.open_model``)."""
    from pfcn.runtime import open_model

    path = model_path(args)
    device = getattr(args, "device", "cpu")
    if device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", device):
        raise ValueError(f"--device {device!r}: use cpu, cuda or cuda:N")
    cfg = None
    if path is None or (Path(path).suffix.lower() in (".pth", ".pt", ".pkl", ".ckpt") and args.config):
        cfg = load_cfg(args)
    elif args.opts and Path(path).suffix.lower() not in (".pth", ".pt", ".pkl", ".ckpt"):
        raise ValueError(f"{path}: config overrides ({' '.join(args.opts)}) cannot change an exported artifact; "
                         "re-export it with the overrides")
    return open_model(path, overrides=args.opts, device=device, providers=getattr(args, "providers", "auto"),
                      threads=getattr(args, "threads", None), batch_size=batch_size,
                      random_weights=args.random_weights, cfg=cfg)


def ensure_dir(path: str | Path) -> Path:
    """Create an output folder; a path that exists as a file is a clear error, not a traceback."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "exists and is not a folder; choose another --out", str(path))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _os_error_line(e: OSError) -> str:
    where = e.filename if e.filename is not None else ""
    what = e.strerror or str(e)
    hint = {errno.ENOSPC: " (disk full)", errno.EACCES: " (no permission)", errno.EROFS: " (read-only)"}.get(
        e.errno or 0, "")
    return f"{where}: {what}{hint}" if where else f"{what}{hint}"


def run_cli(main_body: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a command body, turning the errors a user can fix into one clear line and exit code 2.

    Config/value errors, missing files and file-system failures (read-only, disk full, a file where a folder was
    expected) print ``error: ...`` naming the path; Ctrl-C exits with 130.
    """
    try:
        return int(main_body(argv) or 0)
    except (ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: {_os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
