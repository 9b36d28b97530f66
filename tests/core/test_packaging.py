"""The explicit package list in pyproject.toml covers every package directory."""

import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    package_dirs = config["package-dir"]
    found = set()
    for name, directory in package_dirs.items():
        for init in (ROOT / directory).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / directory)
            found.add(".".join([name, *relative.parts]) if relative.parts else name)
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools].packages"
    assert listed <= found, f"listed but missing: {sorted(listed - found)}"


def test_patches_install_as_mapo_verl_patches():
    import mapo_verl.patches

    assert pathlib.Path(mapo_verl.patches.__file__).parent == ROOT / "patches"
