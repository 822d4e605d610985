#!/usr/bin/env bash
# The device suite: one command for a machine with one NVIDIA GPU and no network, within 8 minutes.
#
#   benchmarks/device_suite.sh [--model R50.pth] [--images DIR] [--out DIR] [--python PY] [--wheels DIR]
#                              [--budget SECONDS]
#
# 0. with --wheels DIR: the carried wheels (pfcn's pure-Python and binary needs the machine lacks) are installed into
#    a temporary folder (no index, no network), then pfcn itself (editable, no build isolation) if it is not importable
# 1. environment check (GPU, CUDA, torch/torchvision versions)               -> DIR/environment.txt
# 2. without --model: a random-weight R50-1x checkpoint, calibrated on the images so its heads fire like a trained
#    network's (the official baseline's dynamic post-processing depends on how many candidates pass)
# 3. pfcn-bench on the R50 at 800x1333, batch 1: official baseline, eager FP32 (+ stages), the fast path
#    (FP32 / FP16 + CUDA graphs, all and panoptic-only outputs, F.interpolate resize) -> DIR/device_suite_b1.*
# 4. the GPU tests of the fast path (pytest -m gpu)                          -> DIR/gpu_tests_fast.txt
# 5. pfcn-bench batch 8                                                     -> DIR/device_suite_b8.*
# 6. pfcn-bench batch 1 with torch.compile (its own run: compiling can take minutes) -> DIR/device_suite_compiled.*
# 7. the GPU tests of the AOTInductor packages (CUDA FP32/FP16 vs eager)    -> DIR/gpu_tests_aoti.txt
# 8. an AOTInductor FP16 CUDA package of the R50 at 800x1333, timed by pfcn-bench -> DIR/device_suite_aoti.*
# Every result file is pfcn-bench's format. Each step has its own time limit inside the budget (default 480 s); a
# step that runs out is stopped and recorded in DIR/summary.txt, and the suite goes on. Runs from the repository root
# with the project's environment (default python: .venv/bin/python, else python3).
set -uo pipefail

BUDGET=480
MODEL=""
IMAGES=""
OUT="bench_out/device_suite"
PY=".venv/bin/python"
WHEELS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --images) IMAGES="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "device_suite: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.." || exit 2
[ -x "$PY" ] || PY="$(command -v python3)"
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$SECONDS

# step NAME LIMIT_S LOG -- COMMAND...: run with min(LIMIT, what is left of the budget); record rc and seconds.
step() {
  local name="$1" limit="$2" log="$3"; shift 4
  local left=$(( BUDGET - (SECONDS - START) ))
  if [ "$left" -lt 15 ]; then
    echo "$name: SKIPPED (budget of ${BUDGET} s spent)" | tee -a "$SUMMARY"; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local what="rc=$rc"
  { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && what="TIMED OUT after ${limit}s"
  echo "$name: $what, $(( SECONDS - t0 )) s" | tee -a "$SUMMARY"
  return "$rc"
}

# 0. carried wheels and pfcn itself ---------------------------------------------------------------------------------
if [ -n "$WHEELS" ]; then
  SITE="${TMPDIR:-/tmp}/pfcn-device-site"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --disable-pip-version-check --upgrade --target "$SITE" \
    "$WHEELS"/*.whl || { echo "device_suite: could not install the wheels of $WHEELS" >&2; exit 1; }
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$PY" -c "import pfcn.benchmarks.cli, pfcn.export.cli" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --disable-pip-version-check -e . \
    || { echo "device_suite: pfcn is not importable and could not be installed" >&2; exit 1; }
fi

# 1. environment ------------------------------------------------------------------------------------------------
step "environment" 60 "$OUT/environment.txt" -- "$PY" - <<'EOF' || { echo "device_suite: no usable GPU environment (see $OUT/environment.txt)"; exit 1; }
import platform, shutil, subprocess, sys
import torch, torchvision
print("python", sys.version.split()[0], "| torch", torch.__version__, "| torchvision", torchvision.__version__,
      "| CUDA", torch.version.cuda, "| cuDNN", torch.backends.cudnn.version(), "|", platform.platform())
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"GPU 0: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
      f"{torch.cuda.device_count()} device(s)")
if shutil.which("nvidia-smi"):
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                          "--format=csv"], capture_output=True, text=True).stdout)
x = torch.randn(1024, 1024, device="cuda")
torch.cuda.synchronize()
print("CUDA kernel launch: ok", float((x @ x).sum()) == float((x @ x).sum()))
import pfcn, pfcn.runtime.torch_gpu
import os
print("pfcn", pfcn.__version__, "from", os.path.relpath(pfcn.__file__))
EOF

# 2. the R50 checkpoint --------------------------------------------------------------------------------------------
if [ -z "$MODEL" ]; then
  MODEL="$OUT/r50_calibrated.pth"
  if [ ! -f "$MODEL" ]; then
    step "calibrated random R50 checkpoint" 90 "$OUT/checkpoint.txt" -- "$PY" - "$MODEL" "$IMAGES" <<'EOF' || exit 1
import sys
import torch
from pfcn.benchmarks.cli import image_pool
from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml, load_config
from pfcn.model import build_model
from pfcn.predictor import default_meta
from pfcn.random_init import calibrate_random_model
path, images = sys.argv[1], sys.argv[2] or None
cfg = load_config("configs/PanopticFCN-R50-1x.yaml", [])
torch.manual_seed(0)
model = build_model(cfg).eval()
# calibrated at the 512 canvas (the regime of tests/calibration/test_r50_photos.py), saved with the 800 config
calibrate_random_model(model, image_pool((512, 853), images, 2), seed=0, class_logit_std=3.0, residual_gain=0.25,
                       progress=False)
save_checkpoint(path, model, default_meta(cfg), cfg_to_yaml(cfg))
print("random-weight R50-1x checkpoint, calibrated:", path)
EOF
  fi
fi

BENCH=("$PY" -m pfcn.benchmarks.cli --sizes 800x1333 --device cuda --out "$OUT" --no-progress)
[ -n "$IMAGES" ] && BENCH+=(--images "$IMAGES")

# 3. batch 1: official, eager, stages and the fast path --------------------------------------------------------------
step "pfcn-bench batch 1" 90 "$OUT/bench_b1.txt" -- "${BENCH[@]}" --model "$MODEL" --batch 1 --warmup 3 --iters 30 \
  --fast fp32 fp16 fp16+panoptic fp16+panoptic+interpolate --name device_suite_b1

# 4. the fast path's GPU tests (parity of FP32/FP16 CUDA graphs and torch.compile with FP32 eager) ---------------------
step "gpu tests: fast path" 120 "$OUT/gpu_tests_fast.txt" -- "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  tests/runtime/test_torch_gpu.py

# 5. batch 8 ---------------------------------------------------------------------------------------------------------
step "pfcn-bench batch 8" 90 "$OUT/bench_b8.txt" -- "${BENCH[@]}" --model "$MODEL" --batch 8 --warmup 2 --iters 8 \
  --no-stages --fast fp16 fp16+panoptic fp16+panoptic+interpolate --name device_suite_b8

# 6. batch 1 with torch.compile (its own run, so a slow compile cannot cost the other rows) --------------------------
step "pfcn-bench batch 1, torch.compile" 100 "$OUT/bench_compiled.txt" -- "${BENCH[@]}" --model "$MODEL" --batch 1 \
  --warmup 2 --iters 30 --no-stages --fast fp16+panoptic fp16+panoptic+compile --name device_suite_compiled

# 7. the AOTInductor packages' GPU tests (CUDA FP32 and FP16 packages of the small config vs eager) ------------------
step "gpu tests: AOTInductor" 150 "$OUT/gpu_tests_aoti.txt" -- "$PY" -m pytest -q -m gpu -p no:cacheprovider \
  tests/export/test_aoti_export.py

# 8. AOTInductor FP16 CUDA package of the R50 (batch 1), timed by pfcn-bench next to the official baseline ----------
PT2="$OUT/r50_fp16_800x1333.pt2"
if step "AOTInductor R50 fp16 package" 150 "$OUT/aoti_export.txt" -- "$PY" -m pfcn.export.cli --format aoti \
    --model "$MODEL" --out "$PT2" --input-size 800 1333 --device cuda --precision fp16; then
  step "pfcn-bench AOTInductor batch 1" 60 "$OUT/bench_aoti.txt" -- "${BENCH[@]}" --model "$MODEL" "$PT2" \
    --batch 1 --warmup 3 --iters 30 --no-stages --name device_suite_aoti
fi

echo "device_suite: done in $(( SECONDS - START )) s; results in $OUT (summary.txt)" | tee -a "$SUMMARY"
