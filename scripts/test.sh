#!/usr/bin/env bash
# Set up both test environments (idempotent) and run the whole test suite: tests/ in .venv
# (Python 3.11), then tests/megatron_bridge in .venv-megatron (Python 3.12). Extra arguments go to
# both pytest runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
.venv/bin/python -m pytest tests --ignore=tests/megatron_bridge "$@"
if [ "${MAPO_SKIP_MEGATRON_LANE:-0}" != "1" ]; then
  .venv-megatron/bin/python -m pytest tests/megatron_bridge "$@"
fi
