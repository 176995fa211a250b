"""``agent.mcp.config``: the Claude Desktop ``mcpServers`` format, and what it refuses."""

from __future__ import annotations

import json

import pytest

from agent import AgentContext
from agent.mcp.config import McpConfigError, parse_servers


def test_the_claude_desktop_format_from_a_file_json_text_or_a_mapping(tmp_path):
    settings = {"mcpServers": {
        "site-cxr": {"command": "python", "args": ["-m", "site_cxr"], "env": {"K": "v"},
                     "timeout": 5, "prefix": "cxr_"},
        "pathology": {"url": "https://10.0.0.5/mcp", "headers": {"Authorization": "Bearer x"}},
        "legacy": {"url": "http://127.0.0.1:9000/sse", "type": "sse"},
    }}
    path = tmp_path / "mcp.json"
    path.write_text(json.dumps(settings))
    for spec in (str(path), path, json.dumps(settings), settings, settings["mcpServers"]):
        cxr, patho, legacy = parse_servers(spec)
        assert (cxr.name, cxr.transport, cxr.command, cxr.args) == ("site-cxr", "stdio", "python",
                                                                    ("-m", "site_cxr"))
        assert cxr.connection() == {"transport": "stdio", "command": "python",
                                    "args": ["-m", "site_cxr"], "env": {"K": "v"}}
        assert cxr.timeout_s == 5.0 and cxr.prefix == "cxr_"
        assert patho.connection() == {"transport": "streamable_http", "url": "https://10.0.0.5/mcp",
                                      "timeout": 30.0, "headers": {"Authorization": "Bearer x"}}
        assert "Bearer" not in repr(patho)  # headers hold credentials
        assert legacy.transport == "sse"
    assert parse_servers(None) == [] and parse_servers({"mcpServers": {}}) == []


def test_medloop_mcp_servers_is_read_by_from_env(tmp_path):
    ctx = AgentContext.from_env({"MEDLOOP_MCP_SERVERS": str(tmp_path / "mcp.json")})
    assert ctx.mcp_servers == str(tmp_path / "mcp.json")
    assert AgentContext.from_env({}).mcp_servers is None


@pytest.mark.parametrize("spec, needle", [
    ("/nonexistent/mcp.json", "'mcp.json' not found"),
    ('{"mcpServers": {"a": ', "not valid JSON"),
    ({"mcpServers": []}, "must map server names"),
    ({"a": {"command": "x", "url": "http://h/mcp"}}, "MCP server 'a': give either"),
    ({"a": {}}, "MCP server 'a': give a 'command'"),
    ({"a": {"command": "x", "arg": ["y"]}}, "unknown key(s) 'arg'"),
    ({"a": {"command": "x", "args": "y"}}, "'args' must be a list"),
    ({"a": {"command": "x", "type": "http"}}, "speaks stdio"),
    ({"a": {"url": "ftp://h"}}, "http:// or https://"),
    ({"a": {"url": "http://h/mcp", "type": "websocket"}}, "unknown type 'websocket'"),
    ({"a": {"command": "x", "timeout": 0}}, "'timeout' must be"),
    ({"a": {"command": "x", "timeout": True}}, "'timeout' must be"),
    ({"a": {"command": "x", "env": {"K": 1}}}, "'env' must map"),
    ({"a": {"command": "x", "prefix": "bad prefix"}}, "'prefix'"),
    ({"bad name!": {"command": "x"}}, "server name"),
    ({"a": "python server.py"}, "must be a JSON object"),
])
def test_malformed_settings_are_refused_naming_the_server_and_the_key(spec, needle):
    with pytest.raises(McpConfigError) as err:
        parse_servers(spec)
    assert needle in str(err.value)


def test_an_unreadable_file_is_named(tmp_path):
    folder = tmp_path / "mcp.json"
    folder.mkdir()
    with pytest.raises(McpConfigError, match=r"'mcp\.json' cannot be read"):
        parse_servers(folder)
