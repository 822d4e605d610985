"""pfcn-predict: panoptic predictions for images and folders.

    pfcn-predict IMAGE_OR_DIR_OR_GLOB... --model M [--config C] [--out DIR] [--gt-json J] [--device cpu|cuda]
                 [KEY VALUE ...]

M is any artifact: a checkpoint (config from --config or stored in it), an exported .onnx or a TensorRT .engine.

Writes, under --out: panoptic.json + panoptic/<stem>.png (COCO panoptic with integer image ids: the ids of --gt-json,
else 1, 2, ... in file-name order; scoreable by ``pfcn-eval --predictions``, panopticapi and hotcoco),
instances.json and semantic/ (AP / mIoU inputs), json/<stem>.json (readable segments with names and scores) and
overlays/<stem>.png. An image that cannot be read is reported and skipped; the others are still processed; the
failures are listed at the end and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from pfcn.evaluation.predictions_io import PanopticPredictionWriter, image_ids_for
from pfcn.image_io import ImageReadError, list_images, read_image
from pfcn.arguments import (add_model_args, add_progress_arg, ensure_dir, make_parser, open_from_args,
                            parse_with_overrides, run_cli)
from pfcn.contract import atomic_write_bytes
from pfcn.result import overlay, save_summary
from pfcn.runtime import predict


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("pfcn-predict", __doc__)
    p.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files, folders or quoted globs")
    p.add_argument("--out", default="predictions", help="output folder")
    p.add_argument("--no-overlay", action="store_true", help="skip the overlay pictures")
    p.add_argument("--gt-json", help="COCO JSON whose 'images' give the image ids (matched by file name), so that "
                                     "other tools score the output directly (default: ids 1, 2, ... by file name)")
    add_progress_arg(p)
    add_model_args(p)
    return p


def describe_model(backend) -> dict:
    """What produced a set of predictions: written beside them so that outputs of random weights are marked."""
    info = backend.info
    return {"model": info.source, "backend": backend.name, "precision": info.precision,
            "config_hash": info.config_hash, "pfcn_version": info.props.get("pfcn_version"),
            "random_weights": info.source == "random weights"}




def _main(argv: list[str] | None) -> int:
    args = parse_with_overrides(build_parser(), argv, positional="inputs")
    backend = open_from_args(args)
    meta = backend.info.meta
    paths = list(dict.fromkeys(list_images(args.inputs)))  # a file named twice (folder + file) is predicted once
    if not paths:
        raise FileNotFoundError(f"no images found in {args.inputs}")
    image_ids, unknown = image_ids_for(paths, args.gt_json)
    out = ensure_dir(args.out)
    model_info = describe_model(backend)
    atomic_write_bytes(out / "model.json", json.dumps(model_info, indent=1).encode())
    if model_info["random_weights"]:
        print("pfcn-predict: WARNING: random weights (--random-weights): these predictions mean nothing",
              file=sys.stderr)
    json_dir, overlay_dir = ensure_dir(out / "json"), ensure_dir(out / "overlays")
    failures: list[tuple[Path, str]] = []
    owners: dict[str, Path] = {}  # outputs are named after the file stem: two files with one stem cannot both be written
    start = time.perf_counter()
    done = 0
    with PanopticPredictionWriter(out, meta) as writer:
        for path in tqdm(paths, desc="pfcn-predict", unit="img", disable=args.no_progress):
            if path.stem in owners:
                failures.append((path, f"skipped: its outputs would overwrite those of {owners[path.stem]} "
                                       f"(both are named {path.stem!r}); rename one of them"))
                continue
            if path in unknown:
                failures.append((path, unknown[path]))
                continue
            try:
                image = read_image(path)
            except ImageReadError as e:
                failures.append((path, str(e)))
                continue
            owners[path.stem] = path
            result = predict(backend, [image], file_names=[path.name], image_ids=[image_ids[path]])[0]
            writer.add(result)
            save_summary(result, meta, json_dir / f"{path.stem}.json")
            if not args.no_overlay:
                overlay(image, result, meta).save(overlay_dir / f"{path.stem}.png")
            done += 1
    elapsed = time.perf_counter() - start
    print(f"pfcn-predict: {done} image(s) in {elapsed:.1f} s -> {out}")
    if failures:
        print(f"{len(failures)} image(s) failed:", file=sys.stderr)
        for path, why in failures:
            # ImageReadError messages start with the path already: print it once.
            print(f"  {why}" if why.startswith(f"{path}:") else f"  {path}: {why}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
