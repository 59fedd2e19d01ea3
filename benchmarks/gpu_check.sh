#!/usr/bin/env bash
# The one GPU check (one H100/H200, ~8 minutes, installs nothing, needs no network):
#   0. two processes on the one GPU with a device-only group (test-only parallel.backend=cuda:gloo: a host
#      tensor in a training collective fails as on NCCL) for a few steps at tp2 and at dp2+ZeRO against
#      one process, and bf16 dp2 with gradient-accumulation fusion under the overlapped reduction (the
#      post-accumulate hooks must count every bucket down although `.grad` stays None); the fusion
#      check runs again with the CUDA wgrad kernel after step 5 builds it
#      (benchmarks/device_group_check.py; pipeline transfers are the rehearsal's: gloo has no CUDA p2p)
#   1. the GPU tests on the compiled Triton path: every op, attention backends, the model with the
#      Triton kernels, the engine on CUDA (same losses as on CPU; bf16 + distributed optimizer), the
#      ring attention's CUDA block kernels (SDPA flash / memory-efficient with an outside log-sum-exp)
#   2. the kernel launch-config sweep + microbenchmarks vs torch eager / torch.compile (+ Liger/apex if present)
#   3. end-to-end training throughput (crystal-1b; 4 layers of crystal-7b) with a bf16 matmul anchor
#   4. distributed-optimizer memory per rank on the GPU (4 gloo ranks sharing GPU 0)
#   5. the CUDA kernels (kernels/cuda/): build for sm_80/90/100, `megacrystal doctor --verify` (their checks:
#      fused AdamW vs torch, fused wgrad vs unfused, 20 steps with fusion; it records the result in the
#      user's cache, where `auto` looks), a copy of that record as evidence, their benchmark, and the
#      training throughput with them on
#   6. attention backends (SDPA, FA2/FA3, FA4 where installed): outputs/grads vs SDPA and timings;
#      `megacrystal doctor` (what this machine has and which kernel each op uses)
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

step "doctor"
$PY -m megacrystal.cli doctor 2>&1 | tee -a "$LOG"

step "two processes, one GPU, device-only group (cuda:gloo)"
timeout 600 $PY benchmarks/device_group_check.py --out "$OUT" --fusion torch 2>&1 | grep -v " INFO " | tee -a "$LOG"

step "GPU tests (compiled Triton)"
timeout 100 $PY -m pytest -q -x -p no:cacheprovider tests/test_ops_norm.py tests/test_ops_rotary.py \
  tests/test_ops_swiglu.py tests/test_ops_cross_entropy.py tests/test_ops_random_shapes.py tests/test_attention.py \
  tests/test_model_kernels.py tests/test_parallel_gpu.py tests/test_attention_lse.py tests/test_kv_cache.py > "$OUT/gpu-tests-$GPU-$STAMP.txt" 2>&1
TESTS=$(tail -1 "$OUT/gpu-tests-$GPU-$STAMP.txt"); echo "$TESTS" | tee -a "$LOG"

step "kernel sweep + microbenchmarks"
timeout 100 $PY kernels/bench/tune_kernels.py --out "$OUT" --budget-s 40 > "$OUT/kernels-$GPU-$STAMP.txt" 2>&1
echo "exit $?" | tee -a "$LOG"; sed -n '/^copy bandwidth/,$p' "$OUT/kernels-$GPU-$STAMP.txt" | tail -45

step "training throughput"
timeout 150 $PY benchmarks/train_throughput.py --out "$OUT" --cases crystal-1b,crystal-7b-4l --steps 4 2>&1 \
  | grep -v " INFO " | tee -a "$LOG"

step "planner hardware probe (GEMM by shape, copy, attention: megacrystal plan's table)"
timeout 120 $PY benchmarks/planner_probe.py --device cuda 2>&1 | tee -a "$LOG" || true
[ "$OUT" = benchmarks/results ] || mv benchmarks/results/planner-probe-*.json "$OUT"/ 2>/dev/null || true

step "distributed optimizer memory"
timeout 60 $PY benchmarks/optimizer_memory.py --device cuda --dp 4 2>&1 | grep -v " INFO " | tail -8 | tee -a "$LOG"
cp benchmarks/results/optimizer_memory_cuda.json "$OUT"/ 2>/dev/null

step "CUDA kernels: build, GPU tests, record, benchmark"
CUBLASLT_INCLUDE=$($PY -c "import nvidia, glob; print(next(iter(sorted(glob.glob(nvidia.__path__[0] + '/**/include/cublasLt.h', recursive=True))), '').rsplit('/', 1)[0])" 2>/dev/null)
export CUBLASLT_INCLUDE  # the build checks its cuBLASLt declarations against the real header where there is one
timeout 300 $PY -m megacrystal.compiled.build --out build/cuda > "$OUT/cuda-build-$GPU-$STAMP.txt" 2>&1
echo "build exit $? ($(grep -c 'declarations checked' "$OUT/cuda-build-$GPU-$STAMP.txt") header check)" | tee -a "$LOG"
export MEGACRYSTAL_CUDA_LIB="$PWD/build/cuda/libmegacrystal_cuda.so"
timeout 200 $PY -m megacrystal.cli doctor --verify > "$OUT/cuda-verify-$GPU-$STAMP.txt" 2>&1
echo "doctor --verify exit $?" | tee -a "$LOG"; tail -1 "$OUT/cuda-verify-$GPU-$STAMP.txt" | tee -a "$LOG"
$PY benchmarks/record_cuda_verified.py --out "$OUT" 2>&1 | tail -1 | tee -a "$LOG"
timeout 150 $PY kernels/bench/cuda_kernels_bench.py --out "$OUT" 2>&1 | grep -v " INFO " | tee -a "$LOG"
timeout 300 $PY benchmarks/device_group_check.py --out "$OUT" --fusion cuda 2>&1 | grep -v " INFO " | tee -a "$LOG"
timeout 150 $PY benchmarks/train_throughput.py --out "$OUT" --cases crystal-1b,crystal-7b-4l --steps 4 \
  --set optim.impl=cuda --set model.grad_accum_fusion=cuda 2>&1 | grep -v " INFO " | tee -a "$LOG"
timeout 150 $PY benchmarks/train_throughput.py --out "$OUT" --cases crystal-1b,crystal-7b-4l --steps 4 \
  --set optim.impl=cuda --set model.grad_accum_fusion=torch 2>&1 | grep -v " INFO " | tee -a "$LOG"

step "attention backends vs SDPA"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_attention_backends_gpu.py -s 2>&1 | grep -v " INFO " | tee "$OUT/attention-$GPU-$STAMP.txt" | tail -25 | tee -a "$LOG"

# ---------------------------------------------------------------------------------------------------
# issue 21 (overlap, recompute, compile): prepared, not yet run on a GPU
step "issue 21: recompute none/selective/full and compile, crystal-7b shapes (4 layers; rate, losses, peak memory)"
timeout 240 $PY benchmarks/train_throughput.py --out "$OUT" --steps 4 \
  --cases crystal-7b-4l,crystal-7b-4l-selective,crystal-7b-4l-full,crystal-7b-4l-compile 2>&1 | grep -v " INFO " | tee -a "$LOG"
NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -ge 2 ]; then  # NCCL needs one GPU per rank: the overlap on NCCL needs two
  step "issue 21: NCCL, dp2 ZeRO-1 and pp2 vpp2, overlap on vs off (same losses)"
  for OV in true false; do
    for CASE in "zero:parallel.distributed_optimizer=true" "vpp:parallel.pp=2 parallel.vpp=2 train.global_batch_size=4"; do
      timeout 120 torchrun --nproc-per-node 2 -m megacrystal.engine.smoke --steps 3 model.preset=tiny data.seq_length=128 \
        train.precision=fp32 parallel.overlap_param_gather=$OV parallel.overlap_p2p_comm=$OV ${CASE#*:} \
        --out "$OUT/overlap-nccl-${CASE%%:*}-$OV-$STAMP.json" 2>&1 | grep -v " INFO " | tail -3 | tee -a "$LOG"
    done
  done
else
  echo "issue 21: one GPU: the NCCL overlap check needs two (skipped)" | tee -a "$LOG"
fi
# ---------------------------------------------------------------------------------------------------

$PY - "$OUT" "$GPU" "$STAMP" "$TESTS" <<'PY'
import json, sys, glob, os
out, gpu, stamp, tests = sys.argv[1:]
files = sorted(os.path.basename(p) for p in glob.glob(f"{out}/*") if stamp[:8] in p or "optimizer_memory_cuda" in p)
json.dump(dict(gpu=gpu.replace("_", " "), stamp=stamp, tests=tests, files=files), open(f"{out}/gpu-check-{gpu}-{stamp}.json", "w"), indent=1)
PY
step "done"
