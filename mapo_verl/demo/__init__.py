"""The embedded defaults, made offline: a tiny random Qwen2.5-Omni thinker and an audio QA set; a tiny
random Qwen2.5-VL and an image QA set (:mod:`mapo_verl.demo.vision`).

:func:`ensure_demo_assets` creates them on first use (a few seconds, no network) under
``$MAPO_DEMO_DIR`` (default ``~/.cache/mapo_verl/demo``) and returns their paths; later
calls reuse them. Creation is atomic and safe against concurrent callers. The model is
random: the demo exercises the training stack on two CPU cores, it does not learn the task
in a few steps.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DEMO_DIR_ENV", "RESOLVER", "DemoAssets", "demo_dir", "ensure_demo_assets", "register_resolver"]

DEMO_DIR_ENV = "MAPO_DEMO_DIR"
RESOLVER = "mapo_demo"  # ${mapo_demo:model_dir} etc. in recipes
# bump when the builders change, so stale caches are not reused
_ASSETS_VERSION = "v5"
_TRAIN_ROWS, _VAL_ROWS = 64, 8


@dataclass(frozen=True)
class DemoAssets:
    model_dir: Path
    omni_model_dir: Path  # the same thinker as a full Qwen2.5-Omni checkpoint (Megatron-Bridge's input)
    train_file: Path
    val_file: Path
    reward_file: Path
    vl_model_dir: Path  # the vision default: a tiny Qwen2.5-VL and its shapes set
    vl_train_file: Path
    vl_val_file: Path


def demo_dir() -> Path:
    """Where the demo assets live: ``$MAPO_DEMO_DIR`` or ``~/.cache/mapo_verl/demo``."""
    return Path(os.environ.get(DEMO_DIR_ENV) or Path.home() / ".cache" / "mapo_verl" / "demo").expanduser()


def _assets(root: Path) -> DemoAssets:
    from mapo_verl.demo import reward

    return DemoAssets(
        model_dir=root / "qwen2_5_omni_thinker_tiny",
        omni_model_dir=root / "qwen2_5_omni_tiny",
        train_file=root / "tones_train.parquet",
        val_file=root / "tones_val.parquet",
        reward_file=Path(reward.__file__).resolve(),
        vl_model_dir=root / "qwen2_5_vl_tiny",
        vl_train_file=root / "shapes_train.parquet",
        vl_val_file=root / "shapes_val.parquet",
    )


def _build(target: Path) -> None:
    from mapo_verl.demo import vision
    from mapo_verl.demo.data import corpus, make_rows, write_parquet
    from mapo_verl.demo.model import save_tiny_omni, save_tiny_omni_thinker

    assets = _assets(target)
    save_tiny_omni_thinker(assets.model_dir, corpus())
    save_tiny_omni(assets.omni_model_dir, corpus())
    write_parquet(make_rows(_TRAIN_ROWS, seed=1, split="train"), assets.train_file)
    write_parquet(make_rows(_VAL_ROWS, seed=2, split="val"), assets.val_file)
    vision.save_tiny_qwen2_5_vl(assets.vl_model_dir)
    write_parquet(vision.make_rows(_TRAIN_ROWS, seed=1, split="train"), assets.vl_train_file)
    write_parquet(vision.make_rows(_VAL_ROWS, seed=2, split="val"), assets.vl_val_file)


def ensure_demo_assets(root: str | Path | None = None) -> DemoAssets:
    """Create the demo model and data under ``root`` (default :func:`demo_dir`) unless present."""
    base = Path(root).expanduser() if root is not None else demo_dir()
    final = base / _ASSETS_VERSION
    base.mkdir(parents=True, exist_ok=True)
    with open(base / f".{_ASSETS_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not final.is_dir():
            staging = Path(tempfile.mkdtemp(prefix=f".{_ASSETS_VERSION}-", dir=base))
            try:
                _build(staging)
                os.replace(staging, final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    return _assets(final)


def _resolve(name: str) -> str:
    fields = DemoAssets.__dataclass_fields__
    if name not in fields:
        raise ValueError(f"${{{RESOLVER}:{name}}}: unknown demo asset; known: {sorted(fields)}")
    return str(getattr(ensure_demo_assets(), name))


def register_resolver() -> None:
    """Register ``${mapo_demo:<asset>}`` (``model_dir``, ``omni_model_dir``, ``train_file``, ``val_file``,
    ``reward_file``, ``vl_model_dir``, ``vl_train_file``, ``vl_val_file``)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _resolve)
