"""medloop's tools, and the whole agent as ``ask``, served over the Model Context Protocol.

``McpService`` holds what is served: the default tool set for the context (the same tools the
planner gets, ``agent.planner.toolset.default_tools``) and ``ask``, which runs the compiled
agent graph (``build_graph``) over the same image store. ``build_server`` wraps it in the MCP
SDK's low-level ``Server`` (the schemas are medloop's own pydantic schemas, so FastMCP's
signature-derived ones are not used); ``serve_stdio`` and ``serve_http`` run it over stdio (for
a host that starts the server, e.g. Claude Desktop) or streamable HTTP (``/mcp``).

Each tool's ``image_id`` becomes ``image`` (``agent.mcp_server.images``: by id, path, base64 or
PACS study). Arguments are checked against the schema by the SDK, then by the tool's pydantic
model; either failure, an image that cannot be used, a tool's error or a call over its time
limit comes back as an MCP error result (``isError``) whose text says what to fix, never as a
crash of the server. Results: ``agent.mcp_server.results``.

Tool calls run on worker threads under ``AgentContext.tool_timeout_s``; ``ask`` under its own
limit. A call over its limit is answered as timed out and its thread abandoned (Python cannot
kill threads), as the agent's *act* node does.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import uuid
from collections.abc import Sequence
from io import TextIOWrapper
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from langchain_core.tools import BaseTool
from mcp import types
from mcp.server.lowlevel import Server
from pydantic import BaseModel

from agent.build import build_graph
from agent.context import AgentContext
from agent.llm.text_protocol import inline_refs
from agent.mcp_server.images import ImageResolver, image_schema
from agent.mcp_server.results import DISCLAIMER, answer_result, error_result, evidence_result
from agent.nodes.act import describe_error, is_unexpected
from agent.planner.toolset import default_tools
from tools.errors import MedloopError
from tools.evidence import Evidence
from tools.image import ImageRef
from tools.store import ImageStore

__all__ = ["ASK_TOOL", "DEFAULT_ASK_TIMEOUT_S", "McpService", "build_server", "http_app",
           "serve_http", "serve_stdio"]

log = logging.getLogger("medloop.mcp")

ASK_TOOL = "ask"
DEFAULT_ASK_TIMEOUT_S = 900.0
"""``ask``'s time limit: a whole think → act → rethink loop, several tool calls and planner
rounds (the embedded planner on a CPU takes tens of seconds a round)."""
MAX_REQUEST_BYTES = 768 * 1024 * 1024
"""The largest HTTP request (a base64 study); the ingest guards then check each file."""

_IMAGE_HELP = ("the image: exactly one of {\"id\": stored image id}, {\"path\": file or DICOM "
               "folder on the server}, {\"base64\": file bytes, \"filename\": optional name}, "
               "{\"pacs\": {\"study_uid\": ..., \"url\": optional}}")
_ASK_DESCRIPTION = (
    "Ask medloop's agent a question about one or more medical images. It plans, calls its "
    "expert tools (segmentation, detection, measurement, classification, similar cases...), "
    "checks its draft against the evidence, and answers with findings citing that evidence, a "
    "calibrated confidence, and an abstention when the evidence is too weak. Pass 'thread' "
    "from a previous answer to ask a follow-up about the same images. " + DISCLAIMER)


def mcp_input_schema(tool: BaseTool) -> dict[str, Any]:
    """The tool's argument schema for MCP hosts: ``image_id`` replaced by ``image``."""
    args = tool.args_schema
    if isinstance(args, dict):
        raw: dict[str, Any] = dict(args)
    elif isinstance(args, type) and issubclass(args, BaseModel):
        raw = args.model_json_schema()
    else:
        raw = {}
    schema = inline_refs(raw)
    schema.pop("title", None)
    schema["type"] = "object"
    props = dict(schema.get("properties") or {})
    if "image_id" in props:
        props.pop("image_id")
        props = {"image": image_schema(_IMAGE_HELP), **props}
        required = schema.get("required")
        if isinstance(required, list):
            schema["required"] = ["image" if r == "image_id" else r for r in required]
    schema["properties"] = props
    return schema


def _ask_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "question": {"type": "string", "minLength": 1, "description": "the question"},
            "images": {"type": "array", "items": image_schema(_IMAGE_HELP), "maxItems": 16,
                       "description": "the images the question is about (none for a "
                                      "follow-up on the thread's images)"},
            "thread": {"type": "string", "minLength": 1, "maxLength": 128,
                       "description": "continue this conversation (the 'thread' of an "
                                      "earlier answer)"},
        },
        "required": ["question"],
    }


class McpService:
    """What ``medloop mcp`` serves: the tools over one store, and the agent as ``ask``.

    Args:
        ctx: the run settings (planner, models, time limits, checkpointer, PACS).
        store: the image store the tools read and ``ask`` ingests into (default
            ``ctx.store``).
        tools: the tools to serve (default: ``default_tools(ctx, store)``).
        path_roots: folders an ``image.path`` may be under; None accepts any path (stdio),
            an empty list none (HTTP without ``--path-root``).
        open_pacs: whether an ``image.pacs.url`` other than the configured PACS is accepted.
        ask_timeout_s: the time limit of one ``ask``.
    """

    def __init__(self, ctx: AgentContext, *, store: ImageStore | None = None,
                 tools: Sequence[BaseTool] | None = None,
                 path_roots: Sequence[Path] | None = None, open_pacs: bool = False,
                 ask_timeout_s: float = DEFAULT_ASK_TIMEOUT_S) -> None:
        if ask_timeout_s <= 0:
            raise ValueError("the ask time limit must be positive")
        self.ctx = ctx
        self.store = store if store is not None else ctx.store
        offered = list(tools) if tools is not None else default_tools(ctx, self.store)
        self.tools: dict[str, BaseTool] = {t.name: t for t in offered}
        if ASK_TOOL in self.tools:
            raise ValueError(f"a tool named {ASK_TOOL!r} would hide the agent's own")
        self.images = ImageResolver(self.store, path_roots=path_roots, pacs=ctx.pacs,
                                    open_pacs=open_pacs)
        self.ask_timeout_s = ask_timeout_s
        self._graph: Any = None
        self._graph_lock = threading.Lock()

    # -- listing --------------------------------------------------------------------------
    def definitions(self) -> list[types.Tool]:
        """Every served tool as MCP lists it: the tools in the planner's order, then ``ask``."""
        out = [types.Tool(name=name, description=tool.description,
                          inputSchema=mcp_input_schema(tool))
               for name, tool in self.tools.items()]
        out.append(types.Tool(name=ASK_TOOL, description=_ASK_DESCRIPTION,
                              inputSchema=_ask_schema()))
        return out

    # -- calling --------------------------------------------------------------------------
    async def call(self, name: str, arguments: dict[str, Any] | None) -> types.CallToolResult:
        """Run one call off the event loop, under its time limit; errors as error results."""
        args = dict(arguments or {})
        if name == ASK_TOOL:
            limit, work = self.ask_timeout_s, lambda: self.ask(args)
        elif name in self.tools:
            limit, work = self.ctx.tool_timeout_s, lambda: self.run_tool(name, args)
        else:
            return error_result(f"unknown tool {name!r}; available: "
                                f"{', '.join([*self.tools, ASK_TOOL])}")
        try:
            with anyio.fail_after(limit):
                return await anyio.to_thread.run_sync(work, abandon_on_cancel=True)
        except TimeoutError:
            return error_result(f"{name} timed out after {limit:g} s")

    def _image(self, args: dict[str, Any]) -> ImageRef | types.CallToolResult | None:
        """Swap ``args["image"]`` for the stored ``image_id``; an error result if unusable."""
        if "image" not in args:
            return None
        try:
            ref = self.images.refs(args.pop("image"))[0]
        except MedloopError as exc:
            return error_result(f"the image cannot be used: {exc}")
        except OSError as exc:
            return error_result(f"the image cannot be read: {exc.strerror or exc}")
        args["image_id"] = ref.id
        return ref

    def run_tool(self, name: str, args: dict[str, Any]) -> types.CallToolResult:
        """One tool call (on a worker thread): the image resolved, the tool run."""
        ref = self._image(args)
        if isinstance(ref, types.CallToolResult):
            return ref
        try:
            ev = self.tools[name].invoke(args)
        except Exception as exc:
            if is_unexpected(exc):
                log.error("tool %s crashed over MCP", name, exc_info=exc)
            return error_result(describe_error(exc, name))
        if not isinstance(ev, Evidence):
            return error_result(f"{name} returned no evidence (internal error)")
        return evidence_result(ev.model_copy(update={"args": args}), self.store, ref)

    def graph(self) -> Any:
        """The agent graph over this service's store and tools, built on the first ``ask``."""
        with self._graph_lock:
            if self._graph is None:
                self._graph = build_graph(self.ctx, store=self.store,
                                          tools=list(self.tools.values()))
            return self._graph

    def ask(self, args: dict[str, Any]) -> types.CallToolResult:
        """One question to the agent (on a worker thread); the answer with its evidence."""
        question = str(args.get("question") or "").strip()
        if not question:
            return error_result("the question is empty")
        ids: list[str] = []
        for image in args.get("images") or []:
            try:
                ids += [r.id for r in self.images.refs(image)]
            except MedloopError as exc:
                return error_result(f"an image cannot be used: {exc}")
            except OSError as exc:
                return error_result(f"an image cannot be read: {exc.strerror or exc}")
        thread = str(args.get("thread") or uuid.uuid4().hex[:12])
        config: Any = {"configurable": {"thread_id": thread}}
        graph = self.graph()
        try:
            graph.invoke({"messages": [("user", question)], "images": ids}, config)
        except MedloopError as exc:
            return error_result(f"the agent could not answer: {exc}")
        except Exception as exc:  # a bug: logged with its traceback, reported in one line
            log.error("ask failed over MCP", exc_info=exc)
            return error_result(f"the agent failed ({type(exc).__name__}: {exc})")
        state = graph.get_state(config).values
        if state.get("answer") is None:
            return error_result("the agent ended without an answer")
        return answer_result(state, thread, self.store)


def build_server(service: McpService) -> Server[Any, Any]:
    """The MCP server (SDK low-level ``Server``) for ``service``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("medloop")
    except PackageNotFoundError:  # a source checkout that was not installed
        ours = None
    server: Server[Any, Any] = Server(
        "medloop", version=ours,
        instructions=("Medical image question answering: call 'ask' with images and a "
                      "question, or the expert tools one by one. " + DISCLAIMER))

    @server.list_tools()
    async def _list() -> list[types.Tool]:
        return service.definitions()

    @server.call_tool()
    async def _call(name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return await service.call(name, arguments)

    return server


async def serve_stdio(server: Server[Any, Any]) -> None:
    """Serve over stdin / stdout until the host closes stdin.

    The protocol owns file descriptor 1: everything else that writes to stdout (a ``print``, a
    native library's log line) is sent to stderr, where a host shows it as the server's log,
    instead of corrupting the JSON-RPC stream.
    """
    from mcp.server.stdio import stdio_server

    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    out = anyio.wrap_file(TextIOWrapper(os.fdopen(protocol_fd, "wb"), encoding="utf-8"))
    async with stdio_server(stdout=out) as (read, write):
        await server.run(read, write, server.create_initialization_options())


def http_app(server: Server[Any, Any], host: str) -> Any:
    """The Starlette app serving ``server`` at ``/mcp`` (streamable HTTP).

    Bound to a loopback address, requests must name it as their ``Host`` (DNS-rebinding
    protection, as the SDK's FastMCP does).
    """
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
    from mcp.server.transport_security import TransportSecuritySettings
    from starlette.applications import Starlette
    from starlette.routing import Route

    security = None
    if host in ("127.0.0.1", "localhost", "::1"):
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*"],
            allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"])
    manager = StreamableHTTPSessionManager(app=server, security_settings=security,
                                           max_request_body_size=MAX_REQUEST_BYTES)

    class _Endpoint:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            await manager.handle_request(scope, receive, send)

    return Starlette(routes=[Route("/mcp", endpoint=_Endpoint())],
                     lifespan=lambda _app: manager.run())


async def serve_http(server: Server[Any, Any], host: str, port: int) -> None:
    """Serve streamable HTTP at ``http://HOST:PORT/mcp`` until interrupted."""
    import uvicorn

    config = uvicorn.Config(http_app(server, host), host=host, port=port, log_level="warning")
    served = uvicorn.Server(config)
    await served.serve()
    if served.started:
        # A started server stops only when told to (Ctrl-C, SIGTERM). uvicorn re-raises the
        # signal after its shutdown, but a session's stream closing during that shutdown can
        # swallow it (seen under load), and the CLI then exited 0 instead of 130.
        raise KeyboardInterrupt
