#!/usr/bin/env bash
# Join this node to the Ray cluster whose head runs recipes/launch/ray_head.sh.
#
#   recipes/launch/ray_worker.sh <head-ip>[:port] [extra `ray start` arguments]
#
# Env: N_GPUS (GPUs of this node, default 8).
set -euo pipefail
head="${1:?usage: $0 <head-ip>[:port] [extra ray start arguments]}"
shift
case "$head" in *:*) ;; *) head="$head:${RAY_PORT:-6379}" ;; esac
exec ray start --address "$head" --num-gpus "${N_GPUS:-8}" "$@"
