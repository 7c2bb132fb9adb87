"""Imports flow one way, rl -> envs -> rewards -> tools: a lower layer never imports a higher
one (at module level or inside a function), so shared types live where lower layers reach them."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["rl", "envs", "rewards", "tools"]  # each may import only the ones after it


def imported_packages(file: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(file.read_text(), str(file))):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("layer", LAYERS[1:])
def test_a_lower_layer_never_imports_a_higher_one(layer):
    higher = set(LAYERS[: LAYERS.index(layer)])
    bad = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & higher) for f in (ROOT / layer).rglob("*.py")}
    assert not {f: b for f, b in bad.items() if b}
