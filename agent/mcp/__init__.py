"""Experts over the Model Context Protocol: the tools of a site's MCP servers, for the planner.

``config`` reads which servers (the Claude Desktop ``mcpServers`` format, from
``AgentContext.mcp_servers`` / ``MEDLOOP_MCP_SERVERS``); ``client`` connects to them with
``langchain-mcp-adapters`` and turns each remote tool into a tool that returns ``Evidence``,
which ``agent.planner.toolset.default_tools`` appends to medloop's own. The other direction,
medloop's tools served to MCP hosts (``medloop mcp``), is ``agent.mcp_server``: it sits above the
planner, which imports this package, so it cannot live here without an import cycle.
"""

from __future__ import annotations

from agent.mcp.client import close_all, remote_tools
from agent.mcp.config import McpConfigError, McpError, ServerConfig, parse_servers

__all__ = ["McpConfigError", "McpError", "ServerConfig", "close_all", "parse_servers",
           "remote_tools"]
