"""Every sub-package of the source tree is installed: pyproject.toml's ``packages`` list (the
package-dir mapping installs passes/ and targets/ as mcopt.passes / mcopt.targets, which
setuptools' automatic discovery cannot express) names each directory that has an ``__init__.py``,
so a new sub-package cannot silently be left out of the wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_every_subpackage_is_listed_in_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (CI's); 3.10 skips
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    found: set[str] = set()
    for pkg, where in conf["package-dir"].items():
        base = ROOT / where
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base).parts
            found.add(".".join((pkg, *rel)))
    missing = sorted(found - listed)
    assert not missing, f"add to pyproject.toml [tool.setuptools] packages: {missing}"
    stale = sorted(listed - found)
    assert not stale, f"pyproject.toml lists packages that do not exist: {stale}"
