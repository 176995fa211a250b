"""The agent graph: ingest → think → act → rethink → answer.

``build_graph(ctx)`` returns the compiled LangGraph graph. *think* routes itself
(``Command[Literal[...]]``): to *act* when the planner calls tools, to *rethink* when it proposes
an answer, back to *think* when its output was malformed, to *answer* when the round budget is
spent. *act* always returns to *think*; *rethink* goes to *answer* or back to *think* with what
is missing. The round budget ends every turn; the recursion limit set here is the backstop.

``graph`` (module attribute, named in ``langgraph.json``) is the default graph without a
checkpointer: the LangGraph server brings its own persistence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from langgraph.graph import START, StateGraph
from langgraph.graph.state import CompiledStateGraph

from agent.checkpoint import make_checkpointer
from agent.context import AgentContext
from agent.nodes.act import make_act
from agent.nodes.answer import make_answer
from agent.nodes.ingest import make_ingest
from agent.nodes.rethink import make_rethink
from agent.nodes.think import make_think
from agent.state import AgentState, InputState
from tools.store import ImageStore

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool

__all__ = ["build_graph"]


def build_graph(
    ctx: AgentContext | None = None,
    *,
    store: ImageStore | None = None,
    tools: Sequence[BaseTool] | None = None,
    llm: BaseChatModel | None = None,
    checkpointer: Any = "from-context",
) -> CompiledStateGraph:
    """Compile the agent for ``ctx`` (default settings when None).

    Run settings come from ``ctx``; the objects the graph is built from are keywords, so one
    caller can share them between graphs and with its own code (the app renders from the
    store the graph's *ingest* fills):

    Args:
        ctx: run settings. A ``context=`` passed to ``invoke`` overrides them per run (the
            store and the tools stay the build-time ones).
        store: the image store *ingest* writes and every tool reads (default: ``ctx.store``,
            under ``ctx.home``).
        tools: the tools to offer (default: ``ctx.tools``, else the default set built for
            ``ctx`` over ``store``).
        llm: a ready chat model for the planner (default: ``ctx.llm``, a spec resolved lazily
            on the first *think*).
        checkpointer: a LangGraph checkpointer, None for none, or (default) the one
            ``ctx.checkpoint`` names.
    """
    ctx = ctx or AgentContext()
    if llm is not None:
        ctx = dataclasses.replace(ctx, llm=llm)
    store = store if store is not None else ctx.store
    if tools is None and ctx.tools is not None:
        tools = ctx.tools
    if tools is None:
        from agent.planner.toolset import default_tools

        tools = default_tools(ctx, store)
    offered = list(tools)
    saver = (
        make_checkpointer(ctx.checkpoint, ctx.home_dir)
        if checkpointer == "from-context"
        else checkpointer
    )

    builder = StateGraph(AgentState, context_schema=AgentContext, input_schema=InputState)
    builder.add_node("ingest", make_ingest(store))
    builder.add_node("think", make_think(ctx, offered))
    builder.add_node("act", make_act(ctx, offered, store))
    builder.add_node("rethink", make_rethink(ctx))
    builder.add_node("answer", make_answer(ctx, offered))
    builder.add_edge(START, "ingest")
    builder.add_edge("ingest", "think")
    builder.set_finish_point("answer")
    graph = builder.compile(checkpointer=saver, name="medloop")
    return graph.with_config(recursion_limit=ctx.recursion_limit)  # type: ignore[return-value]


def __getattr__(name: str) -> Any:
    """``agent.build.graph``: the default graph, built on first access (no checkpointer).

    Its settings come from the ``MEDLOOP_*`` environment (``AgentContext.from_env``): that is
    how the LangGraph server, which imports this attribute, is configured.
    """
    if name == "graph":
        g = build_graph(AgentContext.from_env(checkpoint=None))
        globals()["graph"] = g
        return g
    raise AttributeError(name)
