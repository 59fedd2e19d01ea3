#!/usr/bin/env bash
# Data-layer checks on a GPU machine (run from the repository root; writes under $OUT or benchmarks/results):
# builds the native helpers, runs the data tests (the pinned-memory test needs CUDA), and the index
# benchmark at the TARGETS.md anchor against megatron-core (its wheel may be carried in build/wheels/).
set -euo pipefail
OUT=${OUT:-benchmarks/results}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if ls build/wheels/megatron_core-*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-deps --target /tmp/mcore build/wheels/megatron_core-*.whl
  export PYTHONPATH="$PWD:/tmp/mcore:${PYTHONPATH:-}"
else
  export PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu_data_env.txt"
$PY -c "import torch, numpy; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu_data_env.txt"
$PY setup.py -q build_ext --inplace > "$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
$PY -m pytest -q tests/data -p no:cacheprovider -W ignore 2>&1 | tail -15 | tee "$OUT/gpu_data_tests.txt"
$PY benchmarks/indices.py --repeat 2 --out "$OUT" 2>&1 | grep -v -i warn | tee "$OUT/gpu_indices.log"
