"""The map of the code (docs/architecture.md) names every module, and the inference side imports no training code."""

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "palette"
MAP = (SOURCE.parents[1] / "docs" / "architecture.md").read_text()
INFERENCE = ("sampling", "api", "model", "conditions", "panorama", "evaluate", "sampling_options")
TRAINING = {"train", "strategy", "distill", "sharding", "training_data", "loader_workers", "stop_signals", "bench"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_at_module_level(path: Path) -> set[str]:
    """The palette modules ``path`` imports when it is imported (relative imports at the top level)."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)]
            if node.module:
                found.add(".".join([*base, node.module]))
            else:
                found.update(".".join([*base, alias.name]) for alias in node.names)
    return found


GRAPH = {_module_name(p): _imported_at_module_level(p) for p in SOURCE.rglob("*.py")}


def _reached(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        for dependency in GRAPH.get(todo.pop(), ()):
            if dependency in GRAPH and dependency not in seen:
                seen.add(dependency)
                todo.append(dependency)
    return seen


@pytest.mark.parametrize("path", sorted(SOURCE.rglob("*.py")), ids=lambda p: str(p.relative_to(SOURCE)))
def test_the_map_of_the_code_names_every_module(path):
    assert f"`{path.relative_to(SOURCE)}`" in MAP, f"docs/architecture.md does not say what {path.name} holds"


@pytest.mark.parametrize("module", INFERENCE)
def test_sampling_and_evaluation_import_no_training_code(module):
    assert _reached(module) & TRAINING == set()


def test_the_import_graph_is_read_whole():
    """The check above would pass on an empty graph: it must see sampling reach the model and the model the UNet."""
    assert {"model", "unet", "diffusion", "conditions"} <= _reached("sampling")
