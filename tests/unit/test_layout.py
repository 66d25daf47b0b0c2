"""The layers import one way, and modules stay small enough to read in one sitting."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"events", "projections", "service", "devdb", "bench", "tests"}
# What each package may import of ours (besides itself).
ALLOWED = {"events": set(), "projections": {"events"}, "devdb": set(), "service": {"*"}}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_layers_import_one_way(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        others = imports_of(path) - {package}
        if "*" not in ALLOWED[package]:
            assert others <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {others}"
        else:
            assert "tests" not in others and "bench" not in others, path


def test_only_entry_points_import_the_service() -> None:
    for package in ("events", "projections", "devdb"):
        for path in (ROOT / package).rglob("*.py"):
            assert "service" not in imports_of(path), path


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_no_module_over_400_lines(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        lines = len(path.read_text(encoding="utf-8").splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"
