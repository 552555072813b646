"""The package's layout rules, read from its imports (every import counts: module level, inside
functions, and under ``TYPE_CHECKING``):

- no import cycle between modules (a package imported by name, ``from dasd.report import data``,
  counts as an import of its ``__init__``);
- no stage driver imports another (shared run helpers live in ``dasd.runs``);
- ``dasd.config`` reaches no stage driver, even indirectly;
- the pure rule modules (``dasd.rules``, ``dasd.text``) import only other rules, the record and
  config bases, errors and the tokenizer byte-offset helpers: no store, no engines, no drivers;
- every registered stage has exactly one driver module in ``dasd/stages/`` and every driver module
  is registered;
- no test imports a ``conftest`` by its absolute name (``from .conftest`` in a test package is
  fine): pytest loads the conftest.py of each folder without ``__init__.py`` as a module named
  ``conftest``, so which one such an import finds depends on the tests collected before it (share
  a helper through a fixture, or a plain module beside the tests).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from dasd import registry

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "dasd"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The module ``name`` refers to (itself, or the closest enclosing module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Every dasd module that ``module`` imports, anywhere in its source."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for n in names:
            if n == "dasd" or n.startswith("dasd."):
                target = _resolve(n)
                if target:
                    found.add(target)
    found.discard(module)
    found.discard("dasd")  # the root __init__ only holds the version
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


def test_the_walker_sees_function_level_and_type_checking_imports():
    # negative controls: imports that only happen inside a function or under TYPE_CHECKING
    assert "dasd.toy.build" in GRAPH["dasd.runs"]  # inside resolve_model
    assert "dasd.config" in GRAPH["dasd.stages.sample"]  # under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert "dasd.report.plots" in GRAPH["dasd.report.data"]  # `from dasd.report import plots`


def test_no_import_cycles():
    assert cycles(GRAPH) == []


def test_no_stage_driver_imports_another():
    bad = [(m, t) for m, ts in GRAPH.items() if m.startswith("dasd.stages.")
           for t in ts if t.startswith("dasd.stages.") and t != m]
    assert bad == []


def test_config_reaches_no_stage_driver():
    assert sorted(t for t in reachable(GRAPH, "dasd.config") if t.startswith("dasd.stages")) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(("dasd.rules.", "dasd.text."))))
def test_rule_modules_import_only_rules(module):
    # dasd.engines.offsets: pure byte arithmetic over a tokenizer's tokens (no model, no files)
    allowed = ("dasd.rules", "dasd.text", "dasd.records", "dasd.configbase", "dasd.errors", "dasd.engines.offsets")
    assert sorted(t for t in GRAPH[module] if not t.startswith(allowed)) == []


def test_one_driver_per_registered_stage():
    drivers = {m for m in MODULES if m.startswith("dasd.stages.") and m != "dasd.stages"}
    registered = {s.driver.partition(":")[0] for s in registry.STAGES}
    assert drivers == registered
    assert len(registered) == len(registry.STAGES)
    for s in registry.STAGES:
        assert callable(s.load()), s.name


def test_run_order_trains_again_after_mix():
    names = [s.name for s in registry.run_order()]
    assert names == ["sample", "filter", "score", "select", "train", "mix", "train", "eval", "analyze", "report"]


def test_no_test_imports_a_conftest_by_name():
    tests = Path(__file__).resolve().parent
    found = []
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else [
                a.name for a in node.names] if isinstance(node, ast.Import) else []
            found += [f"{path.relative_to(tests)}:{node.lineno}" for n in names if n == "conftest"]
    assert found == []
