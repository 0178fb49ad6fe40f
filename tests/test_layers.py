"""The package's layers (docs/architecture.md): no package imports one above it, and no module
imports another that imports it back. Imports are read from the source, at any depth (a function's
lazy import counts), leaving out ``if TYPE_CHECKING:`` blocks."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SOURCE = Path(__file__).parents[1] / "src" / "traitlens"

LAYERS: list[set[str]] = [
    {"errors", "version", "install_weights"},
    {"atomic", "checks", "digests", "lr_schedule", "json_config", "optim_state", "distributed", "cli_args", "splits"},
    {"output_folder", "tables", "overlay", "html_pages"},
    {"progress", "checkpoints"},
    {"sgd_recipe"},
    {"backbones"},
    {"data"},
    {"store"},
    {"heads"},
    {"finetune"},
    {"sae"},
    {"explain", "features", "segment"},
    {"interventions"},
    {"explore"},
    {"specimens"},
    {"demo_report"},
    {"demo"},
    {"report"},
    {"cli", "__init__"},
    {"__main__"},
]
"""Lowest first. A package may import its own modules and those of lower layers only."""


def _module(path: Path) -> str:
    return ".".join(("traitlens", *path.relative_to(SOURCE).with_suffix("").parts)).removesuffix(".__init__")


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (child for other in node.orelse for child in [other, *_runtime_nodes(other)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = [node for node in tree.body if not (isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test))] \
        if top_level_only else list(_runtime_nodes(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "traitlens":
            # ``from traitlens.backbones import hf_provider`` imports a module; ``... import Backbone`` the package
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                         for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "traitlens")
    return found


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = {_module(path): path for path in SOURCE.rglob("*.py")}
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}


def test_every_package_has_a_layer() -> None:
    assert {_package(module) for module in MODULES} <= set(LAYER_OF)


def test_no_package_imports_a_higher_or_sibling_one() -> None:
    wrong = []
    for module, path in MODULES.items():
        for target in _imports(path):
            here, there = _package(module), _package(target)
            if here != there and there in LAYER_OF and LAYER_OF[there] >= LAYER_OF[here]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_import_cycles() -> None:
    graph = {module: {target for target in _imports(path, top_level_only=True) if target in MODULES} for module, path in MODULES.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target):], target]) if target in trail else f"{module} -> {target}")
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
