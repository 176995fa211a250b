"""Multi-turn memory through the Postgres checkpointer, on a real throw-away server."""

from __future__ import annotations

import pytest

from agent import AgentContext, build_graph
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tests.loop_tools import loop_tools
from tests.pg import pg_bin, temp_postgres

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(pg_bin() is None, reason="PostgreSQL server binaries absent"),
]


def test_postgres_memory_survives_a_new_graph(store, tmp_path):
    img = store.put(phantom()).id
    tools, _ = loop_tools(store)
    with temp_postgres() as dsn:
        model = ScriptedChatModel.of(
            [
                ai(call("mean_intensity", image_id=img)),
                final("first answer", [("mean measured", ["E1"])]),
                final("second answer", [("mean measured", ["E1"])]),
            ]
        )
        ctx = AgentContext(llm=model, tools=tools, home=tmp_path, checkpoint=dsn)
        ctx._store = store
        cfg = {"configurable": {"thread_id": "pg"}}
        build_graph(ctx).invoke({"messages": [("user", "first?")], "images": [img]}, cfg)
        # a second graph (as a second app process would build) continues the thread
        ctx2 = AgentContext(llm=model, tools=tools, home=tmp_path, checkpoint=dsn)
        ctx2._store = store
        out = build_graph(ctx2).invoke({"messages": [("user", "second?")]}, cfg)
    assert out["answer"].text == "second answer"
    assert [m.content for m in out["messages"] if m.type == "human"] == ["first?", "second?"]
    assert "first answer" in "\n".join(str(m.content) for m in model.seen[-1])
