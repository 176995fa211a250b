"""Turning a pure function into a LangChain tool that returns ``Evidence``.

A medloop tool is two layers (as in MONAI's array transform beside its dict wrapper): a pure
function over arrays that returns a dataclass, and this thin wrapper that adds the pydantic input
schema, the description the LLM reads, and the conversion to ``Evidence``. The wrapper never
catches errors: ``ToolInputError`` (retryable) and ``ToolFailure`` (terminal) travel up to the
agent's *act* node, which decides what the model is told.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import BaseModel, Field

from tools.evidence import Evidence

ArgsT = TypeVar("ArgsT", bound=BaseModel)

__all__ = ["ImageArgs", "make_tool"]


class ImageArgs(BaseModel):
    """Arguments every image tool takes: which stored image to look at."""

    image_id: str = Field(description="id of the image to use, e.g. 'img-1a2b3c4d5e6f'")


def make_tool(
    fn: Callable[[ArgsT], Evidence],
    *,
    name: str,
    description: str,
    args_schema: type[ArgsT],
) -> BaseTool:
    """Wrap ``fn(args) -> Evidence`` as a structured tool named ``name``.

    The tool validates its input with ``args_schema`` (pydantic), calls ``fn`` with the validated
    model, and returns the ``Evidence`` object unchanged; the agent numbers and records it.
    """

    def _run(**kwargs: object) -> Evidence:
        ev = fn(args_schema(**kwargs))
        if not isinstance(ev, Evidence):
            raise TypeError(f"tool {name} returned {type(ev).__name__}, not Evidence")
        if not ev.tool:
            ev.tool = name
        return ev

    return StructuredTool.from_function(
        func=_run, name=name, description=description, args_schema=args_schema
    )
