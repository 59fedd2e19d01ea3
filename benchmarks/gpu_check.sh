#!/usr/bin/env bash
# The one GPU check (one H100/H200, ~6 minutes, installs nothing, needs no network):
#   1. the GPU tests on the compiled Triton path: every op, attention backends, the model with the
#      Triton kernels, the engine on CUDA (same losses as on CPU; bf16 + distributed optimizer)
#   2. the kernel launch-config sweep + microbenchmarks vs torch eager / torch.compile (+ Liger/apex if present)
#   3. end-to-end training throughput (crystal-1b; 4 layers of crystal-7b) with a bf16 matmul anchor
#   4. distributed-optimizer memory per rank on the GPU (4 gloo ranks sharing GPU 0)
# Writes everything under $OUT (default benchmarks/results) and a summary gpu-check-<gpu>-<stamp>.json.
set -uo pipefail
cd "$(dirname "$0")/.."
unset TRITON_INTERPRET
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%d-%H%M%S)
GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '_')
LOG="$OUT/gpu-check-$GPU-$STAMP.log"
step() { echo "== $1 ($(date -u +%H:%M:%S))" | tee -a "$LOG"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
$PY -c "import torch, triton, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$LOG"

step "GPU tests (compiled Triton)"
timeout 100 $PY -m pytest -q -x -p no:cacheprovider tests/test_ops_norm.py tests/test_ops_rotary.py \
  tests/test_ops_swiglu.py tests/test_ops_cross_entropy.py tests/test_ops_random_shapes.py tests/test_attention.py \
  tests/test_model_kernels.py tests/test_parallel_gpu.py > "$OUT/gpu-tests-$GPU-$STAMP.txt" 2>&1
TESTS=$(tail -1 "$OUT/gpu-tests-$GPU-$STAMP.txt"); echo "$TESTS" | tee -a "$LOG"

step "kernel sweep + microbenchmarks"
timeout 100 $PY kernels/bench/tune_kernels.py --out "$OUT" --budget-s 40 > "$OUT/kernels-$GPU-$STAMP.txt" 2>&1
echo "exit $?" | tee -a "$LOG"; sed -n '/^copy bandwidth/,$p' "$OUT/kernels-$GPU-$STAMP.txt" | tail -45

step "training throughput"
timeout 150 $PY benchmarks/train_throughput.py --out "$OUT" --cases crystal-1b,crystal-7b-4l --steps 4 2>&1 \
  | grep -v " INFO " | tee -a "$LOG"

step "distributed optimizer memory"
timeout 60 $PY benchmarks/optimizer_memory.py --device cuda --dp 4 2>&1 | grep -v " INFO " | tail -8 | tee -a "$LOG"
cp benchmarks/results/optimizer_memory_cuda.json "$OUT"/ 2>/dev/null

$PY - "$OUT" "$GPU" "$STAMP" "$TESTS" <<'PY'
import json, sys, glob, os
out, gpu, stamp, tests = sys.argv[1:]
files = sorted(os.path.basename(p) for p in glob.glob(f"{out}/*") if stamp[:8] in p or "optimizer_memory_cuda" in p)
json.dump(dict(gpu=gpu.replace("_", " "), stamp=stamp, tests=tests, files=files), open(f"{out}/gpu-check-{gpu}-{stamp}.json", "w"), indent=1)
PY
step "done"
