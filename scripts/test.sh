#!/usr/bin/env bash
# Set up both test environments (idempotent) and run the whole test suite: tests/ in .venv
# (Python 3.11), then tests/megatron_bridge in .venv-megatron (Python 3.12). The Python 3.12
# environment installs in the background while the first lane runs (its set-up is mostly download).
# Both lanes run even when the first fails; the exit status is non-zero if either failed. Extra
# arguments go to both pytest runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/setup_env.sh py311
megatron_lane=1
[ "${MAPO_SKIP_MEGATRON_LANE:-0}" = "1" ] && megatron_lane=0
if [ "$megatron_lane" = 1 ]; then
  setup_log="$(mktemp)"
  bash scripts/setup_env.sh megatron > "$setup_log" 2>&1 &
  setup_pid=$!
fi
status=0
.venv/bin/python -m pytest tests --ignore=tests/megatron_bridge "$@" || status=$?
if [ "$megatron_lane" = 1 ]; then
  setup_status=0
  wait "$setup_pid" || setup_status=$?
  cat "$setup_log"
  if [ "$setup_status" != 0 ]; then
    echo "[test] setting up .venv-megatron failed (exit $setup_status): the Megatron-Bridge lane did not run" >&2
    exit 1
  fi
  .venv-megatron/bin/python -m pytest tests/megatron_bridge "$@" || status=$?
fi
exit "$status"
