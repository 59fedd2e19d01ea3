#!/usr/bin/env bash
# The parallel engine's GPU check, one script: CUDA tests, ZeRO-1 memory on the GPU (4 gloo ranks
# sharing GPU 0), one-GPU step throughput. Results land in benchmarks/results/ (and in $OUT if set).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
OUTDIR=${OUT:-benchmarks/results}
mkdir -p "$OUTDIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), 'python', sys.version.split()[0])"
timeout 240 $PY -m pytest -q -p no:cacheprovider tests/test_parallel_gpu.py 2>&1 | tail -15 | tee "$OUTDIR/gpu_parallel_tests.log"
timeout 180 $PY benchmarks/optimizer_memory.py --device cuda --dp 4 2>&1 | grep -v " INFO "
timeout 180 $PY benchmarks/engine_step.py --device cuda 2>&1 | grep -v " INFO "
cp benchmarks/results/optimizer_memory_cuda.json benchmarks/results/engine_step_cuda.json "$OUTDIR"/ 2>/dev/null
exit 0
