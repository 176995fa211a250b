"""webapp.launch and the ``app.py`` entry point: secure defaults, settings from the environment."""

from __future__ import annotations

import gradio as gr
import pytest

import app
from agent import AgentContext
from tests.fakes import ScriptedChatModel
from webapp import launch
from webapp.layout import make_app


def _capture(monkeypatch, tmp_path):
    """Stub Gradio's launch and the page; returns (launch kwargs, contexts given to make_app)."""
    demo = make_app(AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path,
                                 checkpoint="memory"))
    seen: dict = {}
    contexts: list[AgentContext] = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: seen.update(kw))
    monkeypatch.setattr(launch, "make_app", lambda ctx, **kw: contexts.append(ctx) or demo)
    return seen, contexts


def test_main_launches_with_secure_defaults(tmp_path, monkeypatch):
    seen, _ = _capture(monkeypatch, tmp_path)
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    app.main(["--auth", "ann:pw"])
    assert seen["server_name"] == "127.0.0.1" and seen["server_port"] == 7999
    assert seen["share"] is False and seen["auth"] == [("ann", "pw")]
    assert seen["max_file_size"] == "100mb" and "allowed_paths" not in seen


def test_settings_come_from_the_environment_and_the_command_line_wins(tmp_path, monkeypatch):
    _, contexts = _capture(monkeypatch, tmp_path)
    monkeypatch.setenv("MEDLOOP_LLM", "openai:m@http://127.0.0.1:9/v1")
    monkeypatch.setenv("MEDLOOP_HOME", str(tmp_path / "home"))
    app.main([])
    app.main(["--llm", "embedded", "--max-rounds", "3"])
    assert contexts[0].llm == "openai:m@http://127.0.0.1:9/v1" and contexts[0].max_rounds == 5
    assert contexts[0].home_dir == tmp_path / "home"
    assert contexts[1].llm == "embedded" and contexts[1].max_rounds == 3


def test_auth_pairs():
    assert launch.parse_auth(None) is None
    assert launch.parse_auth("ann:pw,bob:a:b") == [("ann", "pw"), ("bob", "a:b")]
    with pytest.raises(SystemExit, match="user:password"):
        launch.parse_auth("nopassword")


def test_medloop_app_forwards_its_flags(monkeypatch):
    import webapp.launch
    from agent import cli

    seen = []
    monkeypatch.setattr(webapp.launch, "main", lambda argv: seen.append(argv))
    assert cli.main(["app", "--port", "7001", "--auth", "ann:pw", "--max-upload-mb", "5"]) == 0
    # only the options given: --llm is left to MEDLOOP_LLM (else embedded) in the app itself
    assert seen == [["--port", "7001", "--auth", "ann:pw", "--max-upload-mb", "5.0"]]
