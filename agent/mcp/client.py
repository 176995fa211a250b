"""The tools of configured MCP servers, as tools the planner calls like medloop's own.

``remote_tools(settings, store)`` connects to each server of ``agent.mcp.config`` through
``langchain-mcp-adapters`` and returns one LangChain tool per remote tool. Each returns an
``Evidence`` like every medloop tool, so the *act* node numbers it, the planner cites it and the
answer's confidence and contradiction checks read it.

Sessions stay open: a stdio server (often a model loaded once) is started once per process and
per configuration, not once per call, and reconnected on the next call if it died. They live on
one background event loop thread, because the agent's nodes are synchronous and may run inside
another event loop (the LangGraph server's). Every wait has a time limit: connecting (the
server's ``timeout``, default 30 s) and each call (``tool_timeout_s``).

Images: a remote tool that declares an ``image`` argument is offered to the planner with an
``image_id`` instead (the ids the planner knows); at call time the stored image's display goes
to the server as ``{"base64": PNG}`` (a string schema gets the bare base64). Pixel spacing and
modality values do not travel: a remote tool sees what the planner's images look like.

What comes back becomes evidence: the text is the summary; structured content shaped like
``Evidence`` (``summary``, ``score``, ``boxes``, ``measurements``, ``assertions``, at the top or
under ``"evidence"``, as medloop's own MCP server returns) fills those fields, anything else is
kept in ``data``. A server's error result is a failed call the planner is told about.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import concurrent.futures
import io
import json
import logging
import threading
import uuid
from collections.abc import Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from langchain_core.tools import BaseTool, StructuredTool
from pydantic import ValidationError

from agent.llm.text_protocol import inline_refs
from agent.mcp.config import McpError, ServerConfig, parse_servers
from tools.errors import ToolFailure, ToolInputError
from tools.evidence import Assertion, Box, Evidence, Measurement
from tools.store import ImageStore

__all__ = ["McpConnection", "close_all", "remote_tools"]

log = logging.getLogger("medloop.mcp")

T = TypeVar("T")

MAX_SUMMARY_CHARS = 2000
"""Longer remote text is cut: the summary is what the planner reads every round."""
MAX_DATA_CHARS = 20_000
"""Structured content larger than this (as JSON) is not kept in the evidence (checkpoints)."""


# -- the background loop ----------------------------------------------------------------------
class _Loop:
    """One asyncio loop on a daemon thread, shared by every MCP connection of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="medloop-mcp",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``coro`` on the loop; after ``timeout_s``, cancel it and raise ``TimeoutError``."""
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout_s)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise TimeoutError(f"no answer within {timeout_s:g} s") from None


_LOOP: _Loop | None = None
_LOOP_LOCK = threading.Lock()


def _loop() -> _Loop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None:
            _LOOP = _Loop()
        return _LOOP


def _reason(exc: BaseException) -> str:
    """The innermost cause of ``exc`` in one line (task groups wrap the real error)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- one server's session ---------------------------------------------------------------------
class McpConnection:
    """A live session with one MCP server, its tools listed, reconnected when it dies."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.tools: dict[str, BaseTool] = {}  # the adapter's tools, by remote name
        self._lock = threading.Lock()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """Whether the session task is running."""
        return self._task is not None and not self._task.done()

    def connect(self) -> dict[str, BaseTool]:
        """Start the session (if not live) and list the tools; ``McpError`` when it cannot."""
        with self._lock:
            if self.alive:
                return self.tools
            cfg = self.config
            try:
                self.tools = _loop().run(self._open(), cfg.timeout_s + 1.0)
            except TimeoutError:
                raise McpError(f"MCP server {cfg.name!r} ({cfg.where}) did not start and list "
                               f"its tools within {cfg.timeout_s:g} s") from None
            except Exception as exc:
                raise McpError(f"MCP server {cfg.name!r} ({cfg.where}) could not be reached: "
                               f"{_reason(exc)}") from exc
            return self.tools

    async def _open(self) -> dict[str, BaseTool]:
        ready: asyncio.Future[dict[str, BaseTool]] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold(ready, self._stop))
        try:
            return await asyncio.wait_for(asyncio.shield(ready), self.config.timeout_s)
        except BaseException:
            self._task.cancel()
            raise

    async def _hold(self, ready: asyncio.Future[dict[str, BaseTool]], stop: asyncio.Event) -> None:
        """Own the session for its whole life (MCP's transports must be left by their task)."""
        from langchain_mcp_adapters.sessions import create_session
        from langchain_mcp_adapters.tools import load_mcp_tools

        try:
            async with create_session(self.config.connection()) as session:  # type: ignore[arg-type]
                await session.initialize()
                tools = await load_mcp_tools(session, server_name=self.config.name,
                                             handle_tool_errors=False)
                if not ready.done():
                    ready.set_result({t.name: t for t in tools})
                await stop.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)
            else:
                log.warning("MCP server %r closed: %s", self.config.name, _reason(exc))

    def call(self, name: str, args: dict[str, Any], timeout_s: float) -> Any:
        """Call remote tool ``name``; the adapter's ``ToolMessage`` (content and artifact).

        Raises:
            ToolInputError: the server refused the arguments.
            ToolFailure: the server reported an error, died, or took longer than ``timeout_s``.
        """
        from langchain_core.tools import ToolException

        cfg = self.config
        try:
            tool = self.connect()[name]
        except McpError as exc:
            raise ToolFailure(str(exc)) from exc
        except KeyError:
            raise ToolFailure(f"MCP server {cfg.name!r} no longer offers {name!r}") from None
        call = {"type": "tool_call", "name": name, "args": args, "id": uuid.uuid4().hex}
        try:
            return _loop().run(tool.ainvoke(call), timeout_s)
        except TimeoutError:
            raise ToolFailure(f"MCP server {cfg.name!r} did not answer {name!r} within "
                              f"{timeout_s:g} s") from None
        except ToolException as exc:  # the server's error result (isError)
            text = str(exc).strip() or "an error without a message"
            if text.startswith("Input validation error") or "bad arguments" in text:
                raise ToolInputError(f"{cfg.name} refused the arguments: {text}") from None
            raise ToolFailure(f"{cfg.name} reported an error: {text}") from None
        except Exception as exc:  # transport: the server died or the connection dropped
            self.close()
            raise ToolFailure(f"MCP server {cfg.name!r} ({cfg.where}) failed during the call: "
                              f"{_reason(exc)}") from exc

    def close(self, timeout_s: float = 5.0) -> None:
        """End the session (a stdio server's process ends with it)."""
        stop, task = self._stop, self._task
        if stop is None or task is None or task.done():
            return

        async def _end() -> None:
            stop.set()
            try:
                await asyncio.wait_for(task, timeout_s)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()

        try:
            _loop().run(_end(), timeout_s + 1.0)
        except Exception as exc:  # closing is best effort; a stuck server is left to exit
            log.warning("MCP server %r did not close: %s", self.config.name, _reason(exc))


_OPEN: dict[str, McpConnection] = {}
_OPEN_LOCK = threading.Lock()


def _connection(config: ServerConfig) -> McpConnection:
    """The process's one connection for this configuration."""
    with _OPEN_LOCK:
        conn = _OPEN.get(config.key())
        if conn is None:
            conn = _OPEN[config.key()] = McpConnection(config)
        return conn


@atexit.register
def close_all() -> None:
    """End every MCP session of the process (at exit, and for tests)."""
    with _OPEN_LOCK:
        conns = list(_OPEN.values())
        _OPEN.clear()
    for conn in conns:
        conn.close()


# -- remote tools as medloop tools ------------------------------------------------------------
def remote_tools(
    settings: str | Path | Mapping[str, Any] | None,
    store: ImageStore,
    *,
    taken: Sequence[str] = (),
    call_timeout_s: float = 60.0,
) -> list[BaseTool]:
    """One medloop tool per tool of each configured MCP server, in the settings' order.

    Args:
        settings: ``AgentContext.mcp_servers`` (a JSON file's path, JSON text or a mapping).
        store: where the planner's images are (sent to tools that take an ``image``).
        taken: tool names already offered; a remote tool may not reuse one.
        call_timeout_s: the time limit of each call.

    Raises:
        McpConfigError: malformed settings.
        McpError: a server did not start or answer within its ``timeout``, or two tools would
            share a name (the message suggests a ``prefix``).
    """
    configs = parse_servers(settings)
    seen = {n: "medloop" for n in taken}
    out: list[BaseTool] = []
    for cfg in configs:
        conn = _connection(cfg)
        for remote_name, tool in conn.connect().items():
            name = cfg.prefix + remote_name
            if name in seen:
                raise McpError(f"MCP server {cfg.name!r} offers a tool {name!r}, a name "
                               f"{seen[name]} already uses: set \"prefix\" for the server in "
                               "the MCP settings")
            seen[name] = f"MCP server {cfg.name!r}"
            out.append(_wrap(conn, remote_name, name, tool, store, call_timeout_s))
    return out


def _wrap(conn: McpConnection, remote_name: str, name: str, tool: BaseTool, store: ImageStore,
          timeout_s: float) -> BaseTool:
    """A synchronous medloop tool calling ``remote_name`` and returning ``Evidence``."""
    remote_schema = tool.args_schema if isinstance(tool.args_schema, dict) else {}
    schema, image_prop = offered_schema(remote_schema)

    def run(**args: Any) -> Evidence:
        _validate(args, schema, name)
        image_id = args.get("image_id") if image_prop is not None else None
        sent = dict(args)
        if image_prop is not None:
            sent.pop("image_id", None)
            if image_id is not None:
                sent["image"] = image_payload(store, str(image_id), image_prop)
        msg = conn.call(remote_name, sent, timeout_s)
        return remote_evidence(name, msg.content, getattr(msg, "artifact", None),
                               image_id if isinstance(image_id, str) else None)

    described = (tool.description or f"{remote_name} (no description)").strip()
    described += f" [MCP server {conn.config.name}]"
    wrapped = StructuredTool(name=name, description=described, args_schema=schema, func=run)
    wrapped.metadata = {"mcp_server": conn.config.name, "mcp_tool": remote_name}
    return wrapped


def offered_schema(remote: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The schema offered to the planner, and the remote ``image`` property it replaces.

    A remote ``image`` argument becomes ``image_id`` (a stored image's id, which the offer then
    limits to the loaded images); everything else is the remote schema, its references inlined
    (``$ref``: a planner's grammar cannot follow one).
    """
    schema: dict[str, Any] = inline_refs(remote) if remote else {}
    schema.setdefault("type", "object")
    props: dict[str, Any] = schema.setdefault("properties", {})
    if "image" not in props or "image_id" in props:
        return schema, None
    image_prop = props.pop("image")
    props["image_id"] = {"type": "string",
                         "description": "id of the image to send to the tool, e.g. "
                                        "'img-1a2b3c4d5e6f'"}
    required = schema.get("required")
    if isinstance(required, list):
        schema["required"] = ["image_id" if r == "image" else r for r in required]
    return schema, dict(image_prop) if isinstance(image_prop, Mapping) else {}


def _validate(args: Mapping[str, Any], schema: Mapping[str, Any], name: str) -> None:
    """Check ``args`` against the offered schema here, before a round trip."""
    import jsonschema

    try:
        jsonschema.validate(instance=dict(args), schema=dict(schema))
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "arguments"
        raise ToolInputError(f"{where}: {exc.message}") from None
    except jsonschema.SchemaError as exc:
        raise ToolFailure(f"{name} declares an invalid argument schema: {exc.message}") from None


def image_payload(store: ImageStore, image_id: str, prop: Mapping[str, Any]) -> Any:
    """What goes in a remote tool's ``image`` argument: the stored display as base64 PNG.

    A string schema gets the bare base64; an object gets ``base64`` and, when it declares them,
    ``filename`` and ``mime_type``.
    """
    from PIL import Image

    from tools.image import to_rgb

    img = store.get(image_id)  # ToolInputError names an unknown id
    display = img.display if img.display.ndim == 2 else to_rgb(img.display)
    buf = io.BytesIO()
    Image.fromarray(display).save(buf, format="PNG")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    if prop.get("type") == "string":
        return data
    payload: dict[str, Any] = {"base64": data}
    declared = prop.get("properties") or {}
    if "filename" in declared:
        payload["filename"] = f"{image_id}.png"
    for key in ("mime_type", "mimeType"):
        if key in declared:
            payload[key] = "image/png"
    return payload


def remote_evidence(tool: str, content: Any, artifact: Any, image_id: str | None) -> Evidence:
    """The ``Evidence`` of one remote call: its text, and its structured content if any."""
    blocks = content if isinstance(content, list) else [content]
    texts = [b if isinstance(b, str) else str(b.get("text", "")) for b in blocks
             if isinstance(b, str) or (isinstance(b, Mapping) and b.get("type") == "text")]
    n_images = sum(1 for b in blocks if isinstance(b, Mapping) and b.get("type") == "image")
    structured = artifact.get("structured_content") if isinstance(artifact, Mapping) else None
    fields: dict[str, Any] = {}
    data: dict[str, Any] = {}
    if isinstance(structured, Mapping):
        inner = structured.get("evidence")
        shaped = inner if isinstance(inner, Mapping) else structured
        fields = _evidence_fields(shaped)
        used = {"evidence", *fields} if shaped is structured else {"evidence"}
        extra = {k: v for k, v in structured.items() if k not in used
                 and not (k == "result" and v == "\n".join(texts))}  # FastMCP's str wrapper
        if isinstance(inner, Mapping) and isinstance(inner.get("data"), Mapping):
            extra = {**inner["data"], **extra}
        if extra:
            text = json.dumps(extra, default=str)
            data = dict(extra) if len(text) <= MAX_DATA_CHARS else {
                "structured_content_omitted": f"{len(text)} characters"}
    summary = str(fields.pop("summary", "") or "\n".join(t for t in texts if t).strip())
    if not summary:
        summary = "the tool returned no text" + (f" ({n_images} image(s))" if n_images else "")
    if len(summary) > MAX_SUMMARY_CHARS:
        summary = summary[:MAX_SUMMARY_CHARS] + " …"
    if n_images:
        data["images_returned"] = n_images
    return Evidence(tool=tool, image_id=image_id, summary=summary, data=data, **fields)


def _evidence_fields(shaped: Mapping[str, Any]) -> dict[str, Any]:
    """The ``Evidence`` fields a remote result carries, each kept only when it validates."""
    out: dict[str, Any] = {}
    if isinstance(shaped.get("summary"), str):
        out["summary"] = shaped["summary"]
    score = shaped.get("score")
    if isinstance(score, int | float) and not isinstance(score, bool) and 0 <= score <= 1:
        out["score"] = float(score)
    for key, model in (("boxes", Box), ("measurements", Measurement),
                       ("assertions", Assertion)):
        items = shaped.get(key)
        if not isinstance(items, list):
            continue
        try:
            out[key] = [model.model_validate(i) for i in items]
        except ValidationError as exc:
            log.warning("MCP result's %s left out: %s", key, exc.errors()[0]["msg"])
    return out
