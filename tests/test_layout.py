"""The package's shape: rooms without import cycles, frontends that never import each other's
framework, and the old import paths kept working through one alias table.

The import graph is read from the source (every ``import`` and ``from … import``, at module
level and inside functions, ``TYPE_CHECKING`` blocks excepted), so a cycle hidden by a lazy import
counts too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cuttree._aliases import MOVED, MOVED_NAMES

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted((SRC / "cuttree").rglob("*.py"))}


def imported(path: Path, package: str, top_level: bool = False) -> set[str]:
    """Every module name ``path`` imports: ``from a import b`` gives ``a.b`` where that is a cuttree
    module (loading ``a`` first is Python's doing, not a dependency), else ``a``; with the names
    too, as ``a.b``, for the alias checks. ``top_level``: the imports that run when the module loads
    (not those inside functions)."""
    found: set[str] = set()

    def visit(nodes: list[ast.AST]) -> None:
        for n in nodes:
            if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test):
                continue
            if isinstance(n, ast.Import):
                found.update(a.name for a in n.names)
            elif isinstance(n, ast.ImportFrom):
                base = n.module or ""
                if n.level:
                    parts = package.split(".")[: len(package.split(".")) - n.level + 1]
                    base = ".".join([*parts, *([n.module] if n.module else [])])
                subs = {f"{base}.{a.name}" for a in n.names}
                found.update(subs)
                if not subs <= MODULES.keys():
                    found.add(base)
            if not (top_level and isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)):
                visit(list(ast.iter_child_nodes(n)))

    visit(ast.parse(path.read_text()).body)
    return found


def package_of(name: str, path: Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


IMPORTS = {name: imported(path, package_of(name, path)) for name, path in MODULES.items()}
LOADS = {name: imported(path, package_of(name, path), top_level=True) for name, path in MODULES.items()}
GRAPH = {name: {m for m in found if m in MODULES and m != name} for name, found in IMPORTS.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reachable(start: str) -> set[str]:
    seen, todo = {start}, [start]
    while todo:
        for w in GRAPH[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_import_graph_has_no_cycle() -> None:
    assert len(GRAPH) == len(MODULES) > 80
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("room", "foreign"), [("torch", "keras"), ("keras", "torch")])
def test_a_frontend_never_imports_the_other_framework(room: str, foreign: str) -> None:
    """Through any chain of cuttree modules, frontends/torch never reaches keras or the Keras
    frontend, and frontends/keras never reaches torch or the torch frontend. The one exception is
    Keras's own torch backend: a function of the Keras frontend may import torch to reach the
    backend's tensors (gradients), so only what a module imports when it loads is checked there."""
    prefix = f"cuttree.frontends.{room}"
    mine = [m for m in MODULES if m == prefix or m.startswith(prefix + ".")]
    assert len(mine) > 5
    for start in mine:
        for m in reachable(start):
            assert not m.startswith(f"cuttree.frontends.{foreign}"), f"{start} reaches {m}"
            found = LOADS[m] if room == "keras" else IMPORTS[m]
            bad = sorted(i for i in found if i == foreign or i.startswith(foreign + "."))
            assert not bad, f"{start} reaches {m}, which imports {bad}"


def test_cuttree_itself_imports_no_old_path() -> None:
    files = [*MODULES.values(), *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").rglob("*.py")]
    hits = []
    for path in files:
        if path.name in ("test_layout.py", "_aliases.py"):
            continue
        for name in imported(path, "cuttree"):
            old_name = tuple(name.rsplit(".", 1)) in MOVED_NAMES
            if name in MOVED or old_name:
                hits.append(f"{path.relative_to(ROOT)}: {name}")
    assert hits == []


def test_every_old_path_imports_with_a_deprecation_warning() -> None:
    """In a fresh interpreter (a stand-in warns once, when first imported): every moved module
    imports under its old name and serves its new module's names; every moved name is served by
    its old module. Each warns, naming the path to use."""
    code = """
import importlib, json, warnings
from cuttree._aliases import MOVED, MOVED_NAMES
out = {}
for old, new in sorted({**MOVED, **{f"{m}:{n}": t for (m, n), t in MOVED_NAMES.items()}}.items()):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if ":" in old:
            module, name = old.split(":")
            same = getattr(importlib.import_module(module), name) is getattr(importlib.import_module(new), name)
        else:
            stand_in, real = importlib.import_module(old), importlib.import_module(new)
            public = [n for n in vars(real) if not n.startswith("_")]
            same = bool(public) and all(getattr(stand_in, n) is getattr(real, n) for n in public)
    deprecations = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    out[old] = [same, deprecations]
print(json.dumps(out))
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout)
    assert len(result) == len(MOVED) + len(MOVED_NAMES)
    for old, (same, deprecations) in result.items():
        new = MOVED.get(old) or MOVED_NAMES[tuple(old.split(":"))]  # type: ignore[index]
        assert same, f"{old} does not serve {new}'s names"
        assert len(deprecations) == 1 and new in deprecations[0], (old, deprecations)
