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

from typing import Any

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

__all__ = ["build_graph"]


def build_graph(
    ctx: AgentContext | None = None, *, checkpointer: Any = "from-context"
) -> CompiledStateGraph:
    """Compile the agent for ``ctx`` (default settings when None).

    Args:
        ctx: run settings; its ``tools`` (or the default set) are fixed at build time, its LLM is
            resolved lazily on the first *think*. A ``context=`` passed to ``invoke`` overrides
            the other settings per run.
        checkpointer: a LangGraph checkpointer, None for none, or (default) the one
            ``ctx.checkpoint`` names.
    """
    ctx = ctx or AgentContext()
    if ctx.tools is not None:
        tools = list(ctx.tools)
    else:
        from agent.planner.toolset import default_tools

        tools = default_tools(ctx.store, ctx.device)
    saver = (
        make_checkpointer(ctx.checkpoint, ctx.home_dir)
        if checkpointer == "from-context"
        else checkpointer
    )

    builder = StateGraph(AgentState, context_schema=AgentContext, input_schema=InputState)
    builder.add_node("ingest", make_ingest(ctx))
    builder.add_node("think", make_think(ctx, tools))
    builder.add_node("act", make_act(ctx, tools))
    builder.add_node("rethink", make_rethink(ctx))
    builder.add_node("answer", make_answer(ctx, tools))
    builder.add_edge(START, "ingest")
    builder.add_edge("ingest", "think")
    builder.set_finish_point("answer")
    graph = builder.compile(checkpointer=saver, name="medloop")
    return graph.with_config(recursion_limit=ctx.recursion_limit)  # type: ignore[return-value]


def __getattr__(name: str) -> Any:
    """``agent.build.graph``: the default graph, built on first access (no checkpointer)."""
    if name == "graph":
        g = build_graph(AgentContext(checkpoint=None))
        globals()["graph"] = g
        return g
    raise AttributeError(name)
