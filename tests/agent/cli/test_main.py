"""The ``medloop`` parser, ``main``'s exit codes, and the package's import structure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import agent.cli
from agent.cli import main as package_main
from agent.cli.main import build_parser, main
from agent.cli.options import BadInput

ROOT = Path(__file__).resolve().parents[3]


def test_the_entry_point_is_main_with_every_command():
    assert package_main is main and agent.cli.__all__ == ["main"]
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert list(sub.choices) == ["ask", "inspect", "deid", "models", "app", "index", "library",
                                 "eval", "pacs", "mcp"]


def test_exit_codes(monkeypatch, capsys):
    from tools.errors import MedloopError

    def raising(exc):
        def run(args):
            raise exc
        return run

    def run_with(exc):
        monkeypatch.setattr("agent.cli.models.cmd_models", raising(exc))
        # the parser binds ``func`` when it is built: rebuild it with the replaced command
        return main(["models"])

    assert run_with(BadInput("bad thing")) == 2
    assert capsys.readouterr().err == "medloop: bad thing\n"
    assert run_with(KeyboardInterrupt()) == 130
    assert run_with(MedloopError("a named failure")) == 1
    assert capsys.readouterr().err.endswith("medloop: a named failure\n")
    monkeypatch.delenv("MEDLOOP_DEBUG", raising=False)
    assert run_with(ZeroDivisionError("oops")) == 1
    err = capsys.readouterr().err
    assert err == "medloop: internal error (ZeroDivisionError): oops\n"  # no traceback
    monkeypatch.setenv("MEDLOOP_DEBUG", "1")
    assert run_with(ZeroDivisionError("oops")) == 1
    assert "Traceback" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["no-such-command"])


@pytest.mark.parametrize("first", ["agent.cli.eval", "agent.cli.ask", "agent.cli.options"])
def test_each_command_module_imports_on_its_own(first):
    """No cycle: a subcommand module imported first (before ``main``) loads cleanly."""
    code = f"import {first}; import agent.cli.main; print('ok')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr


def test_python_dash_m_agent_cli(tmp_path):
    run = subprocess.run([sys.executable, "-m", "agent.cli", "--help"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0 and "medloop" in run.stdout and run.stderr == ""


def _imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at any level (function-level imports included)."""
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_no_command_module_imports_another_but_options():
    """Subcommands import ``options`` only; ``main`` imports the subcommands."""
    for path in (ROOT / "agent" / "cli").glob("*.py"):
        if path.name in ("main.py", "__init__.py", "__main__.py", "options.py"):
            continue
        cli = {m for m in _imported(path) if m.startswith("agent.cli")}
        assert cli <= {"agent.cli.options"}, (path.name, cli)


def test_the_evaluation_package_does_not_import_the_command_line():
    for path in (ROOT / "agent" / "evaluation").glob("*.py"):
        assert not any(m.startswith("agent.cli") for m in _imported(path)), path.name
