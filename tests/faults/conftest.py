"""Shared fixtures of the fault tests: the embedded tiny Qwen2.5-Omni thinker and its tone QA rows."""

from __future__ import annotations

import os

import pandas as pd
import pytest


@pytest.fixture(scope="session")
def demo_assets(tmp_path_factory):
    from mapo_verl.demo import DEMO_DIR_ENV, ensure_demo_assets

    root = tmp_path_factory.mktemp("faults_demo")
    os.environ.setdefault(DEMO_DIR_ENV, str(root))  # the e2e runs of this session reuse them
    return ensure_demo_assets(os.environ[DEMO_DIR_ENV])


@pytest.fixture(scope="session")
def tokenizer_and_processor(demo_assets):
    import verl  # noqa: F401  (loads the MAPO plugin: audio processor patches, row checks)
    from verl.utils import hf_processor, hf_tokenizer

    return hf_tokenizer(str(demo_assets.model_dir)), hf_processor(str(demo_assets.model_dir))


@pytest.fixture(scope="session")
def good_rows(demo_assets) -> list[dict]:
    """Demo training rows with their clips as plain float lists (one clip of 0.5-1.5 s each)."""
    rows = pd.read_parquet(demo_assets.train_file).to_dict("records")
    return [{**row, "audios": [[float(x) for x in clip] for clip in row["audios"]]} for row in rows]


def write_rows(rows: list[dict], path) -> str:
    pd.DataFrame(rows).to_parquet(path)
    return str(path)
