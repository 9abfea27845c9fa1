"""pyproject.toml lists every package, and kernels/ installs as recsys.kernels."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_directory_is_listed():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "recsys").rglob("__init__.py")}
    missing = found - listed
    assert not missing, f"add these packages to [tool.setuptools] packages in pyproject.toml: {sorted(missing)}"
    assert setuptools["package-dir"]["recsys.kernels"] == "kernels"


def test_kernels_import_as_recsys_kernels():
    import recsys.kernels

    assert Path(recsys.kernels.__file__).resolve().parent == (ROOT / "kernels").resolve()


def test_every_config_is_installed_as_package_data():
    import fnmatch

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"]["recsys.configs"] == "configs" and "recsys.configs" in setuptools["packages"]
    patterns = setuptools["package-data"]["recsys.configs"]
    configs = [p.relative_to(ROOT / "configs").as_posix() for p in (ROOT / "configs").rglob("*.yaml")]
    missed = [c for c in configs if not any(fnmatch.fnmatch(c, p) and c.count("/") == p.count("/") for p in patterns)]
    assert configs and not missed, f"add patterns for {missed} to [tool.setuptools.package-data] in pyproject.toml"
