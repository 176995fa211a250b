"""Which MCP servers the planner may call: the Claude Desktop ``mcpServers`` format, checked.

A site plugs in its own experts by naming their MCP servers, no Python needed. The settings
(``AgentContext.mcp_servers``, from ``MEDLOOP_MCP_SERVERS``) are the path of a JSON file, the
JSON text itself, or a mapping, in the format Claude Desktop and most MCP hosts use::

    {"mcpServers": {
        "site-cxr": {"command": "python", "args": ["-m", "site_cxr.mcp"], "env": {"K": "v"}},
        "pathology": {"url": "http://10.0.0.5:8000/mcp", "headers": {"Authorization": "..."}}
    }}

A server with a ``command`` is started as a child process and spoken to over stdio; one with a
``url`` over streamable HTTP (``"type": "sse"`` for the older SSE transport). Optional keys:
``cwd`` (stdio), ``headers`` (HTTP), ``timeout`` (seconds to connect and list the tools,
default 30) and ``prefix`` (put before each tool name, when a tool's name clashes with
another's). Anything else is refused with a message that names the server and the key, so a
typo does not silently drop an expert. Nothing here connects: ``agent.mcp.client`` does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import MedloopError

__all__ = ["DEFAULT_CONNECT_TIMEOUT_S", "McpConfigError", "McpError", "ServerConfig",
           "parse_servers"]

DEFAULT_CONNECT_TIMEOUT_S = 30.0
"""Seconds a server gets to start, answer ``initialize`` and list its tools."""

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,32}$")
_STDIO_KEYS = {"command", "args", "env", "cwd", "type", "transport", "timeout", "prefix"}
_HTTP_KEYS = {"url", "headers", "type", "transport", "timeout", "prefix"}
_HTTP_TYPES = {"http": "streamable_http", "streamable_http": "streamable_http",
               "streamable-http": "streamable_http", "sse": "sse"}


class McpError(MedloopError):
    """An MCP server the run depends on is misconfigured or cannot be reached."""


class McpConfigError(McpError, ValueError):
    """The MCP server settings are malformed; the message names the server and the problem."""


@dataclass(frozen=True)
class ServerConfig:
    """One MCP server to connect to.

    Attributes:
        name: its key under ``mcpServers`` (named in every error about it).
        transport: ``stdio``, ``streamable_http`` or ``sse``.
        command: the program to start (stdio).
        args: its arguments (stdio).
        env: variables added to the child's environment (stdio; the MCP SDK passes only a safe
            subset of ours, PATH and HOME among them).
        cwd: the child's working folder (stdio).
        url: the endpoint (HTTP).
        headers: sent with every request (HTTP), e.g. an ``Authorization`` header.
        timeout_s: seconds to connect and list the tools.
        prefix: put before each of its tool names.
    """

    name: str
    transport: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = None
    cwd: str | None = None
    url: str = ""
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    prefix: str = ""

    @property
    def where(self) -> str:
        """The command line or the URL, for messages."""
        return self.url or " ".join([self.command, *self.args])

    def connection(self) -> dict[str, Any]:
        """The ``langchain-mcp-adapters`` connection dict for this server."""
        if self.transport == "stdio":
            conn: dict[str, Any] = {"transport": "stdio", "command": self.command,
                                    "args": list(self.args)}
            if self.env is not None:
                conn["env"] = dict(self.env)
            if self.cwd is not None:
                conn["cwd"] = self.cwd
            return conn
        conn = {"transport": self.transport, "url": self.url, "timeout": self.timeout_s}
        if self.headers:
            conn["headers"] = dict(self.headers)
        return conn

    def key(self) -> str:
        """What identifies one live connection: everything but the name and the prefix."""
        return json.dumps({"connection": self.connection(), "headers": dict(self.headers or {})},
                          sort_keys=True, default=str)


def parse_servers(spec: str | Path | Mapping[str, Any] | None) -> list[ServerConfig]:
    """The servers ``spec`` names (a JSON file's path, JSON text, or a mapping), checked.

    Raises:
        McpConfigError: the file is missing or not JSON, or a server entry is malformed (the
            message names the server and the key).
    """
    if spec is None:
        return []
    if isinstance(spec, Mapping):
        data: Any = spec
    else:
        data = _read(spec)
    if not isinstance(data, Mapping):
        raise McpConfigError("MCP server settings must be a JSON object with 'mcpServers'")
    servers = data.get("mcpServers", data)
    if not isinstance(servers, Mapping):
        raise McpConfigError("'mcpServers' must map server names to their settings")
    return [_server(str(name), entry) for name, entry in servers.items()]


def _read(spec: str | Path) -> Any:
    """The JSON of ``spec``: inline JSON text (starting with ``{``) or a file's path."""
    text = str(spec).strip()
    where = "MCP server settings"
    if not text.startswith("{"):
        path = Path(text).expanduser()
        where = f"MCP server settings file {path.name!r}"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise McpConfigError(f"{where} not found ({path})") from None
        except OSError as exc:
            raise McpConfigError(f"{where} cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise McpConfigError(f"{where} is not valid JSON: {exc.msg} at line {exc.lineno}, "
                             f"column {exc.colno}") from None


def _server(name: str, entry: Any) -> ServerConfig:
    """One entry of ``mcpServers``, checked."""
    def bad(problem: str) -> McpConfigError:
        return McpConfigError(f"MCP server {name!r}: {problem}")

    if not _NAME.match(name):
        raise bad("a server name is 1 to 64 letters, digits, '_', '-' or '.'")
    if not isinstance(entry, Mapping):
        raise bad("its settings must be a JSON object")
    timeout = entry.get("timeout", DEFAULT_CONNECT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 600:
        raise bad("'timeout' must be a number of seconds above 0, at most 600")
    prefix = entry.get("prefix", "")
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        raise bad("'prefix' must be up to 32 letters, digits, '_' or '-'")
    if "command" in entry and "url" in entry:
        raise bad("give either 'command' (a local server) or 'url' (a remote one), not both")
    kind = str(entry.get("type") or entry.get("transport") or "").lower()
    common = {"name": name, "timeout_s": float(timeout), "prefix": prefix}
    if "command" in entry:
        return _stdio(entry, kind, common, bad)
    if "url" in entry:
        return _http(entry, kind, common, bad)
    raise bad("give a 'command' (a local server, spoken to over stdio) or a 'url' "
              "(a streamable HTTP endpoint)")


def _stdio(entry: Mapping[str, Any], kind: str, common: dict[str, Any], bad: Any) -> ServerConfig:
    _only(entry, _STDIO_KEYS, bad)
    if kind not in ("", "stdio"):
        raise bad(f"a server with a 'command' speaks stdio, not {kind!r}")
    command, args = entry["command"], entry.get("args", [])
    if not isinstance(command, str) or not command.strip():
        raise bad("'command' must be a program name or path")
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise bad("'args' must be a list of strings")
    cwd = entry.get("cwd")
    if cwd is not None and not isinstance(cwd, str):
        raise bad("'cwd' must be a folder path")
    return ServerConfig(transport="stdio", command=command, args=tuple(args),
                        env=_strings(entry.get("env"), "env", bad), cwd=cwd, **common)


def _http(entry: Mapping[str, Any], kind: str, common: dict[str, Any], bad: Any) -> ServerConfig:
    _only(entry, _HTTP_KEYS, bad)
    url = entry["url"]
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise bad("'url' must be an http:// or https:// address")
    transport = _HTTP_TYPES.get(kind or "http")
    if transport is None:
        raise bad(f"unknown type {kind!r} for a 'url' (use 'http' or 'sse')")
    return ServerConfig(transport=transport, url=url,
                        headers=_strings(entry.get("headers"), "headers", bad), **common)


def _only(entry: Mapping[str, Any], allowed: set[str], bad: Any) -> None:
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise bad(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: "
                  f"{', '.join(sorted(allowed))}")


def _strings(value: Any, key: str, bad: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise bad(f"'{key}' must map names to string values")
    return dict(value)
