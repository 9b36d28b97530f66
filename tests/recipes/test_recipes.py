"""The recipes compose with veRL's ppo_trainer, carry the authors' values (docs/DESIGN.md parity table), have exact GRPO twins, and pass the
launch checks; the launch checks reject sizes that do not agree, naming the keys, before Ray starts."""

import os
import subprocess
import sys

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mapo_verl.config import AUTHORS_VERL_SETTINGS
from mapo_verl.verl_ext.recipe_checks import cluster_problems, launch_problems
from mapo_verl.verl_ext.recipe_checks import main as check_main

from tests.recipes.conftest import RECIPES

MODELS = {  # recipe stem -> (nodes, GPUs per node, strategy)
    "qwen25_omni_7b_megatron": (2, 8, "megatron"),
    "qwen25_omni_3b_fsdp": (1, 8, "fsdp2"),
    "qwen3_omni_30b_a3b_megatron": (4, 8, "megatron"),
}
RECIPE_NAMES = [f"{algo}_{model}" for model in MODELS for algo in ("mapo", "grpo")]
MAPO_SECTION = "actor_rollout_ref.actor.policy_loss.mapo"

# The authors' launcher values (docs/DESIGN.md parity table), written out here independently of mapo_verl.config.
SPEC_MAPO_VALUES = {
    f"{MAPO_SECTION}.tau_base": 1.0,
    f"{MAPO_SECTION}.mask_cap": 5.0,
    f"{MAPO_SECTION}.attention.coef": 0.05,
    f"{MAPO_SECTION}.attention.layers": [-3, -2, -1],
    f"{MAPO_SECTION}.attention.head_reduce": "max",
    f"{MAPO_SECTION}.attention.layer_reduce": "mean",
    f"{MAPO_SECTION}.attention.kappa": 1.0,
    f"{MAPO_SECTION}.attention.eps": 1e-6,
    f"{MAPO_SECTION}.attention.advantage_floor_eps": 0.02,
    f"{MAPO_SECTION}.attention.fail_floor": 0.1,
    f"{MAPO_SECTION}.attention.pref_cap": 3.0,
    f"{MAPO_SECTION}.pos_gate.tags": ["NOUN", "VERB", "ADJ", "ADV", "NUM", "X"],
    f"{MAPO_SECTION}.task_reward_key": "acc",
}
SPEC_SHARED_VALUES = {
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.02,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.rollout.n": 8,
    "data.max_response_length": 1200,
    "actor_rollout_ref.actor.optim.lr": 1e-6,
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.05,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 0.99,
    "actor_rollout_ref.rollout.top_k": 50,
    "reward.custom_reward_function.reward_kwargs.acc_weight": 2.0,
    "reward.custom_reward_function.reward_kwargs.format_weight": 1.0,
    "reward.custom_reward_function.reward_kwargs.consistency_weight": 1.0,
}
MAPO_SWITCHES = {"algorithm.adv_estimator", "trainer.v1.trainer_mode", "actor_rollout_ref.actor.policy_loss._target_",
                 "trainer.experiment_name"}


def composed(name, overrides=()):
    with initialize_config_dir(config_dir=str(RECIPES), version_base=None):
        return compose(config_name=name, overrides=list(overrides))


def flat(node, prefix=""):
    container = OmegaConf.to_container(node, resolve=False) if not isinstance(node, dict) else node
    out = {}
    for key, value in container.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, path + "."))
        else:
            out[path] = value
    return out


@pytest.fixture(scope="module")
def configs():
    import verl  # noqa: F401  (loads the MAPO plugin, as main_ppo does)

    return {name: composed(name) for name in RECIPE_NAMES}


def test_every_recipe_file_is_covered():
    # the CPU demos are tested in tests/e2e and tests/vision, the vision-language recipes in tests/vision
    found = {p.stem for p in RECIPES.glob("*.yaml") if "tiny" not in p.stem and "_vl_" not in p.stem}
    assert found == set(RECIPE_NAMES)


@pytest.mark.parametrize("name", RECIPE_NAMES)
def test_recipe_values_and_launch_checks(configs, name):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config

    config = configs[name]
    nodes, per_node, strategy = MODELS[name.split("_", 1)[1]]
    assert (config.trainer.nnodes, config.trainer.n_gpus_per_node) == (nodes, per_node)
    assert config.actor_rollout_ref.actor.strategy == strategy
    assert config.trainer.experiment_name == name
    for key, value in SPEC_SHARED_VALUES.items():
        assert OmegaConf.select(config, key) == pytest.approx(value), key
    assert config.data.custom_cls.path == "pkg://mapo_verl.data.dataset"
    assert config.reward.custom_reward_function.path == "pkg://mapo_verl.rewards.mcqa"
    assert OmegaConf.to_container(config.ray_kwargs.ray_init.runtime_env.env_vars) == {
        "VERL_USE_EXTERNAL_MODULES": "mapo_verl", "VERL_ENGINE_VENDOR": "mapo"}
    if strategy == "megatron":  # Megatron-Bridge's Omni thinker: padded batches (the engine's key), CP 1
        assert config.actor_rollout_ref.actor.megatron.use_remove_padding is False
        assert config.actor_rollout_ref.ref.megatron.use_remove_padding is False
        assert config.actor_rollout_ref.actor.megatron.context_parallel_size == 1
    for key, value in AUTHORS_VERL_SETTINGS.items():  # mapo_verl.config's record of the same values
        if key != "algorithm.adv_estimator":
            assert OmegaConf.select(config, key) == pytest.approx(value), key
    if name.startswith("mapo_"):
        assert config.algorithm.adv_estimator == "mapo" and config.trainer.v1.trainer_mode == "mapo"
        for key, value in SPEC_MAPO_VALUES.items():
            assert OmegaConf.select(config, key) == pytest.approx(value), key
    else:
        assert config.algorithm.adv_estimator == "grpo" and config.trainer.v1.trainer_mode == "sync"
        assert "mapo" not in config.actor_rollout_ref.actor.policy_loss
    assert launch_problems(config) == []
    # veRL's own validate_config (wrapped by the plugin: MAPO checks, then the size checks) passes,
    # and veRL's actor / rollout dataclasses build from the recipe
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    actor = omega_conf_to_dataclass(config.actor_rollout_ref.actor)
    omega_conf_to_dataclass(config.actor_rollout_ref.rollout)
    if name.startswith("mapo_"):
        assert actor.policy_loss.mapo.attention.coef == 0.05 and actor.policy_loss.mapo.mask_cap == 5.0


@pytest.mark.parametrize("model", MODELS)
def test_grpo_twin_differs_only_in_the_mapo_switches(configs, model):
    mapo, grpo = flat(configs[f"mapo_{model}"]), flat(configs[f"grpo_{model}"])
    differing = {key for key in mapo.keys() | grpo.keys() if mapo.get(key, "<absent>") != grpo.get(key, "<absent>")}
    mapo_section = {key for key in differing if key.startswith(MAPO_SECTION + ".")}
    assert differing - mapo_section == MAPO_SWITCHES
    assert mapo_section and all(key not in grpo for key in mapo_section)


def test_megatron_layouts_fill_the_gpus(configs):
    seven = configs["mapo_qwen25_omni_7b_megatron"].actor_rollout_ref.actor.megatron
    assert seven.tensor_model_parallel_size * seven.pipeline_model_parallel_size == 4  # DP 4 on 16 GPUs
    thirty = configs["mapo_qwen3_omni_30b_a3b_megatron"].actor_rollout_ref.actor.megatron
    assert thirty.expert_model_parallel_size == 8 and thirty.expert_tensor_parallel_size == 1
    assert 32 % (thirty.expert_model_parallel_size * thirty.pipeline_model_parallel_size) == 0


def test_main_ppo_cfg_job_composes_a_megatron_and_an_fsdp_recipe(tmp_path):
    for name in ("mapo_qwen25_omni_7b_megatron", "grpo_qwen25_omni_3b_fsdp"):
        out = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(RECIPES),
                              "--config-name", name, "--cfg", "job"], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        job = yaml.safe_load(out.stdout)
        assert job["trainer"]["experiment_name"] == name
        assert job["algorithm"]["adv_estimator"] == name.split("_")[0]
    assert job["actor_rollout_ref"]["actor"]["strategy"] == "fsdp2"


def test_the_multi_node_py_modules_override_composes(configs):
    config = composed("mapo_qwen25_omni_7b_megatron",
                      ["+ray_kwargs.ray_init.runtime_env.py_modules=['/stage/dir/mapo_verl']"])
    runtime_env = OmegaConf.to_container(config.ray_kwargs.ray_init.runtime_env)
    assert runtime_env["py_modules"] == ["/stage/dir/mapo_verl"]
    assert runtime_env["env_vars"]["VERL_USE_EXTERNAL_MODULES"] == "mapo_verl"


# ------------------------------------------------------------------------ the consistency checker

BAD_VALUES = [  # (recipe, overrides, fragments the message must contain)
    ("mapo_qwen25_omni_7b_megatron", ["actor_rollout_ref.actor.megatron.tensor_model_parallel_size=3"],
     ["16 GPUs must be divisible by", "actor_rollout_ref.actor.megatron.tensor_model_parallel_size",
      "3 × 2 × 1 = 6"]),
    ("mapo_qwen25_omni_7b_megatron", ["trainer.n_gpus_per_node=6"],
     ["actor_rollout_ref.actor.ppo_mini_batch_size × actor_rollout_ref.rollout.n = 16 × 8 = 128",
      "data-parallel size 3"]),
    ("mapo_qwen3_omni_30b_a3b_megatron", ["actor_rollout_ref.actor.megatron.expert_model_parallel_size=12"],
     ["expert_tensor_parallel_size × expert_model_parallel_size × pipeline_model_parallel_size = 1 × 12 × 2"]),
    ("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.rollout.tensor_model_parallel_size=3"],
     ["actor_rollout_ref.rollout.tensor_model_parallel_size × data_parallel_size", "= 3"]),
    ("mapo_qwen3_omni_30b_a3b_megatron", ["actor_rollout_ref.rollout.expert_parallel_size=2"],
     ["actor_rollout_ref.rollout.expert_parallel_size=2 must equal", "= 4"]),
    ("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5"],
     ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5 must divide the 16 sequences"]),
    ("mapo_qwen25_omni_7b_megatron", ["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=48"],
     ["actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=48 must divide the 128 sequences"]),
    ("mapo_qwen25_omni_7b_megatron", ["actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=48"],
     ["actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=48", "reference / audio-ablated pass"]),
    ("grpo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.rollout.n=1"],
     ["algorithm.adv_estimator=grpo", "actor_rollout_ref.rollout.n responses", "got 1"]),
    ("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.actor.ppo_mini_batch_size=64"],
     ["actor_rollout_ref.actor.ppo_mini_batch_size=64 must be <= data.train_batch_size=32"]),
    ("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.actor.use_dynamic_bsz=true",
                                  "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048"],
     ["actor_rollout_ref.actor.ppo_max_token_len_per_gpu=2048", "3248 tokens"]),
    ("mapo_qwen25_omni_7b_megatron", ["+actor_rollout_ref.actor.megatron.virtual_pipeline_model_parallel_size=2",
                                      "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=32"],
     ["the 1 micro-batches per mini-batch must be a multiple of pipeline_model_parallel_size=2"]),
    ("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.rollout.max_model_len=2048"],
     ["actor_rollout_ref.rollout.max_model_len=2048 must be >= data.max_prompt_length + data.max_response_length"]),
    ("grpo_qwen25_omni_3b_fsdp", ["trainer.nnodes=0"], ["trainer.nnodes must be a positive integer, got 0"]),
    ("mapo_qwen25_omni_7b_megatron", ["data.train_batch_size=63"],
     ["data.train_batch_size × actor_rollout_ref.rollout.n = 504 must be divisible by "
      "DP × actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu = 4 × 4"]),
]


@pytest.mark.parametrize("recipe,overrides,fragments", BAD_VALUES, ids=[" ".join(o) for _, o, _ in BAD_VALUES])
def test_bad_values_are_named(configs, recipe, overrides, fragments):
    problems = launch_problems(composed(recipe, overrides))
    assert len(problems) >= 1
    text = "\n".join(problems)
    for fragment in fragments:
        assert fragment in text


def test_vpp_needs_pipeline_parallelism(configs):
    config = composed("mapo_qwen25_omni_7b_megatron", [
        "+actor_rollout_ref.actor.megatron.virtual_pipeline_model_parallel_size=2",
        "actor_rollout_ref.actor.megatron.pipeline_model_parallel_size=1"])
    assert any("virtual_pipeline_model_parallel_size=2 needs" in p for p in launch_problems(config))


def test_all_problems_are_reported_together(configs):
    config = composed("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.rollout.tensor_model_parallel_size=3",
                                                   "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5"])
    assert len(launch_problems(config)) == 2


def test_good_neighbours_pass(configs):
    """Other valid layouts of the same recipes are accepted (the checker is not stricter than veRL)."""
    for recipe, overrides in [
        ("mapo_qwen25_omni_7b_megatron", ["trainer.nnodes=4"]),
        ("mapo_qwen25_omni_7b_megatron", ["+actor_rollout_ref.actor.megatron.virtual_pipeline_model_parallel_size=2"]),
        ("mapo_qwen3_omni_30b_a3b_megatron", ["actor_rollout_ref.actor.megatron.expert_model_parallel_size=16"]),
        ("mapo_qwen25_omni_3b_fsdp", ["actor_rollout_ref.actor.use_dynamic_bsz=true",
                                      "actor_rollout_ref.actor.ppo_max_token_len_per_gpu=4096",
                                      "actor_rollout_ref.rollout.log_prob_use_dynamic_bsz=true",
                                      "actor_rollout_ref.ref.log_prob_use_dynamic_bsz=true"]),
    ]:
        assert launch_problems(composed(recipe, overrides)) == [], (recipe, overrides)


def test_the_cpu_demo_recipe_passes_the_checker():
    if not (RECIPES / "grpo_tiny_cpu.yaml").exists():
        pytest.skip("the CPU demo recipe is not in this checkout")
    assert launch_problems(composed("grpo_tiny_cpu")) == []


def test_cluster_gpu_check():
    config = composed("mapo_qwen25_omni_7b_megatron")
    assert cluster_problems(config, [8.0, 8.0]) == []
    assert cluster_problems(config, [8.0, 8.0, 0.0]) == []
    (problem,) = cluster_problems(config, [8.0, 4.0, 4.0])
    assert "trainer.nnodes=2 nodes with trainer.n_gpus_per_node=8 GPUs" in problem and "has 1 such node" in problem


def test_checker_command_line(capsys):
    assert check_main(["--config-path", str(RECIPES), "--config-name", "mapo_qwen25_omni_3b_fsdp"]) == 0
    assert "mapo_qwen25_omni_3b_fsdp: consistent" in capsys.readouterr().out
    assert check_main(["--config-path", str(RECIPES), "--config-name", "mapo_qwen25_omni_3b_fsdp",
                       "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=5"]) == 1
    assert "ppo_micro_batch_size_per_gpu=5 must divide" in capsys.readouterr().err


def test_main_ppo_rejects_bad_sizes_before_ray_starts(tmp_path):
    out = subprocess.run([sys.executable, "-m", "verl.trainer.main_ppo", "--config-path", str(RECIPES),
                          "--config-name", "mapo_qwen25_omni_7b_megatron", "trainer.n_gpus_per_node=6"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)  # hydra writes outputs/ there
    assert out.returncode != 0
    assert "inconsistent launch config (checked before Ray starts)" in out.stderr
    assert "data-parallel size 3" in out.stderr
    assert "ray init kwargs" not in out.stdout


# ------------------------------------------------------------------------------- launch scripts


@pytest.fixture
def fake_python(tmp_path):
    """A stand-in for MAPO_PYTHON that records its arguments instead of running anything."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "python"
    stub.write_text(f'#!/usr/bin/env bash\necho "$*" >> {log}\n')
    stub.chmod(0o755)
    return stub, log


def test_single_node_script_runs_main_ppo_on_one_node(fake_python):
    stub, log = fake_python
    env = {**os.environ, "MAPO_PYTHON": str(stub), "N_GPUS": "4"}
    subprocess.run(["bash", str(RECIPES / "launch" / "single_node.sh"), "mapo_qwen25_omni_3b_fsdp", "data.seed=1"],
                   env=env, check=True, timeout=60)
    (call,) = log.read_text().splitlines()
    assert call == (f"-m verl.trainer.main_ppo --config-path {RECIPES} --config-name mapo_qwen25_omni_3b_fsdp "
                    "trainer.nnodes=1 trainer.n_gpus_per_node=4 data.seed=1")


def test_multi_node_script_checks_the_cluster_then_launches(fake_python):
    stub, log = fake_python
    env = {**os.environ, "MAPO_PYTHON": str(stub), "MAPO_SHIP": "installed", "RAY_ADDRESS": "10.0.0.1:6379"}
    subprocess.run(["bash", str(RECIPES / "launch" / "multi_node.sh"), "mapo_qwen25_omni_7b_megatron", "data.seed=1"],
                   env=env, check=True, timeout=60)
    check, launch = log.read_text().splitlines()
    assert check == (f"-m mapo_verl.verl_ext.recipe_checks --config-path {RECIPES} --config-name "
                     "mapo_qwen25_omni_7b_megatron --ray-address 10.0.0.1:6379 data.seed=1")
    assert launch == (f"-m verl.trainer.main_ppo --config-path {RECIPES} --config-name mapo_qwen25_omni_7b_megatron "
                      "data.seed=1")


def test_ray_scripts_are_valid_bash():
    for script in ("ray_head.sh", "ray_worker.sh", "single_node.sh", "multi_node.sh"):
        subprocess.run(["bash", "-n", str(RECIPES / "launch" / script)], check=True, timeout=30)


def test_multi_node_script_ships_a_py_module_a_ray_worker_can_use(tmp_path):
    """multi_node.sh's default shipping, for real: it stages mapo_verl with pip and passes the directory as the
    runtime_env's py_modules; a fresh process with only that directory on its path (as Ray's py_modules puts it)
    and the recipes' VERL_USE_EXTERNAL_MODULES registers MAPO from the staged copy on `import verl`."""
    log, stage = tmp_path / "calls.log", tmp_path / "stage"
    stub = tmp_path / "python"  # runs pip for real, records every other call
    stub.write_text(f'#!/usr/bin/env bash\nif [ "$1 $2" = "-m pip" ]; then exec {sys.executable} "$@"; fi\n'
                    f'echo "$*" >> {log}\n')
    stub.chmod(0o755)
    env = {**os.environ, "MAPO_PYTHON": str(stub), "MAPO_STAGE_DIR": str(stage)}
    had_build_dir = (RECIPES.parent / "build").exists()
    subprocess.run(["bash", str(RECIPES / "launch" / "multi_node.sh"), "grpo_qwen25_omni_7b_megatron"],
                   env=env, check=True, timeout=300)
    check, launch = log.read_text().splitlines()
    override = f"+ray_kwargs.ray_init.runtime_env.py_modules=['{stage}/mapo_verl']"
    assert check.endswith(override) and launch.endswith(override)
    assert (RECIPES.parent / "build").exists() == had_build_dir  # built from a copy, not in the checkout
    probe = ("import verl, mapo_verl, mapo_verl.patches, mapo_verl.rewards.mcqa, mapo_verl.data.dataset\n"
             "from verl.trainer.ppo.core_algos import get_adv_estimator_fn\n"
             "get_adv_estimator_fn('mapo')\n"
             "print(mapo_verl.__file__, mapo_verl.patches.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(stage), "VERL_USE_EXTERNAL_MODULES": "mapo_verl",
           "VERL_USE_EXTERNAL_PLUGINS": "none"}  # no entry point: the env var alone must load the plugin
    out = subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    package, patches = out.stdout.split()[-2:]
    assert package == str(stage / "mapo_verl" / "__init__.py")
    assert patches == str(stage / "mapo_verl" / "patches" / "__init__.py")
