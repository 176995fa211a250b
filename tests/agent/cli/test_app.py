"""``medloop app``: only the options given reach the web app's own command line."""

from __future__ import annotations

from agent.cli.app import webapp_argv
from agent.cli.main import build_parser


def test_unset_options_are_left_to_the_web_app_and_the_environment():
    args = build_parser().parse_args(["app"])
    assert webapp_argv(args) == []  # so MEDLOOP_LLM, MEDLOOP_AUTH, GRADIO_SERVER_PORT apply
    args = build_parser().parse_args(["app", "--port", "7000", "--llm", "hf:x",
                                      "--max-rounds", "3", "--auth", "a:b",
                                      "--max-upload-mb", "20"])
    assert webapp_argv(args) == ["--port", "7000", "--llm", "hf:x", "--max-rounds", "3",
                                 "--auth", "a:b", "--max-upload-mb", "20.0"]
