"""The import graph: every import in `dc` (module-level and inside functions) points down the layers, and there is
no cycle between modules.

Layers, bottom up: constants/utils ← models ← data ← training, eval, export (siblings: eval and export may use
training's checkpoint code, training uses neither) ← lit_module ← pipeline, chat ← bench, experiments. Checked by parsing every
`dc/**/*.py` with `ast` (so lazy imports count too) and resolving each imported name to a module of `dc`.
"""

from __future__ import annotations

import ast
from pathlib import Path

from dc_testing import ROOT

LAYER = {
    "dc": 0, "dc.constants": 0, "dc.utils": 0,
    "dc.models": 1,
    "dc.data": 2,
    "dc.training": 3, "dc.eval": 3, "dc.export": 3,
    "dc.lit_module": 4,
    "dc.pipeline": 5, "dc.chat": 5,
    "dc.bench": 6, "dc.experiments": 6,
}  # fmt: skip
SIBLINGS_ALLOWED = {("dc.eval", "dc.training"), ("dc.export", "dc.training")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in (ROOT / "dc").rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The `dc` modules `name` imports (resolved to the longest known module name)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            if not target.startswith("dc"):
                continue
            parts = target.split(".")
            for k in range(len(parts), 0, -1):
                candidate = ".".join(parts[:k])
                if candidate in known:
                    if candidate != name:
                        out.add(candidate)
                    break
    return out


def _layer_of(module: str) -> tuple[str, int]:
    for k in range(len(module.split(".")), 0, -1):
        prefix = ".".join(module.split(".")[:k])
        if prefix in LAYER:
            return prefix, LAYER[prefix]
    raise AssertionError(f"module {module} has no layer")


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    known = set(mods)
    return {name: _imports(name, path, known) for name, path in mods.items()}


def test_every_import_points_down() -> None:
    upward = []
    for module, deps in _graph().items():
        group, layer = _layer_of(module)
        if module == "dc":
            continue
        for dep in deps:
            dep_group, dep_layer = _layer_of(dep)
            if dep_layer > layer or (
                dep_layer == layer and dep_group != group and (group, dep_group) not in SIBLINGS_ALLOWED
            ):
                upward.append(f"{module} -> {dep}")
    assert not upward, "imports that point up or sideways:\n" + "\n".join(sorted(upward))


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if dep.startswith(node + ".") or node.startswith(dep + "."):
                continue  # a package and its own submodules (re-exports in __init__) are one unit
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep] if dep in stack else [node, dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_check_sees_lazy_imports() -> None:
    """A function-level import counts (the pipeline imports the eval runner inside `evaluate`)."""
    assert "dc.eval.runner" in _graph()["dc.pipeline"]
