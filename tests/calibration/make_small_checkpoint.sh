#!/usr/bin/env bash
# Reproduces tests/data/small_synth.pth: the small config trained by pfcn-train on pfcn-synth data (never hand-made).
# Usage: tests/calibration/make_small_checkpoint.sh WORKDIR   (run from the repository root; ~7+ min on 2 CPU cores)
# WORKDIR receives synth_train/, synth_val/ and train/; the final weights are copied to tests/data/small_synth.pth
# without the optimizer state (pfcn checkpoint format: model + meta + cfg).
set -euo pipefail
WORK=${1:?usage: $0 WORKDIR}
BIN=${BIN:-.venv/bin}
mkdir -p "$WORK" tests/data
"$BIN/pfcn-synth" --out "$WORK/synth_train" --num 400 --seed 1 --no-progress
"$BIN/pfcn-synth" --out "$WORK/synth_val" --num 40 --seed 2 --no-progress
"$BIN/pfcn-train" --config configs/PanopticFCN-Small.yaml --output "$WORK/train" --seed 7 \
    --train-dataset "$WORK/synth_train" --test-dataset "$WORK/synth_val" --no-tensorboard
"$BIN/python" -m pfcn.calibration.small_checkpoint "$WORK/train/model_final.pth" tests/data/small_synth.pth
