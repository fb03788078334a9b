"""The layers of binserve/ as its imports show them: no module imports one that imports it back.

Every import counts, those under TYPE_CHECKING or inside functions too: a cycle hidden there is
still two modules that cannot be read, tested or replaced one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "binserve"


def imports() -> dict[str, set[str]]:
    """binserve's modules, each with the binserve modules it imports."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    found: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names.update([node.module.split(".")[0]] if node.module else (a.name for a in node.names))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("binserve."):
                names.add((node.module or "").split(".")[1])
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("binserve."))
        found[path.stem] = names & modules
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle found by a depth-first walk, as the chain of modules that closes it."""
    found: list[list[str]] = []
    done: set[str] = set()

    def visit(module: str, chain: list[str]) -> None:
        if module in chain:
            found.append([*chain[chain.index(module) :], module])
            return
        if module in done:
            return
        for imported in sorted(graph[module]):
            visit(imported, [*chain, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    return found


def test_no_import_cycle_in_binserve() -> None:
    assert cycles(imports()) == []


def test_the_walk_finds_a_cycle() -> None:
    assert cycles({"core": {"worker"}, "worker": {"core"}}) == [["core", "worker", "core"]]


def test_the_serving_loop_knows_nothing_above_it() -> None:
    assert not imports()["core"] & {"worker", "master", "emperor", "cli"}
