#!/usr/bin/env bash
# Create (or reuse) the two test environments at the repository root. Idempotent: each one is
# reinstalled only when what it is built from changed.
#   .venv           Python 3.11: mapo-verl[test,megatron] (megatron-core 0.16.1), torch pinned to the CPU
#                   build on local disk (constraints/cpu.txt).
#   .venv-megatron  Python 3.12: the Megatron-Bridge lane (tests/megatron_bridge): mapo-verl[test] with the
#                   versions of constraints/megatron-cpu.txt; Megatron-Bridge itself without its CUDA-only
#                   dependencies. Skipped, with a message, with MAPO_SKIP_MEGATRON_LANE=1.
# An argument selects one of them: `setup_env.sh py311` or `setup_env.sh megatron` (default: both).
set -euo pipefail
lanes="${1:-all}"
case "$lanes" in all|py311|megatron) ;; *) echo "usage: setup_env.sh [all|py311|megatron]" >&2; exit 2 ;; esac
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

if [ "$lanes" != megatron ]; then
  python_bin="${MAPO_PYTHON:-$(command -v python3.11 || command -v python3)}"
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $python_bin"
    "$python_bin" -m venv .venv
  fi
  wanted="$(stamp_of pyproject.toml constraints/cpu.txt)"
  stamp=.venv/.mapo-verl-installed
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "[setup] installing mapo-verl[test,megatron] into .venv (torch pinned by constraints/cpu.txt)"
    start=$SECONDS
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints/cpu.txt -e ".[test,megatron]"
    echo "$wanted" > "$stamp"
    echo "[setup] .venv ready in $((SECONDS - start)) s"
  else
    echo "[setup] .venv is up to date"
  fi
fi
[ "$lanes" = py311 ] && exit 0

if [ "${MAPO_SKIP_MEGATRON_LANE:-0}" = "1" ]; then
  echo "[setup] MAPO_SKIP_MEGATRON_LANE=1: .venv-megatron not set up"
  exit 0
fi
# The first Python 3.12 that runs: $MAPO_PYTHON312, pyenv's installs (a pyenv shim answers only for the
# selected version), then the PATH.
python312=""
for candidate in ${MAPO_PYTHON312:-} "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12*/bin/python3.12 \
                 "$(command -v python3.12 || true)"; do
  if [ -n "$candidate" ] && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    python312="$candidate"
    break
  fi
done
if [ -z "$python312" ]; then
  echo "[setup] no Python 3.12 found (set MAPO_PYTHON312): the Megatron-Bridge lane needs it" >&2
  exit 1
fi
if [ ! -x .venv-megatron/bin/python ]; then
  echo "[setup] creating .venv-megatron with $python312"
  "$python312" -m venv .venv-megatron
fi
wanted="$(stamp_of pyproject.toml constraints/megatron-cpu.txt scripts/setup_env.sh)"
stamp=.venv-megatron/.mapo-verl-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "[setup] installing the Megatron-Bridge lane into .venv-megatron (about 6 GB, a few minutes)"
  start=$SECONDS
  .venv-megatron/bin/python -m pip install -q --upgrade pip
  .venv-megatron/bin/python -m pip install -q -c constraints/megatron-cpu.txt -e ".[test]" \
    megatron-core transformers hydra-core nvidia-modelopt diffusers rich einops
  .venv-megatron/bin/python -m pip install -q --no-deps -c constraints/megatron-cpu.txt megatron-bridge
  echo "$wanted" > "$stamp"
  echo "[setup] .venv-megatron ready in $((SECONDS - start)) s ($(du -sh .venv-megatron | cut -f1))"
else
  echo "[setup] .venv-megatron is up to date"
fi
