"""Packaging: the explicit package list in pyproject.toml, its package data, and the built wheel."""

import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def _data_only_packages() -> set[str]:
    """Listed packages that carry only data (no ``__init__.py``): ``mapo_verl.recipes``."""
    return {name for name in SETUPTOOLS["package-data"]
            if not (ROOT / SETUPTOOLS["package-dir"].get(name, name.replace(".", "/")) / "__init__.py").is_file()}


def test_every_package_directory_is_listed():
    listed = set(SETUPTOOLS["packages"])
    found = set()
    for name, directory in SETUPTOOLS["package-dir"].items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            found.add(".".join([name, *relative.parts]) if relative.parts else name)
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools].packages"
    assert listed <= found | _data_only_packages(), f"listed but missing: {sorted(listed - found)}"


def test_package_data_patterns_match_files():
    for name, patterns in SETUPTOOLS["package-data"].items():
        directory = ROOT / SETUPTOOLS["package-dir"].get(name, name.replace(".", "/"))
        for pattern in patterns:
            assert list(directory.glob(pattern)), f"[tool.setuptools.package-data] {name}: {pattern} matches no file"


def test_patches_install_as_mapo_verl_patches():
    import mapo_verl.patches

    assert pathlib.Path(mapo_verl.patches.__file__).parent == ROOT / "patches"


@pytest.mark.slow
def test_wheel_ships_the_recipes_and_the_launcher_finds_them(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info next to the sources
    source = tmp_path / "source"
    for name in ("pyproject.toml", "README.md"):
        source.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, source / name)
    for directory in {*SETUPTOOLS["package-dir"].values()}:
        shutil.copytree(ROOT / directory, source / directory, ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("mapo_verl-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "site")
    recipes = {path.relative_to(ROOT).as_posix() for pattern in SETUPTOOLS["package-data"]["mapo_verl.recipes"]
               for path in (ROOT / "recipes").glob(pattern)}
    assert recipes and {f"mapo_verl/{name}" for name in recipes} <= names
    assert "mapo_verl/patches/agent_loop.py" in names and "mapo_verl/core/contract.py" in names
    # the installed launcher (no site-packages, no checkout on the path) finds the shipped recipes
    probe = subprocess.run(
        [sys.executable, "-S", "-c", "from mapo_verl.demo.launch import default_recipes_dir; print(default_recipes_dir())"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site")})
    assert probe.returncode == 0, probe.stderr
    assert pathlib.Path(probe.stdout.strip()) == tmp_path / "site" / "mapo_verl" / "recipes"


def test_one_verl_version_everywhere():
    """recipes/REQUIRED_VERL.txt (the verl-recipe convention), the dependency pin and the patches' pin agree."""
    import re

    from mapo_verl.patches import TESTED_VERL_VERSION

    required = (ROOT / "recipes" / "REQUIRED_VERL.txt").read_text().split()
    assert required == [f"verl=={TESTED_VERL_VERSION}"]
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = [re.sub(r"\[.*\]", "", dep) for dep in dependencies if re.match(r"verl\b", dep)]
    assert pins == [f"verl=={TESTED_VERL_VERSION}"]
