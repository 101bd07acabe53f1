"""Every module of the package imports on its own, and the module-level imports between them form no circle.

(a) imports each module alone in a fresh interpreter, so a module that only works because another one happened to
be imported first (or that a refactor left with a dangling name) fails here, not in a user's first run.
(b) reads the sources with ``ast`` (nothing is imported) and builds the graph of module-level imports of one
rlvr_temp module by another; a circle there is an import order waiting to break. Imports inside functions and
under ``if TYPE_CHECKING:`` are not part of the graph: they do not run at import time.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import rlvr_temp

PACKAGE = "rlvr_temp"
ROOT = Path(rlvr_temp.__path__[0])

_WALK_ERRORS: list[str] = []
# the package itself, then every submodule and subpackage (walk_packages imports the subpackages to walk them)
IS_PACKAGE: dict[str, bool] = {PACKAGE: True} | {
    m.name: m.ispkg for m in pkgutil.walk_packages(rlvr_temp.__path__, PACKAGE + ".", onerror=_WALK_ERRORS.append)
}
MODULES: list[str] = list(IS_PACKAGE)


def _source_file(name: str) -> Path:
    parts = name.split(".")[1:]
    if IS_PACKAGE[name]:
        return ROOT.joinpath(*parts, "__init__.py")
    return ROOT.joinpath(*parts[:-1], parts[-1] + ".py")


def test_walk_found_every_module() -> None:
    assert not _WALK_ERRORS, f"pkgutil.walk_packages could not import: {_WALK_ERRORS}"
    on_disk = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if all((ROOT / Path(*rel.parts[:i]) / "__init__.py").is_file() for i in range(len(rel.parts))):
            on_disk.add(".".join((PACKAGE, *rel.with_suffix("").parts)).removesuffix(".__init__"))
    assert on_disk == set(MODULES)
    for name in MODULES:
        assert _source_file(name).is_file(), name


# ------------------------------------------------------------------------------------ (a) each module alone
# One interpreter per module: ~0.1-3 s each, 7-10 s for each that imports vLLM; 75-95 s in all on 2 cores, hence slow.
@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_module_imports_alone(name: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", f"import {name}"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"`import {name}` in a fresh interpreter failed:\n{proc.stderr[-4000:]}"


# ------------------------------------------------------------------------------- (b) no module-level circle
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: not inside a function (or lambda), not under
    ``if TYPE_CHECKING:`` (its ``else:`` does run). Class bodies, ``try:`` and other ``if`` blocks count."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
            return
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _targets(importer: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The rlvr_temp modules an import statement names: ``import a.b`` names a.b, ``from a import b`` names a.b
    when that is a module and a otherwise; relative imports resolved against the importer's package."""
    named: set[str] = set()
    if isinstance(node, ast.Import):
        named = {alias.name for alias in node.names}
    else:
        if node.level:
            package = importer if IS_PACKAGE[importer] else importer.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{node.module}" if node.module else package
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            named.add(sub if sub in IS_PACKAGE else base)
    out: set[str] = set()
    own = set(_ancestors(importer))
    for target in named:
        if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
            continue
        assert target in IS_PACKAGE, f"{importer} imports {target}, which is not a module of the package"
        out.add(target)
        # importing a.b.c first runs a.b's __init__; the importer's own parent packages are already under way
        out.update(p for p in _ancestors(target) if p not in own)
    out.discard(importer)
    return out


def _edges(importer: str, source: str) -> set[str]:
    return set().union(*(_targets(importer, node) for node in _module_level_imports(ast.parse(source))))


def import_graph() -> dict[str, set[str]]:
    return {name: _edges(name, _source_file(name).read_text(encoding="utf-8")) for name in MODULES}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` of the graph, or None (iterative depth-first search, sorted for stability)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        path = [start]
        stack = [iter(sorted(graph[start]))]
        colour[start] = GREY
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                colour[path.pop()] = BLACK
                stack.pop()
            elif colour.get(nxt, BLACK) == GREY:
                return [*path[path.index(nxt) :], nxt]
            elif colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def test_find_cycle_itself() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"a"}}) == ["a", "a"]
    assert find_cycle({"x": {"a"}, "a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]


def test_module_level_import_resolution() -> None:
    src = (
        "from typing import TYPE_CHECKING\n"
        "import rlvr_temp.temperature.ttm\n"
        "from rlvr_temp import losses, __version__\n"
        "from . import config\n"
        "from .temperature import window\n"
        "try:\n    from rlvr_temp.data.sources import format_prompt\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from rlvr_temp.learner.policy import Learner\nelse:\n    from rlvr_temp import verify\n"
        "def f():\n    from rlvr_temp.driver.trainer import Trainer\n"
        "class C:\n    from rlvr_temp import metrics\n"
        "import numpy\n"
    )
    assert _edges("rlvr_temp.evaluation.evaluate", src) == {
        "rlvr_temp.temperature.ttm",
        "rlvr_temp.temperature",
        "rlvr_temp.losses",
        "rlvr_temp",
        "rlvr_temp.config.schema",
        "rlvr_temp.temperature.window",
        "rlvr_temp.data.sources",
        "rlvr_temp.reward.verify",
        "rlvr_temp.metrics",
    }
    # inside a subpackage: relative imports resolve against it, and its own __init__ is not an edge
    inner = _edges("rlvr_temp.temperature.token_rule", "from .window import X\nfrom .. import utils\n")
    assert inner == {"rlvr_temp.temperature.window", "rlvr_temp.utils"}
    init = _edges("rlvr_temp.temperature", "from .mixture import a\nfrom . import ttm\n")
    assert init == {"rlvr_temp.temperature.mixture", "rlvr_temp.temperature.ttm"}


def test_no_module_level_import_cycle() -> None:
    graph = import_graph()
    assert set(graph) == set(MODULES)
    assert graph["rlvr_temp.temperature"] >= {"rlvr_temp.temperature.window", "rlvr_temp.temperature.ttm"}
    cycle = find_cycle(graph)
    assert cycle is None, "module-level import circle: " + " -> ".join(cycle)


def test_the_learner_and_the_temperature_package_import_without_ray_or_vllm():
    """The GPU smoke test's first group runs where neither is installed (scripts/gpu_smoke.py)."""
    code = (
        "import sys, rlvr_temp.learner.policy, rlvr_temp.temperature, rlvr_temp.checkpoint; "
        "print(sorted(m for m in ('ray', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
