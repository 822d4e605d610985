"""Flags shared by every pfcn command, defined once so that the commands speak one vocabulary.

``--config --weights --device --out`` plus detectron2-style trailing ``KEY VALUE`` config overrides.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from pfcn.config import ConfigError, load_config


def add_model_args(parser: argparse.ArgumentParser, weights_required: bool = False) -> None:
    """--config, --weights, --device and the trailing config overrides."""
    parser.add_argument("--config", required=True, help="config YAML (official PanopticFCN files load unchanged)")
    parser.add_argument("--weights", required=weights_required, default=None,
                        help="checkpoint (.pth, official or pfcn); overrides MODEL.WEIGHTS")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.epilog = ((parser.epilog or "") + " Trailing KEY VALUE pairs override the config, e.g. "
                     "MODEL.POSITION_HEAD.THING.THRES 0.2").strip()


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_with_overrides(parser: argparse.ArgumentParser, argv: list[str] | None,
                         positional: str | None = None) -> argparse.Namespace:
    """Parse flags and collect detectron2-style ``KEY VALUE`` overrides into ``args.opts``.

    Overrides may come anywhere after the flags or the positional arguments: the first token shaped like a config
    key (``MODEL.X.Y``) starts them. Any other unknown token is an error.
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
    args.opts = opts
    return args


def load_cfg(args: argparse.Namespace):
    """The frozen config of ``--config`` + overrides, with MODEL.DEVICE and MODEL.WEIGHTS from the flags."""
    opts = list(getattr(args, "opts", None) or [])
    opts += ["MODEL.DEVICE", args.device]
    if getattr(args, "weights", None):
        opts += ["MODEL.WEIGHTS", str(args.weights)]
    return load_config(args.config, opts)


def fail(message: str, code: int = 2) -> "SystemExit":
    """Print an error for a CLI user and return the SystemExit to raise."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(code)


def run_cli(main_body, argv=None) -> int:
    """Run a command body, turning the errors a user can fix into one clear line and exit code 2."""
    try:
        return int(main_body(argv) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def ensure_dir(path: str | Path) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
