#!/usr/bin/env bash
# Run a recipe on a running multi-node Ray cluster; run on the head node.
#
#   recipes/launch/ray_head.sh                            # head node
#   recipes/launch/ray_worker.sh <head-ip>                # each other node
#   recipes/launch/multi_node.sh <recipe> [hydra overrides...]
#
# How the plugin reaches every worker (MAPO_SHIP):
#   py_module (default)  mapo_verl is installed without dependencies into a staging directory
#                        (pip install --no-deps --target) and passed as the Ray runtime_env's
#                        py_modules: Ray uploads it once and puts it on every worker's path; the
#                        recipe's runtime_env env var VERL_USE_EXTERNAL_MODULES=mapo_verl makes
#                        each worker's `import verl` load it. Only veRL and its dependencies must
#                        already be installed on every node.
#   installed            every node's environment has mapo-verl installed (the `verl.plugins`
#                        entry point loads it); nothing is shipped.
# Before launching, the recipe's sizes and the cluster's GPUs per node are checked
# (python -m mapo_verl.verl_ext.recipe_checks --ray-address ...).
#
# Env: MAPO_PYTHON (default python), MAPO_SHIP, MAPO_STAGE_DIR (default <repo>/.ray_stage),
# RAY_ADDRESS (default auto: the cluster this node belongs to).
set -euo pipefail
recipe="${1:?usage: $0 <recipe name, e.g. mapo_qwen25_omni_7b_megatron> [hydra overrides...]}"
shift
recipes="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(dirname "$recipes")"
python="${MAPO_PYTHON:-python}"
export RAY_ADDRESS="${RAY_ADDRESS:-auto}"
overrides=()
case "${MAPO_SHIP:-py_module}" in
  py_module)
    stage="${MAPO_STAGE_DIR:-$repo/.ray_stage}"
    rm -rf "$stage"
    # build from a copy of what the package is made of, so no build/ directory lands in the checkout
    src="$(mktemp -d)"
    cp -r "$repo/pyproject.toml" "$repo/README.md" "$repo/mapo_verl" "$repo/patches" "$repo/recipes" "$src/"
    "$python" -m pip install --quiet --no-deps --no-build-isolation --target "$stage" "$src"
    rm -rf "$src"
    export PYTHONPATH="$stage${PYTHONPATH:+:$PYTHONPATH}"  # the driver imports the copy the workers get
    overrides+=("+ray_kwargs.ray_init.runtime_env.py_modules=['$stage/mapo_verl']")
    ;;
  installed) ;;
  *) echo "MAPO_SHIP must be py_module or installed, got '${MAPO_SHIP}'" >&2; exit 2 ;;
esac
"$python" -m mapo_verl.verl_ext.recipe_checks --config-path "$recipes" --config-name "$recipe" \
  --ray-address "$RAY_ADDRESS" "${overrides[@]}" "$@"
exec "$python" -m verl.trainer.main_ppo --config-path "$recipes" --config-name "$recipe" "${overrides[@]}" "$@"
