"""The graph the LangGraph server serves: ``langgraph.json`` names ``./agent/served.py:graph``.

``langgraph dev`` (and a LangGraph deployment) loads this file by its path and reads ``graph``
from the module's namespace; a lazily built attribute (``agent.build``'s module
``__getattr__``) is invisible to it, so the graph is built here, once, when the server imports
the file. Its settings come from the ``MEDLOOP_*`` environment (``AgentContext.from_env``): the
planner (``MEDLOOP_LLM``), the home with the image store, the models, the MCP servers whose tools
the planner may call. It has no checkpointer of its own: the server brings its persistence
(in memory under ``langgraph dev``; in a ``langgraph build`` image, the Postgres of
``DATABASE_URI``, with Redis at ``REDIS_URI``).

The server hands every run a context built from the graph's context schema and the run's
``context`` (usually none): with ``AgentContext`` itself that would be the dataclass defaults,
the embedded planner among them, whatever the environment says. So the schema served is
``ServedContext``, an ``AgentContext`` whose defaults are this server's settings: a run that
sets nothing gets the environment's planner and models, and a run's ``context`` (e.g.
``{"max_rounds": 3}``) changes only the fields it names.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from agent.build import build_graph
from agent.context import AgentContext

__all__ = ["ServedContext", "graph", "served_context"]


def served_context(settings: AgentContext) -> type[AgentContext]:
    """An ``AgentContext`` subclass whose field defaults are ``settings``' values."""
    def field_for(f: dataclasses.Field[Any]) -> Any:
        value = getattr(settings, f.name)
        if type(value).__hash__ is None:  # a mapping (mcp_servers): dataclasses want a factory
            return dataclasses.field(default_factory=lambda: value, repr=f.repr)
        return dataclasses.field(default=value, repr=f.repr)

    redeclared = [(f.name, f.type, field_for(f))
                  for f in dataclasses.fields(AgentContext) if f.init]
    return dataclasses.make_dataclass("ServedContext", redeclared, bases=(AgentContext,))


SETTINGS = AgentContext.from_env(checkpoint=None)
ServedContext = served_context(SETTINGS)

graph = build_graph(SETTINGS)
graph.context_schema = ServedContext  # type: ignore[assignment]  # build_graph leaves it untyped
