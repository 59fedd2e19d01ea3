#!/usr/bin/env bash
# Several nodes: run this on every node with the same MASTER_ADDR/MASTER_PORT and NNODES, and NODE_RANK
# = 0..NNODES-1 (c10d rendezvous). The output directory must be on a shared filesystem.
#   MASTER_ADDR=node0 NNODES=8 NODE_RANK=3 bash examples/launch_multi_node.sh examples/crystal_7b.yaml
set -euo pipefail
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1  # torchrun --max-restarts: restarted workers reconnect cleanly
CONFIG=${1:?usage: $0 CONFIG.yaml [dotted.key=value ...]}; shift
: "${MASTER_ADDR:?set MASTER_ADDR}" "${NNODES:?set NNODES}" "${NODE_RANK:?set NODE_RANK}"
exec torchrun --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "${NPROC_PER_NODE:-8}" \
  --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:${MASTER_PORT:-29500}" --rdzv-id "${RUN_ID:-megacrystal}" \
  -m megacrystal.train --config "$CONFIG" "$@"
