#!/usr/bin/env bash
# Start the Ray head on this node; run first, then recipes/launch/ray_worker.sh on every other node.
#
#   recipes/launch/ray_head.sh [extra `ray start` arguments]
#
# Env: RAY_PORT (default 6379), N_GPUS (GPUs of this node, default 8). Every node needs the
# same Python environment (veRL, vLLM, torch); mapo-verl itself need not be installed on the
# workers: recipes/launch/multi_node.sh ships it through the job's runtime_env.
set -euo pipefail
exec ray start --head --port "${RAY_PORT:-6379}" --num-gpus "${N_GPUS:-8}" --dashboard-host 0.0.0.0 "$@"
