#!/usr/bin/env bash
# Create (or reuse) .venv at the repository root and install mapo-verl with its test and
# megatron extras. Idempotent: re-running installs only when pyproject.toml or the
# constraints changed. torch is pinned to the CPU build on local disk (constraints/cpu.txt).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${MAPO_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $python_bin"
  "$python_bin" -m venv .venv
fi
wanted="$(cat pyproject.toml constraints/cpu.txt | sha256sum | cut -d' ' -f1)"
stamp=.venv/.mapo-verl-installed
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "[setup] installing mapo-verl[test,megatron] (torch pinned by constraints/cpu.txt)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -c constraints/cpu.txt -e ".[test,megatron]"
  echo "$wanted" > "$stamp"
else
  echo "[setup] .venv is up to date"
fi
