#!/usr/bin/env bash
# One node, all its GPUs (or CPU processes with gloo): tensor x pipeline x data parallel.
#   bash examples/launch_single_node.sh examples/crystal_7b.yaml parallel.tp=2 parallel.pp=2
set -euo pipefail
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1  # torchrun --max-restarts: restarted workers reconnect cleanly
CONFIG=${1:?usage: $0 CONFIG.yaml [dotted.key=value ...]}; shift
NPROC=${NPROC:-$(python -c 'import torch; print(torch.cuda.device_count() or 2)')}
exec torchrun --standalone --nproc-per-node "$NPROC" -m megacrystal.train --config "$CONFIG" "$@"
