#!/usr/bin/env bash
# Run a recipe on this node (Ray starts locally inside veRL's main_ppo).
#
#   recipes/launch/single_node.sh <recipe> [hydra overrides...]
#   recipes/launch/single_node.sh mapo_qwen25_omni_3b_fsdp data.train_files=/data/avqa/train.parquet
#
# Env: MAPO_PYTHON (python with veRL + mapo-verl installed; default: python), N_GPUS (GPUs on
# this node; default: the recipe's trainer.n_gpus_per_node). The mapo_verl plugin is loaded
# by `import verl` through its entry point, and in every Ray worker through the recipe's
# ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES=mapo_verl.
# Batch / parallel sizes are checked against the GPU count before Ray starts.
set -euo pipefail
recipe="${1:?usage: $0 <recipe name, e.g. mapo_qwen25_omni_3b_fsdp> [hydra overrides...]}"
shift
recipes="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${MAPO_PYTHON:-python}"
overrides=(trainer.nnodes=1)
if [ -n "${N_GPUS:-}" ]; then
  overrides+=("trainer.n_gpus_per_node=${N_GPUS}")
fi
exec "$python" -m verl.trainer.main_ppo --config-path "$recipes" --config-name "$recipe" "${overrides[@]}" "$@"
