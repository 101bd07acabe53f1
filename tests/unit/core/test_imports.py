"""Every module of the package imports on its own, no import statement closes a circle, and the rooms of the
package import one way.

(a) imports each module alone in a fresh interpreter, so a module that only works because another one happened to
be imported first (or that a refactor left with a dangling name) fails here, not in a user's first run.
(b) reads the sources with ``ast`` (nothing is imported) and builds the graph of imports of one rlvr_temp module
by another: once with the module-level imports only (a circle there is an import order waiting to break), once
with every import statement, those inside functions included (a circle there is a design that depends on itself,
hidden by a lazy import). Only imports under ``if TYPE_CHECKING:`` are left out of the second: they never run.
(c) maps every module to its room (a subpackage, or a module directly in ``rlvr_temp/``) and checks that every
import goes down :data:`LAYERS`: the driver over the roles, the roles over the domain, the domain over the core.
"""

from __future__ import annotations

import ast
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
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
# One interpreter per module: ~0.1-3 s each, 7-10 s for each that imports vLLM; about 3.5 min for the 86 modules one
# after another on 2 cores, so they run one per core at a time (each interpreter is single-threaded while it
# imports), and the test is slow.
def _import_alone(name: str) -> str | None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", f"import {name}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    return None if proc.returncode == 0 else f"`import {name}` in a fresh interpreter failed:\n{proc.stderr[-4000:]}"


@pytest.mark.slow
def test_every_module_imports_alone() -> None:
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        failures = [f for f in pool.map(_import_alone, MODULES) if f]
    assert not failures, "\n\n".join(failures)


# ------------------------------------------------------------------------------- (b) no module-level circle
def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.AST, functions: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: not inside a function (or lambda), not under
    ``if TYPE_CHECKING:`` (its ``else:`` does run). Class bodies, ``try:`` and other ``if`` blocks count.
    ``functions``: those inside functions too (every import statement that can run)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if not functions and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
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


def _edges(importer: str, source: str, functions: bool = False) -> set[str]:
    nodes = _module_level_imports(ast.parse(source), functions)
    return set().union(*(_targets(importer, node) for node in nodes))


def import_graph(functions: bool = False) -> dict[str, set[str]]:
    """Module -> the modules it imports (``functions``: inside functions too)."""
    return {name: _edges(name, _source_file(name).read_text(encoding="utf-8"), functions) for name in MODULES}


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
        "try:\n    from rlvr_temp.data.sources import load_prompts\nexcept ImportError:\n    pass\n"
        "if TYPE_CHECKING:\n    from rlvr_temp.learner.learner import Learner\n"
        "else:\n    from rlvr_temp.reward import verify\n"
        "def f():\n    from rlvr_temp.driver.trainer import Trainer\n"
        "class C:\n    from rlvr_temp import metrics\n"
        "import numpy\n"
    )
    module_level = {
        "rlvr_temp.temperature.ttm",
        "rlvr_temp.temperature",
        "rlvr_temp.losses",
        "rlvr_temp",
        "rlvr_temp.config",
        "rlvr_temp.temperature.window",
        "rlvr_temp.data.sources",
        "rlvr_temp.data",  # importing a subpackage's module runs its __init__ first
        "rlvr_temp.reward.verify",
        "rlvr_temp.reward",
        "rlvr_temp.metrics",
    }
    assert _edges("rlvr_temp.cli", src) == module_level
    # every import that can run: the function's too, never the TYPE_CHECKING one
    everything = module_level | {"rlvr_temp.driver.trainer", "rlvr_temp.driver"}
    assert _edges("rlvr_temp.cli", src, functions=True) == everything
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


def test_no_import_cycle_counting_imports_inside_functions() -> None:
    cycle = find_cycle(import_graph(functions=True))
    assert cycle is None, "import circle (imports inside functions included): " + " -> ".join(cycle)


# ------------------------------------------------------------------------------- (c) rooms import one way
#: the package's rooms from the top down: a room imports only rooms of later layers, never one of its own layer
#: or an earlier one. A room is a subpackage (rlvr_temp/driver/ ...) or a module directly in rlvr_temp/.
LAYERS: list[set[str]] = [
    {"cli"},  # the entry point: every command
    {"driver"},  # the driver process: the loop, actors' placement and recovery, sweeps
    {"evaluation"},  # offline: evaluate (starts an engine), compare, report
    {"engine", "learner"},  # the rollout actor and vLLM's worker processes; the learner's ranks
    {"weights"},  # weight sync: the driver's handle, the learner's sender, the engine's receiver
    {"data", "metrics", "checkpoint"},  # prompts and models; rollout metrics; checkpoints
    {"batch", "config"},  # the typed batch; the recipe schema
    {"temperature", "reward", "losses"},  # temperature strategies and the wire format; verifier; loss registries
    {"utils", "benign_logs"},
]
RANK = {room: i for i, layer in enumerate(LAYERS) for room in layer}


def room(module: str) -> str:
    """``rlvr_temp.engine.worker`` -> ``engine``; ``rlvr_temp.utils`` -> ``utils``; the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_room_has_a_layer() -> None:
    assert {room(m) for m in MODULES} - {""} == set(RANK)


def test_rooms_import_one_way() -> None:
    """Every import statement, those inside functions included, goes from a room to one in a later layer."""
    wrong = []
    for importer, targets in import_graph(functions=True).items():
        for target in targets:
            a, b = room(importer), room(target)
            if a and b and a != b and RANK[a] >= RANK[b]:
                wrong.append(f"{importer} -> {target} ({a}: layer {RANK[a]}, {b}: layer {RANK[b]})")
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_the_driver_imports_neither_vllm_nor_bitsandbytes():
    """The driver process starts actors; vLLM and bitsandbytes load in the actors that use them (and only there
    print what they print at import)."""
    code = (
        "import sys, rlvr_temp.cli, rlvr_temp.driver.trainer, rlvr_temp.driver.sweep, rlvr_temp.driver.demo; "
        "print(sorted(m for m in ('vllm', 'bitsandbytes') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_the_learner_and_the_temperature_package_import_without_ray_or_vllm():
    """The GPU smoke test's first group runs where neither is installed (scripts/gpu_smoke.py)."""
    code = (
        "import sys, rlvr_temp.learner.learner, rlvr_temp.temperature, rlvr_temp.checkpoint; "
        "print(sorted(m for m in ('ray', 'vllm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ------------------------------------------------------------------------------------- (d) the house's shape
def test_the_readme_map_names_every_room() -> None:
    """README.md's layout map lists every subpackage and every module directly in rlvr_temp/."""
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Layout", 1)[1].split("```")[1]
    rooms = {room(m) for m in MODULES} - {""}
    names = {r + ("/" if IS_PACKAGE[f"{PACKAGE}.{r}"] else ".py") for r in rooms}
    assert not sorted(n for n in names if n not in block), "rooms missing from README.md's Layout"


def test_a_small_core_and_no_module_over_400_lines() -> None:
    top = [m for m in MODULES if m.count(".") == 1 and not IS_PACKAGE[m]]
    assert len(top) <= 7, f"modules directly in rlvr_temp/ besides __init__: {top}"
    long = {m: n for m in MODULES if (n := len(_source_file(m).read_text(encoding="utf-8").splitlines())) > 400}
    assert not long, f"modules over 400 lines: {long}"
