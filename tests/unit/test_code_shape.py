"""The shape of the studio package, read with `ast` (nothing is imported): no import cycles, no function
longer than a screen, and no benchmark code inside the importable package."""

from __future__ import annotations

import ast
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[2] / "studio"
MAX_FUNCTION_LINES = 60


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(STUDIO.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Every studio module `path` imports, at module level or inside a function (a cycle through a
    function-level import still ties the two modules together)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from studio import templates` imports the module studio.templates
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return (found & modules) - {me}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in STUDIO.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_checker_finds_a_cycle_through_a_function_level_import():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert "studio.jobs.events" in import_graph()["studio.jobs.manager"]


def test_no_import_cycles_in_studio():
    found = cycles(import_graph())
    assert found == [], ("modules that import each other (directly or around a loop): "
                         + "; ".join(" <-> ".join(group) for group in found)
                         + ". Move what both need into a module lower down (as jobs/events.py holds the run-folder "
                           "constants) and import it from there.")


def test_no_function_in_studio_is_longer_than_60_lines():
    long = []
    for path in sorted(STUDIO.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(STUDIO.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == [], f"split these into smaller named steps: {long}"


def test_benchmark_code_lives_outside_the_importable_package():
    assert not (STUDIO / "bench.py").exists() and not (STUDIO / "serving" / "bench.py").exists()
    assert (STUDIO.parent / "benchmarks" / "train_bench.py").is_file()
    assert (STUDIO.parent / "benchmarks" / "serve_bench.py").is_file()
