#!/usr/bin/env bash
# The device suite: one command for a machine with one NVIDIA GPU and no network, within 8 minutes.
#
#   benchmarks/device_suite.sh [--model R50.pth] [--out DIR] [--python PY]
#
# 1. environment check (GPU, CUDA, torch/torchvision versions)  -> DIR/environment.txt
# 2-4. pfcn-bench on the R50 at 800x1333, batch 1 and 8: eager FP32, its stages, the official baseline
#                                                               -> DIR/device_suite_b{1,8}.json/.md (pfcn-bench's files)
#      and the in-process PyTorch GPU paths (FP16 + CUDA graphs, compiled) -> DIR/fast_paths_b{1,8}.json/.md
# 5. an AOTInductor FP16 CUDA package of the R50 at 800x1333, timed by pfcn-bench -> DIR/device_suite_aoti.json/.md
# 6. the GPU tests (pytest -m gpu)                              -> DIR/gpu_tests.txt
# Each step has its own time limit inside the 8-minute budget; a step that runs out is stopped and recorded, and the
# suite goes on. Without --model, a random-weight R50-1x checkpoint is built: the static pipeline's speed does not
# depend on the weights, but the official baseline's dynamic post-processing does — pass the trained checkpoint.
# Installs nothing. Runs from the repository root with the project's environment (default python: .venv/bin/python).
set -uo pipefail

BUDGET=480
MODEL=""
OUT="bench_out/device_suite"
PY=".venv/bin/python"
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --python) PY="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "device_suite: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.." || exit 2
[ -x "$PY" ] || PY="$(command -v python3)"
BIN="$(dirname "$PY")"
mkdir -p "$OUT" || exit 2
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
START=$SECONDS

# step NAME LIMIT_S LOG -- COMMAND...: run with min(LIMIT, what is left of the budget); record rc and seconds.
step() {
  local name="$1" limit="$2" log="$3"; shift 4
  local left=$(( BUDGET - (SECONDS - START) ))
  if [ "$left" -lt 15 ]; then
    echo "$name: SKIPPED (8-minute budget spent)" | tee -a "$SUMMARY"; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (limit ${limit}s)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$log"
  local rc=${PIPESTATUS[0]}
  local what="rc=$rc"
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="TIMED OUT after ${limit}s"
  echo "$name: $what, $(( SECONDS - t0 )) s" | tee -a "$SUMMARY"
  return "$rc"
}

# 1. environment ------------------------------------------------------------------------------------------------
step "environment" 30 "$OUT/environment.txt" -- "$PY" - <<'EOF' || { echo "device_suite: no usable GPU environment (see $OUT/environment.txt)"; exit 1; }
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
EOF

# the R50 checkpoint -------------------------------------------------------------------------------------------
if [ -z "$MODEL" ]; then
  MODEL="$OUT/r50_random.pth"
  if [ ! -f "$MODEL" ]; then
    step "random R50 checkpoint" 40 "$OUT/checkpoint.txt" -- "$PY" - "$MODEL" <<'EOF'
import sys
import torch
from pfcn.checkpoint import save_checkpoint
from pfcn.config import cfg_to_yaml, load_config
from pfcn.model import build_model
from pfcn.predictor import default_meta
cfg = load_config("configs/PanopticFCN-R50-1x.yaml", [])
torch.manual_seed(0)
model = build_model(cfg).eval()
save_checkpoint(sys.argv[1], model, default_meta(cfg), cfg_to_yaml(cfg))
print("random-weight R50-1x checkpoint:", sys.argv[1])
EOF
  fi
fi

# The measurements come first (they are what the budget is for); the package and the tests use what is left.
# 2. pfcn-bench: eager FP32 (+ stages) and the official baseline, batch 1 ----------------------------------------------
step "pfcn-bench batch 1" 75 "$OUT/bench_b1.txt" -- "$BIN/pfcn-bench" --model "$MODEL" --sizes 800x1333 --batch 1 \
  --warmup 3 --iters 20 --device cuda --out "$OUT" --name device_suite_b1 --no-progress

# 3. the in-process GPU paths (FP16 + CUDA graphs, compiled), batch 1 ------------------------------------------------
step "fast paths batch 1" 75 "$OUT/fast_b1.txt" -- "$PY" benchmarks/fast_paths.py --model "$MODEL" --size 800x1333 \
  --batch 1 --warmup 3 --iters 30 --out "$OUT"

# 4. batch 8: pfcn-bench (eager, official) and the graph paths (no compile: its time is in the batch-1 row) -----------
step "pfcn-bench batch 8" 60 "$OUT/bench_b8.txt" -- "$BIN/pfcn-bench" --model "$MODEL" --sizes 800x1333 --batch 8 \
  --warmup 2 --iters 5 --device cuda --out "$OUT" --name device_suite_b8 --no-progress
step "fast paths batch 8" 45 "$OUT/fast_b8.txt" -- "$PY" benchmarks/fast_paths.py --model "$MODEL" --size 800x1333 \
  --batch 8 --warmup 2 --iters 8 --no-compile --out "$OUT"

# 5. AOTInductor FP16 CUDA package of the R50 (batch 1), timed by pfcn-bench --------------------------------------------
PT2="$OUT/r50_fp16_800x1333.pt2"
if step "AOTInductor R50 fp16 package" 110 "$OUT/aoti_export.txt" -- "$BIN/pfcn-export" --format aoti \
    --model "$MODEL" --out "$PT2" --input-size 800 1333 --device cuda --precision fp16; then
  step "pfcn-bench AOTInductor batch 1" 40 "$OUT/bench_aoti.txt" -- "$BIN/pfcn-bench" --model "$PT2" \
    --sizes 800x1333 --batch 1 --warmup 3 --iters 20 --device cuda --out "$OUT" --name device_suite_aoti \
    --no-official --no-stages --no-progress
fi

# 6. the GPU tests (parity of every GPU path with FP32 eager), with the rest of the budget --------------------------------
step "gpu tests" 240 "$OUT/gpu_tests.txt" -- "$PY" -m pytest -q -m gpu -p no:cacheprovider tests

echo "device_suite: done in $(( SECONDS - START )) s; results in $OUT (summary.txt)" | tee -a "$SUMMARY"
