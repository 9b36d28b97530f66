"""Registration is complete whatever the import order (each order in a fresh process).

Importing ``mapo_verl.config`` (or ``mapo_verl.batch_relevance``) first used to start veRL's plugin
autoload while ``mapo_verl.config`` was half-built: the registration failed, only the
estimator got registered, and the error went to veRL's debug log.
"""

import subprocess
import sys

import pytest

CHECK = """
import sys
{first}
from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY
from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY
from verl.workers.engine.base import EngineRegistry
import mapo_verl.config as config
import mapo_verl.verl_ext.fsdp_engine as fsdp_engine
from mapo_verl.verl_ext import registration
engines = str(EngineRegistry._engines)
print("RESULT", "mapo" in ADV_ESTIMATOR_REGISTRY, "mapo" in TRAINER_REGISTRY, registration._registered,
      fsdp_engine.AttentionLossConfig is config.AttentionLossConfig, "MAPOFSDPEngineWithLMHead" in engines)
"""


def run(first: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", CHECK.format(first=first)], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Failed to load plugin" not in out.stderr and "registering MAPO in veRL failed" not in out.stderr
    return next(line for line in out.stdout.splitlines() if line.startswith("RESULT")).split()[1:]


@pytest.mark.slow
def test_registration_is_complete_when_mapo_verl_config_is_imported_before_verl():
    # estimator, trainer, registration finished, one mapo_verl.config module object, FSDP engine registered
    assert run("import mapo_verl.config") == ["True"] * 5
