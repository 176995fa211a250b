from __future__ import annotations

import pytest

from prompts import available_prompts, load_prompt


def test_every_prompt_the_agent_uses_ships():
    names = available_prompts()
    for name in ("think", "rethink", "abstain", "tools_json"):
        assert name in names


def test_render_fills_and_complains():
    p = load_prompt("rethink")
    assert p.tag == f"rethink@v{p.version}"
    assert "- missing E1" in p.render(problems="- missing E1")
    with pytest.raises(KeyError):
        p.render()


def test_unknown_prompt_and_version():
    with pytest.raises(KeyError, match="no prompt named"):
        load_prompt("nope")
    with pytest.raises(KeyError, match="versions"):
        load_prompt("think", version=999)
