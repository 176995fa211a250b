"""The layer contract (pyproject's ``[tool.importlinter]``) holds, and catches an upward import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("webapp", "agent", "retrievers", "tools", "prompts")
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(LINT), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def _copy_tree(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    return dst


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    if not LINT.exists():
        pytest.skip("import-linter is not installed (make install adds it)")
    return _copy_tree(tmp_path_factory.mktemp("layers"))


def test_the_repository_keeps_its_layers():
    if not LINT.exists():
        pytest.skip("import-linter is not installed (make install adds it)")
    res = _lint(ROOT)
    assert res.returncode == 0, res.stdout[-3000:]


@pytest.mark.parametrize("module, upward", [
    ("tools/errors.py", "import agent.context"),  # the bottom layer reaching the agent
    ("retrievers/index.py", "from agent import build_graph"),  # retrievers above agent
    ("tools/store.py", "import tools.vision.basic"),  # the kernel reaching an expert
])
def test_an_upward_import_breaks_the_contract(tree, module, upward):
    path = tree / module
    original = path.read_text()
    try:
        path.write_text(original + f"\n\ndef _late() -> None:\n    {upward}  # noqa\n")
        res = _lint(tree)
    finally:
        path.write_text(original)
    assert res.returncode != 0
    name = module.removesuffix(".py").replace("/", ".")
    assert f"- {name} -> " in res.stdout, res.stdout[-3000:]  # the planted line is named
