"""agent.nodes.think: one planner call, trusted as the backend parsed it, routed onwards."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, ClassVar

from langchain_core.messages import AIMessage, HumanMessage

from agent.context import AgentContext
from agent.nodes.think import make_think, resolve_llm
from tests.fakes import ScriptedChatModel

ANSWER = {"answer": "no image", "claims": [], "confidence": 0.5}
AS_TEXT = json.dumps({"tool": "final_answer", "arguments": ANSWER})


class _Backend(ScriptedChatModel):
    """A scripted model that declares, like medloop's backends, that it parses its replies."""

    returns_parsed_tool_calls: ClassVar[bool] = True


def _think(model: Any) -> Any:
    ctx = AgentContext(llm=model, checkpoint=None, route_tools=0)
    state = {"messages": [HumanMessage(content="What is this?")], "image_refs": [],
             "evidence": []}
    return make_think(ctx, [])(state, SimpleNamespace(context=None))


def test_a_foreign_models_text_is_read_for_calls():
    cmd = _think(ScriptedChatModel.of([AIMessage(content=AS_TEXT)]))
    assert cmd.goto == "rethink" and cmd.update["proposal"].answer == "no image"
    (call,) = cmd.update["messages"][0].tool_calls
    assert call["name"] == "final_answer" and call["id"]
    assert cmd.update["trace"][0]["calls"] == ["final_answer"]


def test_a_backends_reply_is_taken_as_it_parsed_it():
    # The backend found no call in this text, so it is an answer, whatever it looks like.
    cmd = _think(_Backend.of([AIMessage(content=AS_TEXT)]))
    assert cmd.goto == "rethink" and cmd.update["proposal"].answer == AS_TEXT
    assert cmd.update["trace"][0]["calls"] == []


def test_calls_without_ids_get_them_and_invalid_calls_go_back_as_feedback():
    call = {"name": "final_answer", "args": ANSWER, "id": None, "type": "tool_call"}
    cmd = _think(_Backend.of([AIMessage(content="", tool_calls=[call])]))
    assert cmd.update["messages"][0].tool_calls[0]["id"].startswith("call_")
    bad = {"name": "final_answer", "args": "{", "id": "c1", "error": "not JSON",
           "type": "invalid_tool_call"}
    cmd = _think(_Backend.of([AIMessage(content="", invalid_tool_calls=[bad])]))
    assert cmd.goto == "think" and cmd.update["feedback"] == [
        "your tool call was malformed: not JSON"]


def test_a_spec_resolves_with_the_contexts_threads_and_temperature():
    llm = resolve_llm(AgentContext(llm="embedded", checkpoint=None, llm_threads=1,
                                   llm_temperature=0.3))
    assert llm.n_threads == 1 and llm.temperature == 0.3  # type: ignore[attr-defined]


class _Routed(ScriptedChatModel):
    prefers_tool_routing: ClassVar[bool] = True


def test_a_tool_marked_always_offered_is_kept_beside_the_routed_one(store, medloop_home):
    from agent.build import build_graph
    from tests.conftest import phantom
    from tests.fakes import ai, call, final
    from tests.loop_tools import loop_tools

    ref = store.put(phantom())
    tools, _ = loop_tools(store)
    names = [t.name for t in tools]
    other = next(t for t in tools if t.name != "finding")
    other.metadata = {**(other.metadata or {}), "always_offered": True}
    model = _Routed.of([ai(call("finding", image_id=ref.id, present=True)),
                        lambda msgs: final("A nodule is present.", [("nodule", ["E1"])], 0.8)])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint="memory")
    ctx._store = store
    build_graph(ctx).invoke({"messages": [("user", "Is there a nodule in this image?")],
                             "images": [ref.id]}, config={"configurable": {"thread_id": "t"}})
    offered = [s["function"]["name"] for s in model.offered[0]]
    assert "finding" in offered and other.name in offered  # routed + always offered
    assert len(offered) < len(names) and offered == [n for n in names if n in offered]
