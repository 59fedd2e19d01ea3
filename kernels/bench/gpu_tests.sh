#!/usr/bin/env bash
# GPU check for the model issue: the op/attention/model-kernel tests on the compiled Triton path
# (no interpreter), then the kernel microbenchmarks; JSON lands in benchmarks/results/ (or $1).
# Fits in ~5 minutes on one H100/H200. Installs nothing.
set -u
cd "$(dirname "$0")/../.."
unset TRITON_INTERPRET
PY=${PYTHON:-python}
OUT=${1:-benchmarks/results}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
timeout 240 "$PY" -m pytest -q -x tests/test_ops_norm.py tests/test_ops_rotary.py tests/test_ops_swiglu.py \
    tests/test_ops_cross_entropy.py tests/test_attention.py tests/test_model_kernels.py 2>&1 | tail -15
timeout 300 "$PY" kernels/bench/run_all.py --out "$OUT" --budget-s 200
