"""The default tool set: everything from ``tools/`` and ``retrievers/`` that runs here."""

from __future__ import annotations

from langchain_core.tools import BaseTool

from tools.basic import basic_tools
from tools.burned_in import burned_in_tools
from tools.store import ImageStore


def default_tools(store: ImageStore) -> list[BaseTool]:
    """The tools offered to the planner when the context names none."""
    return [*basic_tools(store), *burned_in_tools(store)]
