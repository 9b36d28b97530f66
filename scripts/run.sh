#!/usr/bin/env bash
# Set up .venv (idempotent) and run the main job. Without a GPU this is the tiny embedded
# default: a few MAPO steps (ablated pass, ω̃, attention loss) through veRL's real
# main_ppo on CPU, then the collapse report. Arguments go to mapo_verl.demo.launch
# (e.g. --recipe grpo_tiny_cpu, or Hydra overrides such as trainer.total_training_steps=5).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh" py311
cd "$root"
exec .venv/bin/python -m mapo_verl.demo.launch "$@"
