"""medloop served over the Model Context Protocol: ``medloop mcp``.

``server`` (what is served: the default tools and ``ask``, the whole agent as one tool; the
stdio and streamable HTTP transports), ``images`` (the ``image`` argument: id, path, base64 or a
PACS study), ``results`` (evidence and answers as MCP text, structured content and overlay
PNGs). The opposite direction, other MCP servers' tools offered to medloop's planner, is
``agent.mcp``, which the planner imports; this package sits above both.
"""

from __future__ import annotations

from agent.mcp_server.server import McpService, build_server, serve_http, serve_stdio

__all__ = ["McpService", "build_server", "serve_http", "serve_stdio"]
