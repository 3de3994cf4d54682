"""The package list in pyproject.toml names every stage subpackage (a wheel built from it must import)."""

from __future__ import annotations

import tomllib

from .conftest import REPO


def test_every_subpackage_is_packaged():
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "onnx_onp").rglob("__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert "onnx_onp_cli" in listed
