"""The package's shape: modules import one another one way only (no import cycle), and each layer of the flow
uses only the layers beneath it."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# Files -> decoded tensors (preprocess) -> embeddings (models) -> stored rows and vectors (storage), driven by ingest;
# search reads storage and models. The API (library), the CLI and the UI sit on top. What each layer must not import:
ABOVE = {
    "preprocess": {"models", "storage", "ingest", "search", "library", "cli", "app"},
    "models": {"storage", "ingest", "search", "library", "cli", "app"},
    "storage": {"models", "ingest", "search", "library", "cli", "app"},
    "ingest": {"search", "library", "cli", "app"},
    "search": {"ingest", "library", "cli", "app"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in ((REPO / "lbsearch", "lbsearch"), (REPO / "app", "lbsearch.app")):
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts))
            found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The lbsearch modules ``path`` imports when it is imported (not inside functions or TYPE_CHECKING)."""
    imported = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lbsearch"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                imported.add(child if child in modules else node.module)
        elif isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names if alias.name.startswith("lbsearch")}
    return {name for name in imported if name in modules}


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    state: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_each_layer_uses_only_the_layers_beneath_it() -> None:
    modules = _modules()
    backwards = []
    for name, path in modules.items():
        stage = name.split(".")[1] if name.count(".") else ""
        for target in _imports(path, modules):
            target_stage = target.split(".")[1] if target.count(".") else ""
            if target_stage in ABOVE.get(stage, ()):
                backwards.append(f"{name} imports {target}")
    assert not backwards, backwards
