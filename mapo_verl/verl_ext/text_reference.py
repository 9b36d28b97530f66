"""An external text-only reference model for the ablated pass (``text_ref_model``; docs/DESIGN.md, "Step order").

When ``actor_rollout_ref.actor.policy_loss.mapo.text_ref_model`` names an HF model path, the
ablated pass runs on that model instead of the frozen reference (or the LoRA base). It sees
exactly what the reference would see: the actor's token ids (audio placeholders kept), the
audio features removed as ``ablation`` says, the same positions. Its log-probs / entropies on
that input give H_abl. Because it reads the actor's token ids, it must be a checkpoint of the
actor's architecture with the actor's tokenizer: as the authors' release, the same
``model_type`` and ``vocab_size``; here also the same token → id map (the release compares only
the sizes, which two tokenizers of one size can still satisfy with different ids).

The model is one more frozen engine inside MAPO's actor worker (dispatch mesh
:data:`TEXT_REF_MESH`), built as veRL builds its reference engine: the engine settings of
``actor_rollout_ref.ref`` (FSDP / Megatron options, offload, micro-batch sizes) and the model
settings of ``actor_rollout_ref.model`` with the path replaced, LoRA off and no MTP; its HF
config and tokenizer come from its own path.
"""

from __future__ import annotations

from copy import deepcopy

from omegaconf import open_dict

from mapo_verl.core.contract import CONFIG_PREFIX
from mapo_verl.patches.checkpoint_names import trained_config

__all__ = ["TEXT_REF_KEY", "TEXT_REF_MESH", "text_reference_mismatch", "check_text_reference",
           "text_reference_model_section", "build_text_reference"]

TEXT_REF_KEY = f"{CONFIG_PREFIX}.text_ref_model"
TEXT_REF_MESH = "text_ref"


def _vocab_size(hf_config):
    text_config = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    return getattr(text_config, "vocab_size", None)


def text_reference_mismatch(actor_config, actor_tokenizer, text_config, text_tokenizer) -> str | None:
    """Why the text reference cannot read the actor's token ids (``None`` when it can).

    Compares the ``model_type`` and (text) ``vocab_size`` of the modules trained from the two checkpoints
    (a full Omni checkpoint's thinker and a thinker-only one match), then the tokenizers' token → id maps,
    naming the first token that differs.
    """
    actor_config, text_config = trained_config(actor_config), trained_config(text_config)
    if actor_config.model_type != text_config.model_type:
        return f"its model_type is {text_config.model_type!r}, the actor's {actor_config.model_type!r}"
    actor_size, text_size = _vocab_size(actor_config), _vocab_size(text_config)
    if actor_size != text_size:
        return f"its vocab_size is {text_size}, the actor's {actor_size}"
    actor_vocab, text_vocab = actor_tokenizer.get_vocab(), text_tokenizer.get_vocab()
    if actor_vocab != text_vocab:
        for token in sorted(set(actor_vocab) | set(text_vocab)):
            if actor_vocab.get(token) != text_vocab.get(token):
                return (f"its tokenizer maps {token!r} to id {text_vocab.get(token)}, the actor's to "
                        f"{actor_vocab.get(token)} ({len(text_vocab)} vs {len(actor_vocab)} tokens)")
    return None


def _mismatch_error(path: str, reason: str) -> ValueError:
    return ValueError(
        f"{TEXT_REF_KEY}={path!r} cannot score the actor's token ids: {reason}. The text reference reads the "
        "actor's tokenized batch with the audio removed, so it must be a checkpoint of the actor's architecture "
        f"with the actor's tokenizer (unset {TEXT_REF_KEY} to use the frozen reference)"
    )


def check_text_reference(config) -> None:
    """Launch check: the text reference's HF config and tokenizer against the actor's.

    Runs when both are on this machine (a remote path is checked by the worker that loads it).
    """
    from transformers import AutoConfig, AutoTokenizer

    from mapo_verl.config import mapo_config_from

    path = mapo_config_from(config).text_ref_model
    if path is None:
        return
    model = config.actor_rollout_ref.model
    trust = bool(model.get("trust_remote_code"))

    def load(config_path, tokenizer_path):
        try:
            return (AutoConfig.from_pretrained(str(config_path), trust_remote_code=trust, local_files_only=True),
                    AutoTokenizer.from_pretrained(str(tokenizer_path), trust_remote_code=trust,
                                                  local_files_only=True))
        except Exception:
            return None

    actor = load(model.get("hf_config_path") or model.path, model.get("tokenizer_path") or model.path)
    text = load(path, path)
    if actor is None or text is None:
        return
    reason = text_reference_mismatch(actor[0], actor[1], text[0], text[1])
    if reason is not None:
        raise _mismatch_error(path, reason)


def text_reference_model_section(model_section, path: str):
    """A copy of ``actor_rollout_ref.model`` for the text reference: ``path`` replaced, its HF config and
    tokenizer read from ``path``, LoRA off (a plain frozen model)."""
    section = deepcopy(model_section)
    with open_dict(section):
        section.path = path
        for key in ("hf_config_path", "tokenizer_path", "local_path", "local_hf_config_path",
                    "local_tokenizer_path", "lora_adapter_path"):
            if key in section:
                section[key] = None
        section.lora_rank = 0
        if section.get("lora"):
            section.lora.rank = 0
    return section


def build_text_reference(config, path: str, worker_cls):
    """The text reference's engine worker (``worker_cls``, a veRL ``TrainingWorker``), built from the
    ``actor_rollout_ref`` section ``config`` as veRL's ``ActorRolloutRefWorker.init_model`` builds the
    reference; raises naming :data:`TEXT_REF_KEY` when it cannot read the actor's token ids."""
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.config import MtpConfig, TrainingWorkerConfig

    actor_model = omega_conf_to_dataclass(config.model)
    model = omega_conf_to_dataclass(text_reference_model_section(config.model, path))
    reason = text_reference_mismatch(actor_model.hf_config, actor_model.tokenizer, model.hf_config, model.tokenizer)
    if reason is not None:
        raise _mismatch_error(path, reason)
    model.mtp = MtpConfig(enable=False)

    # the reference section with veRL's renames of its log-prob batch keys (on a copy: veRL renames in place)
    section = deepcopy(config.ref)
    with open_dict(section):
        section.ppo_mini_batch_size = config.actor.ppo_mini_batch_size
        section.ppo_micro_batch_size = section.pop("log_prob_micro_batch_size", None)
        section.ppo_micro_batch_size_per_gpu = section.pop("log_prob_micro_batch_size_per_gpu", None)
        section.use_dynamic_bsz = section.pop("log_prob_use_dynamic_bsz", False)
        section.ppo_max_token_len_per_gpu = section.pop("log_prob_max_token_len_per_gpu", None)
    reference = omega_conf_to_dataclass(section)
    training_config = TrainingWorkerConfig(
        model_type="language_model",
        model_config=model,
        engine_config=reference.engine,
        optimizer_config=reference.optim,
        checkpoint_config=reference.checkpoint,
    )
    engine = training_config.engine_config
    engine.use_dynamic_bsz = section.use_dynamic_bsz
    engine.infer_max_token_len_per_gpu = section.ppo_max_token_len_per_gpu
    engine.infer_micro_batch_size_per_gpu = section.ppo_micro_batch_size_per_gpu
    engine.use_remove_padding = model.get("use_remove_padding", False)
    worker = worker_cls(config=training_config)
    worker.reset()
    return worker
