"""pfcn-synth: write a synthetic COCO-panoptic dataset (textured shapes on textured ground).

    pfcn-synth --out DIR [--num N] [--size H W] [--seed S] [--things K] [--stuff M] [--max-instances I] [--png]

Writes DIR/images/*.jpg, DIR/panoptic/*.png and DIR/panoptic.json. The same arguments give the same bytes.
Categories depend only on --things/--stuff, so a training split and a held-out split are two runs with the same
class counts and different seeds (and folders):

    pfcn-synth --out synth/train --num 800 --seed 0
    pfcn-synth --out synth/val --num 100 --seed 1
"""

from __future__ import annotations

import argparse
import sys
import time

from pfcn.data.synth import MAX_CLASSES, SynthSpec, generate_dataset
from pfcn.arguments import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pfcn-synth", description=__doc__.split("\n\n")[0],
                                epilog="Split example: --out synth/train --seed 0, then --out synth/val --seed 1.")
    defaults = SynthSpec()
    p.add_argument("--out", required=True,
                   help="output folder (created; existing files of the same names are replaced)")
    p.add_argument("--num", type=int, default=100, help="number of images (default: 100)")
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=[defaults.height, defaults.width],
                   help=f"image height and width in px (default: {defaults.height} {defaults.width})")
    p.add_argument("--seed", type=int, default=0, help="random seed; image i depends only on (seed, i) (default: 0)")
    p.add_argument("--things", type=int, default=defaults.num_things,
                   help=f"thing classes, 0..{MAX_CLASSES} (default: {defaults.num_things})")
    p.add_argument("--stuff", type=int, default=defaults.num_stuff,
                   help=f"stuff classes, 0..{MAX_CLASSES} (default: {defaults.num_stuff})")
    p.add_argument("--max-instances", type=int, default=defaults.max_instances,
                   help=f"things per image are 1..this (default: {defaults.max_instances})")
    p.add_argument("--png", action="store_true", help="write the photographs as PNG instead of JPEG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    spec = SynthSpec(height=args.size[0], width=args.size[1], num_things=args.things, num_stuff=args.stuff,
                     max_instances=args.max_instances, image_format="png" if args.png else "jpg")
    start = time.perf_counter()
    json_path = generate_dataset(args.out, args.num, spec, seed=args.seed, progress=not args.no_progress)
    print(f"pfcn-synth: {args.num} image(s) {spec.height}x{spec.width}, {spec.num_things} thing and "
          f"{spec.num_stuff} stuff classes, seed {args.seed}, in {time.perf_counter() - start:.1f} s -> {json_path}")
    print(f"next: pfcn-eval --config C --weights W --dataset {args.out}   "
          f"(or --images {args.out}/images --gt-json {json_path})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
