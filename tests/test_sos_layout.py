"""The `hf_plugins.sos` modules import each other only at module level, and those imports form no cycle (the
certificates <-> Newton-polytope cycle was once dodged with a function-level import; the lattice-point code now lives
in `lattice.py`, below both)."""

import ast
from pathlib import Path

import hf_plugins.sos


PACKAGE = Path(hf_plugins.sos.__file__).parent


def _relative_imports(node) -> list[str]:
    if isinstance(node, ast.ImportFrom) and node.level == 1:
        return [node.module] if node.module else [a.name for a in node.names]
    return []


def test_sibling_imports_are_module_level_and_acyclic():
    graph, nested = {}, []
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text())
        name = path.stem
        graph[name] = {m for node in tree.body for m in _relative_imports(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                nested += [
                    f"{name}.{node.name} imports .{m}" for sub in ast.walk(node) for m in _relative_imports(sub)
                ]
    assert not nested, nested
    # Kahn's algorithm: every module must be placeable after everything it imports
    done: set[str] = set()
    while len(done) < len(graph):
        ready = [m for m, deps in graph.items() if m not in done and deps - {"__init__"} <= done]
        assert ready, f"import cycle among {sorted(set(graph) - done)}"
        done.update(ready)
