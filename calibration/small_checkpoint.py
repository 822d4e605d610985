"""Strip a pfcn-train checkpoint to what inference needs (model, meta, cfg, seed, iteration).

The small synthetic-data model used by the precision gates is committed in this form (no optimizer state), so it is a
third of the training file's size. It is made by ``tests/calibration/make_small_checkpoint.sh`` (pfcn-train), never
by hand.

    python -m pfcn.calibration.small_checkpoint TRAINED.pth OUT.pth
"""

from __future__ import annotations

import sys
from pathlib import Path

KEPT = ("model", "meta", "cfg", "seed", "iteration")


def strip_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write ``dst`` with the inference keys of the pfcn checkpoint ``src`` (atomically)."""
    import torch

    from pfcn.checkpoint import atomic_torch_save, load_checkpoint_file

    ckpt = load_checkpoint_file(src)
    if not isinstance(ckpt.get("cfg"), str):
        raise ValueError(f"{src}: not a pfcn-train checkpoint (no stored config); train one with pfcn-train")
    out = {k: ckpt[k] for k in KEPT if k in ckpt}
    out["model"] = {k: v.detach().clone().contiguous() if isinstance(v, torch.Tensor) else v
                    for k, v in out["model"].items()}
    return atomic_torch_save(out, dst)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    out = strip_checkpoint(argv[0], argv[1])
    print(f"wrote {out} ({Path(out).stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
