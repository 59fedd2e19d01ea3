#!/usr/bin/env bash
# One short GPU session for the kernel work: the op tests on the compiled Triton path, then
# tune_kernels.py (launch-config sweep with a correctness check of every variant, then the end-to-end
# benchmark vs eager / torch.compile / Liger with the winners in place). Prints a compact table last.
#   kernels/bench/tune.sh OUT_DIR [LIGER_WHEEL]       (~2 min on one H100/H200; installs nothing)
set -u
cd "$(dirname "$0")/../.."
unset TRITON_INTERPRET
PY=${PYTHON:-python3}
OUT=${1:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${2:-}" ] && [ -f "$2" ]; then      # a Liger-Kernel wheel to compare against: unpacked, not installed
    mkdir -p /tmp/liger && "$PY" -m zipfile -e "$2" /tmp/liger && export PYTHONPATH="$PYTHONPATH:/tmp/liger"
fi
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name(0))"
timeout 60 "$PY" -m pytest -q -x -p no:cacheprovider tests/test_ops_norm.py tests/test_ops_rotary.py \
    tests/test_ops_cross_entropy.py tests/test_ops_random_shapes.py tests/test_model_kernels.py >"$OUT/gpu-tests.txt" 2>&1
echo "op tests (compiled): $(tail -1 "$OUT/gpu-tests.txt")"
timeout 110 "$PY" kernels/bench/tune_kernels.py --out "$OUT" --budget-s 45 >"$OUT/tune-log.txt" 2>&1
echo "tune exit $?"
sed -n '/^copy bandwidth/,$p' "$OUT/tune-log.txt" | tail -60
