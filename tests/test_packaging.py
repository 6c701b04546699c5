"""A non-editable ``pip install .`` ships the whole package: subpackages, the op schema and the
built-in rules (which live in the top-level rules/ folder)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def declared_packages() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_subpackage_is_declared():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "graphopt").rglob("__init__.py")}
    assert found <= set(declared_packages()), f"add to pyproject packages: {found - set(declared_packages())}"


@pytest.mark.slow
def test_wheel_contains_schema_and_builtin_rules(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(ROOT)], check=True)
    wheel = next(tmp_path.glob("graphopt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "graphopt/schema/mxnet_ops.json" in names
    rule_files = sorted(p.name for p in (ROOT / "rules").glob("*.toml"))
    assert rule_files, "no built-in rule files found in rules/"
    for rule_file in rule_files:
        assert f"graphopt/builtin_rules/{rule_file}" in names
