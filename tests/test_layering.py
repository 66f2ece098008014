"""The package layering of docs/architecture.md holds: who may import whom."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
INTERNAL = {"edge", "firmware_bridge", "provisioning", "simulators"}
ALLOWED = {
    "provisioning": set(),
    "firmware_bridge": set(),
    "edge": {"provisioning", "firmware_bridge"},
    "simulators": {"edge", "provisioning", "firmware_bridge"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & INTERNAL


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package: str) -> None:
    for module in sorted((ROOT / package).glob("*.py")):
        others = imported_packages(module) - {package}
        assert others <= ALLOWED[package], f"{module.relative_to(ROOT)} imports {others}"
