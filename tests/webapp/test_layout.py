"""webapp.layout: the page builds, with the disclaimer at the top and the bottom."""

from __future__ import annotations

from agent import AgentContext
from tests.fakes import ScriptedChatModel
from webapp.layout import make_app


def test_app_builds_with_the_disclaimer_and_a_private_secret(tmp_path):
    demo = make_app(AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path,
                                 checkpoint="memory"))
    assert demo.title == "medloop"
    texts = [c["props"].get("value") for c in demo.config["components"]]
    assert sum("not a medical device" in str(t) for t in texts) == 2  # top and bottom
    assert (tmp_path / "app_secret").stat().st_mode & 0o077 == 0  # secret readable by owner only
    apis = {d.get("api_name") for d in demo.config["dependencies"]}
    assert {"upload", "ask"} <= apis  # the two events a client may call by name
