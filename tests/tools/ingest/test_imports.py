"""tools.ingest imports only the public names of its own modules, and at module level.

The split of the loader by format ended a cycle that function-level imports of private
helpers had hidden (loader <-> volume). These checks read the modules' source with ``ast``, so
a new private import across modules, or a function-level import of a medloop module made to
dodge a cycle, fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tools.ingest

PACKAGE = Path(tools.ingest.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))
# The one function-level import of medloop modules allowed: ``ingest_path`` loads the readers
# on first use, so that the decoder child (which imports ``tools.ingest.guard`` only, and so
# this file) starts light. It is import cost, not a cycle.
DEFERRED = {("__init__.py", "tools.ingest.loader"), ("__init__.py", "tools.planes")}


def _imports(tree: ast.Module) -> list[tuple[ast.ImportFrom | ast.Import, bool]]:
    """Every import statement, and whether it sits inside a function."""
    found: list[tuple[ast.ImportFrom | ast.Import, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, in_function))
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(tree, False)
    return found


def _medloop(module: str) -> bool:
    return module.split(".")[0] in ("tools", "agent", "retrievers", "prompts", "webapp")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_private_names_imported_from_other_modules(path: Path) -> None:
    tree = ast.parse(path.read_text())
    own = f"tools.ingest.{path.stem}"
    aliases: set[str] = set()  # names bound to medloop modules: ``import tools.ingest.x as x``
    for node, _ in _imports(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _medloop(node.module):
            private = [a.name for a in node.names if a.name.startswith("_")]
            assert node.module == own or not private, f"{path.name} imports {private} from {node.module}"
        elif isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if _medloop(a.name))
    for node in ast.walk(tree):  # ``module._private`` through an imported medloop module
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = ast.unparse(node.value)
            assert base not in aliases, f"{path.name} uses {base}.{node.attr}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_medloop_modules_are_imported_at_module_level(path: Path) -> None:
    tree = ast.parse(path.read_text())
    for node, in_function in _imports(tree):
        if not in_function:
            continue
        modules = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                   else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
        for module in filter(_medloop, modules):
            assert (path.name, module) in DEFERRED, (
                f"{path.name}:{node.lineno} imports {module} inside a function")


def test_the_checks_see_a_private_import() -> None:
    """The checks above would catch the imports the loader <-> volume cycle was made of."""
    tree = ast.parse("def f():\n    from tools.ingest import loader\n    loader._floats(1)\n"
                     "from tools.ingest.loader import _one_line\n")
    imported = [(n.module, [a.name for a in n.names], inside) for n, inside in _imports(tree)
                if isinstance(n, ast.ImportFrom)]
    assert imported == [("tools.ingest", ["loader"], True),
                        ("tools.ingest.loader", ["_one_line"], False)]
