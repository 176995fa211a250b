"""The one list of tool modules, and everything built from their declarations.

Each module in ``TOOL_MODULES`` declares its tools as ``TOOLS: tuple[ToolSpec, ...]``
(``tools.spec``); so does any installed package that registers a module under the
``medloop.tools`` entry-point group, e.g. in its ``pyproject.toml``::

    [project.entry-points."medloop.tools"]
    cxr = "my_package.cxr_tools"

From those declarations come the default tool set (``default_tools``), the tool listing for the
app's picker (``tool_catalog``), the models behind the offered tools (``tool_models``, what
``medloop models`` prints) and the tool router's example questions
(``agent.planner.route.route_examples``). Adding an expert is its module, its test and one
line here.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from types import ModuleType
from typing import TYPE_CHECKING

from langchain_core.tools import BaseTool

from agent.mcp import remote_tools
from tools.models.registry import ModelInfo, describe_models, set_memory_budget
from tools.packaged import MINILM, SMOLLM2
from tools.spec import ToolDeps, ToolSpec
from tools.store import ImageStore

if TYPE_CHECKING:
    from agent.context import AgentContext

__all__ = [
    "ENTRY_POINT_GROUP",
    "TOOL_MODULES",
    "ToolEntry",
    "default_tools",
    "offered_specs",
    "tool_catalog",
    "tool_deps",
    "tool_models",
    "tool_specs",
]

log = logging.getLogger(__name__)

TOOL_MODULES: tuple[str, ...] = (
    "tools.vision.basic",
    "tools.ingest.burned_in",
    "tools.vision.lesions",
    "tools.vision.segment",
    "tools.vision.find",
    "tools.vision.measure",
    "tools.vision.classify",
    "tools.vision.chest_findings",
    "tools.vision.anatomy",
    "retrievers.similar",
    "retrievers.knn_classify",
    "retrievers.heads",
    "retrievers.case_answers",
    "tools.vision.window",
    "tools.vision.vlm",
)
"""Modules declaring ``TOOLS``, in the order the planner is offered their tools."""

ENTRY_POINT_GROUP = "medloop.tools"
"""Entry-point group of third-party tool modules (or of ``ToolSpec`` sequences)."""

AGENT_MODELS = (SMOLLM2, MINILM)
"""Models the agent runs besides its tools: the embedded planner and the router's embedder."""


def _specs_of(source: ModuleType | object, where: str) -> tuple[ToolSpec, ...]:
    """A module's ``TOOLS``, or the sequence an entry point names, checked to be specs."""
    found = getattr(source, "TOOLS", source) if isinstance(source, ModuleType) else source
    specs = tuple(found) if isinstance(found, Iterable) else ()
    if not specs or not all(isinstance(s, ToolSpec) for s in specs):
        raise TypeError(f"{where} must declare TOOLS: a non-empty sequence of tools.spec.ToolSpec")
    return specs


def _plugin_specs() -> list[ToolSpec]:
    """Specs from installed packages' ``medloop.tools`` entry points, in name order.

    A plugin that fails to import is left out with a logged error: one broken package must not
    stop the agent, and the log names it.
    """
    out: list[ToolSpec] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            loaded = ep.load()
        except Exception:  # a third party's import failure: reported, not fatal
            log.exception("medloop.tools entry point %r (%s) failed to load", ep.name, ep.value)
            continue
        out += _specs_of(loaded, f"entry point {ep.name!r} ({ep.value})")
    return out


@lru_cache(maxsize=1)
def tool_specs() -> tuple[ToolSpec, ...]:
    """Every declared tool: ``TOOL_MODULES`` in order, then the installed plugins.

    Several specs may share a name (backends of ``classify``, ``find``); ``offered_specs``
    picks one per name. Importing a tool module loads no model.
    """
    specs: list[ToolSpec] = []
    for name in TOOL_MODULES:
        specs += _specs_of(importlib.import_module(name), name)
    return (*specs, *_plugin_specs())


def offered_specs(specs: Sequence[ToolSpec], deps: ToolDeps) -> list[ToolSpec]:
    """The enabled specs, one per name: the highest ``precedence``, in ``specs`` order.

    Raises:
        ValueError: two enabled specs share a name and a precedence (which one wins must be
            declared, never left to the order of the list).
    """
    enabled = [s for s in specs if s.enabled(deps)]
    best: dict[str, ToolSpec] = {}
    for spec in enabled:
        held = best.get(spec.name)
        if held is not None and held.precedence == spec.precedence:
            raise ValueError(f"two enabled {spec.name!r} tools ({held.variant or '?'}, "
                             f"{spec.variant or '?'}) have precedence {spec.precedence}: "
                             "declare which one outranks the other")
        if held is None or spec.precedence > held.precedence:
            best[spec.name] = spec
    return [s for s in enabled if best[s.name] is s]


def tool_deps(ctx: AgentContext, store: ImageStore | None = None) -> ToolDeps:
    """What the tools are built over, from the run's context.

    ``store`` (default ``ctx.store``), ``ctx``'s models and device, the case library
    (``ctx.library``, else the demo one under ``ctx.home``) and the labelled library
    ``case_answer`` falls back on (``ctx.answers_library_path``), each opened on first use.
    """
    from retrievers.shipped_library import answers_getter
    from retrievers.similar import default_library

    answers = ctx.answers_library_path
    return ToolDeps(store=store if store is not None else ctx.store, vision=ctx.vision,
                    library=default_library(ctx.home_dir, ctx.library_path), home=ctx.home_dir,
                    library_path=ctx.library_path,
                    answers=answers_getter(answers, ctx.home_dir) if answers else None,
                    answers_path=answers)


def default_tools(ctx: AgentContext, store: ImageStore | None = None) -> list[BaseTool]:
    """The tools offered to the planner when the context names none.

    The models they use are ``ctx``'s choices (``AgentContext.vision``), the case library is
    ``ctx.library`` (else the demo library under ``ctx.home``), and every tool reads and writes
    ``store`` (default ``ctx.store``: the one the graph's *ingest* fills). The tools of the
    MCP servers ``ctx.mcp_servers`` names follow medloop's own (``agent.mcp``; connecting to
    them raises ``McpError`` naming a server that is down).
    """
    deps = tool_deps(ctx, store)
    set_memory_budget(ctx.gpu_mem_mb)  # process-wide: the models of every run share one GPU
    tools = [spec.tool(deps) for spec in offered_specs(tool_specs(), deps)]
    if ctx.mcp_servers:
        tools += remote_tools(ctx.mcp_servers, deps.store, taken=[t.name for t in tools],
                              call_timeout_s=ctx.tool_timeout_s)
    return tools


@dataclass(frozen=True)
class ToolEntry:
    """One declared tool, for a picker or a listing.

    Attributes:
        name: the tool name the planner calls.
        variant: which backend, when several share the name (``knn``, ``open_clip``...).
        description: what the planner reads.
        enabled: whether this run's configuration allows it.
        offered: whether ``default_tools`` offers it (enabled and not outranked).
        models: names of the models it runs (rows of ``tool_models``).
    """

    name: str
    variant: str
    description: str
    enabled: bool
    offered: bool
    models: tuple[str, ...]


def tool_catalog(ctx: AgentContext) -> list[ToolEntry]:
    """Every declared tool under ``ctx``'s configuration, offered or not; nothing is built."""
    deps = tool_deps(ctx)
    specs = tool_specs()
    offered = {id(s) for s in offered_specs(specs, deps)}
    return [ToolEntry(name=s.name, variant=s.variant, description=s.description,
                      enabled=s.enabled(deps), offered=id(s) in offered,
                      models=tuple(n.name for n in s.needs(ctx.vision)))
            for s in specs]


def tool_models(ctx: AgentContext) -> list[ModelInfo]:
    """The models behind the offered tools and the agent itself, described, none loaded."""
    deps = tool_deps(ctx)
    needs = [n for s in offered_specs(tool_specs(), deps) for n in s.needs(ctx.vision)]
    return describe_models([*needs, *AGENT_MODELS], ctx.vision)
