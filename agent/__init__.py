"""medloop's agent: ``build_graph`` returns the compiled think → act → rethink → answer graph.

Research software, not a medical device.
"""

from __future__ import annotations

from typing import Any

from agent.answer import Answer, Claim
from agent.build import build_graph
from agent.context import AgentContext

__all__ = ["AgentContext", "Answer", "Claim", "build_graph", "graph"]


def __getattr__(name: str) -> Any:
    """``agent.graph`` as an attribute of the package is the default compiled graph."""
    if name == "graph":
        from agent import build

        return build.graph
    raise AttributeError(name)
