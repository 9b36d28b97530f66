#!/usr/bin/env bash
# Prepared check of the HF attention-loss path on a lent GPU (one H100/H200; no veRL there).
# Runs from the repository root on the device machine; results go to $OUT:
#   gpu_check_attention.json  kernels (sdpa / flash-attn vs explicit float64 softmax, gradients),
#                             models (AudioMassProbe on a tiny Omni thinker, padded + packed),
#                             cost (peak memory and time, indicator-V vs materialised softmax, S = 1k..32k)
#   pytest_attention.txt      the veRL-free attention tests on this machine's transformers
# Usage: OUT=/some/dir bash scripts/gpu_check.sh        (about 2-4 minutes)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.csv" 2>&1
"$PYTHON" -c "import torch, transformers; print(torch.__version__, torch.version.cuda, transformers.__version__)" \
    | tee "$OUT/versions.txt"
"$PYTHON" scripts/gpu_check_attention.py --out "$OUT" 2>&1 | tee "$OUT/gpu_check_attention.log"
status=${PIPESTATUS[0]}
if "$PYTHON" -c "import pytest" 2>/dev/null; then
    (cd tests/attention && "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts="" \
        test_attn_indicator_mass.py test_attn_probe.py test_attn_omni_gradient.py) > "$OUT/pytest_attention.txt" 2>&1
    tail -n 3 "$OUT/pytest_attention.txt"
else
    echo "pytest not installed on this machine: attention tests skipped" > "$OUT/pytest_attention.txt"
fi
exit "$status"
