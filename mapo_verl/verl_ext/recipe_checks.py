"""Sizes a veRL 0.9.1 run must agree on, checked before Ray starts, with errors naming the keys.

veRL checks some of these with bare ``assert`` statements in ``validate_config``, and others
only inside the workers, minutes after launch (``mini_batch_size % dp_size`` in the engine
worker, the rollout mesh, the micro-batch split, megatron-core's parallel groups and
interleaved schedule). :func:`check_launch_consistency` runs first from the wrapped
``validate_config`` (:func:`install_config_check`) and reports every problem at
once. It only rejects what veRL / megatron-core would reject.

Also a command line, to check a recipe without launching anything::

    python -m mapo_verl.verl_ext.recipe_checks --config-path recipes \
        --config-name mapo_qwen25_omni_7b_megatron [overrides]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from mapo_verl.core.contract import MAPO_ENGINE_VENDOR, MAPO_ESTIMATOR
from mapo_verl.verl_ext.validation import check_mapo_config, local_model_config

if TYPE_CHECKING:
    from transformers import PretrainedConfig

__all__ = ["GROUP_ESTIMATORS", "launch_problems", "megatron_audio_model_problems", "rollout_checkpoint_problems",
           "cluster_problems", "check_launch_consistency", "install_config_check", "main"]

# Advantage estimators that normalise within a group of rollout.n responses per prompt.
GROUP_ESTIMATORS = ("grpo", "mapo")
_ACTOR = "actor_rollout_ref.actor"
_ROLLOUT = "actor_rollout_ref.rollout"
_REF = "actor_rollout_ref.ref"
_ENGINE_VENDOR_KEY = "ray_kwargs.ray_init.runtime_env.env_vars"


def _get(config: DictConfig, key: str, default: Any = None) -> Any:
    return OmegaConf.select(config, key, default=default)


class _Problems(list):
    def require(self, condition: bool, message: str) -> bool:
        if not condition:
            self.append(message)
        return condition


def _positive_int(problems: _Problems, config: DictConfig, key: str) -> int | None:
    value = _get(config, key)
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    problems.require(ok, f"{key} must be a positive integer, got {value!r}")
    return value if ok else None


def _data_parallel_size(problems: _Problems, config: DictConfig, section: str, n_gpus: int) -> tuple[int | None, int]:
    """(data-parallel size, sequence-split size) of an actor / ref section; None when sizes do not divide."""
    strategy = _get(config, f"{section}.strategy")
    if strategy == "megatron":
        prefix = f"{section}.megatron"
        tp, pp, cp, ep = (_positive_int(problems, config, f"{prefix}.{name}") for name in (
            "tensor_model_parallel_size", "pipeline_model_parallel_size", "context_parallel_size",
            "expert_model_parallel_size"))
        if None in (tp, pp, cp, ep):
            return None, 1
        etp = _get(config, f"{prefix}.expert_tensor_parallel_size") or tp
        vpp = _get(config, f"{prefix}.virtual_pipeline_model_parallel_size")
        problems.require(vpp is None or pp > 1, f"{prefix}.virtual_pipeline_model_parallel_size={vpp} needs "
                                                f"{prefix}.pipeline_model_parallel_size > 1, got {pp}")
        model_parallel = tp * pp * cp
        if not problems.require(n_gpus % model_parallel == 0, (
                f"trainer.nnodes × trainer.n_gpus_per_node = {n_gpus} GPUs must be divisible by "
                f"{prefix}.tensor_model_parallel_size × pipeline_model_parallel_size × context_parallel_size = "
                f"{tp} × {pp} × {cp} = {model_parallel} (TP × PP × CP × DP = GPUs)")):
            return None, cp
        problems.require(n_gpus % (etp * ep * pp) == 0, (
            f"trainer.nnodes × trainer.n_gpus_per_node = {n_gpus} GPUs must be divisible by "
            f"{prefix}.expert_tensor_parallel_size × expert_model_parallel_size × pipeline_model_parallel_size = "
            f"{etp} × {ep} × {pp} = {etp * ep * pp} (megatron-core's expert-parallel groups)"))
        return n_gpus // model_parallel, cp
    if strategy in ("fsdp", "fsdp2"):
        keys = (f"{section}.ulysses_sequence_parallel_size", f"{section}.fsdp_config.ulysses_sequence_parallel_size")
        sp = max(int(_get(config, key, 1) or 1) for key in keys)
        if not problems.require(n_gpus % sp == 0, f"{n_gpus} GPUs must be divisible by {keys[0]} = {sp}"):
            return None, sp
        return n_gpus // sp, sp
    return None, 1  # other engines: veRL's own checks only


def _check_infer_micro_batches(problems: _Problems, config: DictConfig, key: str, padded: int, dp: int, owner: str) -> None:
    micro = _get(config, key)
    if micro is None:
        return  # veRL's validate_config names the missing key
    if not problems.require(padded % dp == 0, f"the {owner} pass splits {padded} sequences over its data-parallel "
                                              f"size {dp}: not divisible"):
        return
    problems.require(isinstance(micro, int) and micro > 0 and (padded // dp) % micro == 0, (
        f"{key}={micro} must divide the {padded // dp} sequences each data-parallel rank of the {owner} pass gets "
        f"(data.train_batch_size × {_ROLLOUT}.n, padded to a multiple of the mini-batch, / DP {dp})"))


def _rollout_problems(problems: _Problems, config: DictConfig, n_gpus: int) -> int:
    """The rollout replicas' sizes against the GPUs and the sequence length; returns that length
    (``data.max_prompt_length + data.max_response_length``)."""
    rollout_world = math.prod(int(_get(config, f"{_ROLLOUT}.{name}", 1) or 1) for name in (
        "tensor_model_parallel_size", "data_parallel_size", "pipeline_model_parallel_size"))
    problems.require(n_gpus % rollout_world == 0, (
        f"{n_gpus} GPUs must be divisible by {_ROLLOUT}.tensor_model_parallel_size × data_parallel_size × "
        f"pipeline_model_parallel_size = {rollout_world} (one rollout replica's GPUs)"))
    rollout_ep = int(_get(config, f"{_ROLLOUT}.expert_parallel_size", 1) or 1)
    rollout_tp_dp = int(_get(config, f"{_ROLLOUT}.tensor_model_parallel_size", 1) or 1) * int(
        _get(config, f"{_ROLLOUT}.data_parallel_size", 1) or 1)
    problems.require(rollout_ep == 1 or _get(config, f"{_ROLLOUT}.name") == "trtllm" or rollout_ep == rollout_tp_dp, (
        f"{_ROLLOUT}.expert_parallel_size={rollout_ep} must equal {_ROLLOUT}.tensor_model_parallel_size × "
        f"data_parallel_size = {rollout_tp_dp}"))
    max_len = int(_get(config, "data.max_prompt_length")) + int(_get(config, "data.max_response_length"))
    max_model_len = _get(config, f"{_ROLLOUT}.max_model_len")
    problems.require(max_model_len is None or max_model_len >= max_len, (
        f"{_ROLLOUT}.max_model_len={max_model_len} must be >= data.max_prompt_length + data.max_response_length "
        f"= {max_len}"))
    return max_len


def _token_budget_problems(problems: _Problems, config: DictConfig, max_len: int, split: int,
                           ref_split: int | None) -> None:
    """Dynamic batch sizes: every per-GPU token budget holds one full sequence (``ref_split`` None: no
    reference pass)."""
    budgets = [(f"{_ACTOR}.ppo_max_token_len_per_gpu", split), (f"{_ROLLOUT}.log_prob_max_token_len_per_gpu", split)]
    if ref_split is not None:
        budgets.append((f"{_REF}.log_prob_max_token_len_per_gpu", ref_split))
    for key, sequence_split in budgets:
        budget = _get(config, key)
        problems.require(budget is not None and budget * sequence_split >= max_len, (
            f"{key}={budget} (× sequence split {sequence_split}) must hold one full sequence: "
            f"data.max_prompt_length + data.max_response_length = {max_len} tokens"))


def _micro_batch_problems(problems: _Problems, config: DictConfig, *, train: int, n: int, mini: int, dp: int,
                          n_gpus: int) -> None:
    """Fixed micro-batches: the actor's micro-batch size divides each rank's share of a mini-batch (and, with
    virtual pipeline stages, gives a multiple of PP micro-batches), and the batch fills veRL's minimal unit."""
    micro = _get(config, f"{_ACTOR}.ppo_micro_batch_size_per_gpu")
    per_rank = mini * n // dp
    if not problems.require(isinstance(micro, int) and micro > 0, (
            f"{_ACTOR}.ppo_micro_batch_size_per_gpu must be set (a positive integer) when "
            f"{_ACTOR}.use_dynamic_bsz=false, got {micro!r}")):
        return
    if problems.require(per_rank % micro == 0, (
            f"{_ACTOR}.ppo_micro_batch_size_per_gpu={micro} must divide the {per_rank} sequences of a mini-batch "
            f"per data-parallel rank ({_ACTOR}.ppo_mini_batch_size × {_ROLLOUT}.n / DP = {mini} × {n} / {dp})")):
        pp = _get(config, f"{_ACTOR}.megatron.pipeline_model_parallel_size", 1)
        vpp = _get(config, f"{_ACTOR}.megatron.virtual_pipeline_model_parallel_size")
        problems.require(_get(config, f"{_ACTOR}.strategy") != "megatron" or vpp is None
                         or (per_rank // micro) % pp == 0, (
            f"with {_ACTOR}.megatron.virtual_pipeline_model_parallel_size={vpp}, the {per_rank // micro} "
            f"micro-batches per mini-batch must be a multiple of pipeline_model_parallel_size={pp}"))
    megatron = _get(config, f"{_ACTOR}.strategy") == "megatron"
    minimal, what = ((dp * micro, f"DP × {_ACTOR}.ppo_micro_batch_size_per_gpu = {dp} × {micro}") if megatron
                     else (n_gpus, f"the {n_gpus} GPUs"))
    problems.require(train * n % minimal == 0, (
        f"data.train_batch_size × {_ROLLOUT}.n = {train * n} must be divisible by {what} (veRL's validate_config)"))


def launch_problems(config: DictConfig) -> list[str]:
    """Every inconsistency between the batch sizes, parallel sizes and GPU count of a trainer config."""
    problems = _Problems()
    nnodes = _positive_int(problems, config, "trainer.nnodes")
    per_node = _positive_int(problems, config, "trainer.n_gpus_per_node")
    train = _positive_int(problems, config, "data.train_batch_size")
    n = _positive_int(problems, config, f"{_ROLLOUT}.n")
    mini = _positive_int(problems, config, f"{_ACTOR}.ppo_mini_batch_size")
    if None in (nnodes, per_node, train, n, mini):
        return problems
    n_gpus = nnodes * per_node
    estimator = _get(config, "algorithm.adv_estimator")
    problems.require(estimator not in GROUP_ESTIMATORS or n >= 2, (
        f"algorithm.adv_estimator={estimator} compares the {_ROLLOUT}.n responses of a prompt: "
        f"n must be >= 2, got {n}"))
    problems.require(mini <= train, f"{_ACTOR}.ppo_mini_batch_size={mini} must be <= data.train_batch_size={train}")
    max_len = _rollout_problems(problems, config, n_gpus)

    dp, split = _data_parallel_size(problems, config, _ACTOR, n_gpus)
    if dp is None:
        return problems
    mini_seqs = mini * n
    if not problems.require(mini_seqs % dp == 0, (
            f"{_ACTOR}.ppo_mini_batch_size × {_ROLLOUT}.n = {mini} × {n} = {mini_seqs} sequences per mini-batch "
            f"must be divisible by the actor's data-parallel size {dp}")):
        return problems
    uses_ref = bool(_get(config, "algorithm.use_kl_in_reward", False) or _get(config, f"{_ACTOR}.use_kl_loss", False)
                    or estimator == "mapo")
    ref_dp, ref_split = _data_parallel_size(problems, config, _REF, n_gpus) if uses_ref else (None, 1)

    if _get(config, f"{_ACTOR}.use_dynamic_bsz", False):
        _token_budget_problems(problems, config, max_len, split, ref_split if uses_ref else None)
        return problems
    _micro_batch_problems(problems, config, train=train, n=n, mini=mini, dp=dp, n_gpus=n_gpus)
    multiple = math.lcm(dp, mini_seqs)
    padded = -(-train * n // multiple) * multiple
    _check_infer_micro_batches(problems, config, f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu", padded, dp,
                               "old-log-prob")
    if uses_ref and ref_dp is not None:
        _check_infer_micro_batches(problems, config, f"{_REF}.log_prob_micro_batch_size_per_gpu", padded, ref_dp,
                                   "reference" + (" / audio-ablated" if estimator == "mapo" else ""))
    return problems


def cluster_problems(config: DictConfig, node_gpus: list[float]) -> list[str]:
    """Whether a Ray cluster whose alive nodes have ``node_gpus`` GPUs can host the run.

    veRL places ``trainer.n_gpus_per_node`` workers on each of ``trainer.nnodes`` nodes; with
    fewer such nodes its resource pool waits for GPUs that never come.
    """
    nnodes, per_node = _get(config, "trainer.nnodes"), _get(config, "trainer.n_gpus_per_node")
    fitting = sum(1 for gpus in node_gpus if gpus >= per_node)
    if fitting >= nnodes:
        return []
    return [(f"trainer.nnodes={nnodes} nodes with trainer.n_gpus_per_node={per_node} GPUs are needed, the Ray cluster "
             f"has {fitting} such node(s) (GPUs per alive node: {sorted(node_gpus, reverse=True)}): start the missing "
             "workers (recipes/launch/ray_worker.sh) or lower trainer.nnodes / trainer.n_gpus_per_node")]


def megatron_audio_model_problems(config: DictConfig, hf_config: PretrainedConfig | None) -> list[str]:
    """Settings Megatron-Bridge's audio models cannot run through veRL's Megatron engine (``docs/DESIGN.md``,
    "Megatron"), for the actor and reference sections on ``strategy=megatron``; ``hf_config`` is the model's
    HF config (None: not on this machine, nothing checked).

    - The Omni thinkers (``thinker_config``) take padded (BSHD) batches only: packed THD input raises in the
      model (``use_remove_padding`` must be false).
    - Context parallelism: the Omni thinkers split the sequence over CP ranks themselves, after veRL has split
      it (twice split); for Qwen2-Audio veRL's split separates audio placeholders from their features.
    - Runs without MAPO's estimator (the GRPO twins) must select MAPO's engines (``VERL_ENGINE_VENDOR=mapo``):
      veRL's own Megatron forward drops audio inputs without a word.
    """
    from mapo_verl.patches.audio_models import audio_family

    if hf_config is None:
        return []
    omni = hasattr(hf_config, "thinker_config")
    if not omni and audio_family(getattr(hf_config, "model_type", None)) is None:
        return []
    name = type(hf_config).__name__
    problems = _Problems()
    for section in (_ACTOR, _REF):
        if _get(config, f"{section}.strategy") != "megatron":
            continue
        prefix = f"{section}.megatron"
        if omni:
            problems.require(not _get(config, f"{prefix}.use_remove_padding", True), (
                f"{prefix}.use_remove_padding=true packs sequences (THD), which Megatron-Bridge's Omni thinker "
                f"({name}) refuses: set {prefix}.use_remove_padding=false"))
        problems.require((_get(config, f"{prefix}.context_parallel_size", 1) or 1) == 1, (
            f"{prefix}.context_parallel_size={_get(config, f'{prefix}.context_parallel_size')} is not supported "
            f"for {name} through Megatron-Bridge (the sequence would be split twice, or audio placeholders "
            f"separated from their features): set {prefix}.context_parallel_size=1"))
        problems.require(not _get(config, f"{prefix}.dynamic_context_parallel", False), (
            f"{prefix}.dynamic_context_parallel=true is not supported for {name}: set it to false"))
    on_megatron = any(_get(config, f"{section}.strategy") == "megatron" for section in (_ACTOR, _REF))
    if on_megatron and _get(config, "algorithm.adv_estimator") != MAPO_ESTIMATOR:
        vendor = _get(config, f"{_ENGINE_VENDOR_KEY}.VERL_ENGINE_VENDOR") or os.environ.get("VERL_ENGINE_VENDOR")
        problems.require(vendor == MAPO_ENGINE_VENDOR, (
            f"{name} on Megatron without MAPO's estimator trains on veRL's own Megatron engine, whose forward passes "
            f"image/video inputs only: the audio features would be silently dropped. Set "
            f"{_ENGINE_VENDOR_KEY}.VERL_ENGINE_VENDOR={MAPO_ENGINE_VENDOR} (MAPO's engine carries them and, without a "
            f"MAPO config, trains exactly as veRL's)"))
    return problems


# thinker-only Omni checkpoints: vLLM 0.24.0 registers the Omni models under their full architectures only
_THINKER_ONLY_MODEL_TYPES = ("qwen2_5_omni_thinker", "qwen3_omni_moe_thinker")


def rollout_checkpoint_problems(config: DictConfig, hf_config: PretrainedConfig | None) -> list[str]:
    """A vLLM rollout of a thinker-only Omni checkpoint (``docs/DESIGN.md``, "Patches"): vLLM cannot serve it,
    and would fail only once the workers are up. The full checkpoint serves, and the actor trains its thinker."""
    model_type = getattr(hf_config, "model_type", None)
    if _get(config, f"{_ROLLOUT}.name") != "vllm" or model_type not in _THINKER_ONLY_MODEL_TYPES:
        return []
    return [(f"actor_rollout_ref.model.path={_get(config, 'actor_rollout_ref.model.path')!r} is a thinker-only "
             f"checkpoint ({model_type}); vLLM serves Qwen2.5-Omni / Qwen3-Omni only as full checkpoints: point "
             "actor_rollout_ref.model.path at the full one (e.g. Qwen/Qwen2.5-Omni-3B), whose thinker the actor "
             "trains")]


def check_launch_consistency(config: DictConfig) -> None:
    """Raise one ``ValueError`` listing every problem of :func:`launch_problems`,
    :func:`megatron_audio_model_problems` and :func:`rollout_checkpoint_problems`."""
    hf_config = local_model_config(config)
    problems = (launch_problems(config) + megatron_audio_model_problems(config, hf_config)
                + rollout_checkpoint_problems(config, hf_config))
    if problems:
        raise ValueError("inconsistent launch config (checked before Ray starts):\n  - " + "\n  - ".join(problems))


def install_config_check() -> None:
    """Run :func:`check_mapo_config` and the size checks of this module before
    veRL's own ``validate_config`` (whose bare asserts would otherwise report size mismatches first)."""
    import verl.utils.config as verl_config

    original = verl_config.validate_config
    if getattr(original, "__mapo_wrapped__", False):
        return

    @functools.wraps(original)
    def validate_config(config: DictConfig, *args: Any, **kwargs: Any) -> Any:
        check_mapo_config(config)
        check_launch_consistency(config)
        return original(config, *args, **kwargs)

    validate_config.__mapo_wrapped__ = True
    verl_config.validate_config = validate_config
    main_module = sys.modules.get("verl.trainer.main_ppo")
    if main_module is not None and getattr(main_module, "validate_config", None) is original:
        main_module.validate_config = validate_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-path", required=True, help="directory of the recipe YAMLs")
    parser.add_argument("--config-name", required=True, help="recipe name (without .yaml)")
    parser.add_argument("--ray-address", help="also check that this running Ray cluster has the GPUs the run needs")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for verl.trainer.main_ppo")
    args = parser.parse_args(argv)
    import verl  # noqa: F401  (loads the MAPO plugin: _target_ classes, the ${...} resolvers of the recipes)
    from hydra import compose, initialize_config_dir


    with initialize_config_dir(config_dir=str(Path(args.config_path).resolve()), version_base=None):
        config = compose(config_name=args.config_name, overrides=args.overrides)
    try:
        check_mapo_config(config)
        check_launch_consistency(config)
    except ValueError as error:
        print(f"{args.config_name}: {error}", file=sys.stderr)
        return 1
    if args.ray_address:
        import ray

        ray.init(address=args.ray_address, log_to_driver=False)
        node_gpus = [node["Resources"].get("GPU", 0.0) for node in ray.nodes() if node["Alive"]]
        ray.shutdown()
        problems = cluster_problems(config, node_gpus)
        if problems:
            print(f"{args.config_name}: {problems[0]}", file=sys.stderr)
            return 1
    print(f"{args.config_name}: consistent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
