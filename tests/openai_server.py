"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests.

stdlib ``http.server`` on an OS-chosen loopback port: it answers from a queue of scripted
replies and records every request. Nothing leaves the loopback.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


class ScriptedOpenAI:
    """An OpenAI-compatible chat-completions endpoint that replays ``replies`` in order."""

    def __init__(self) -> None:
        self.replies: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path not in ("/v1/chat/completions", "/chat/completions"):
                    self._send(404, {"error": {"message": f"no route {self.path}",
                                               "type": "not_found"}})
                    return
                owner.requests.append({"path": self.path, "body": body,
                                       "headers": {k.lower(): v for k, v in self.headers.items()}})
                reply = owner.replies.pop(0) if owner.replies else {"content": "(no script)"}
                if "status" in reply:
                    self._send(reply["status"], {"error": {"message": reply["error"],
                                                           "type": "invalid_request_error"}})
                    return
                self._send(200, completion(body.get("model", "?"), reply))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)

    def reply_text(self, content: str) -> None:
        self.replies.append({"content": content})

    def reply_calls(self, *calls: tuple[str, dict[str, Any]]) -> None:
        self.replies.append({"content": None, "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": name, "arguments": json.dumps(args)}}
            for i, (name, args) in enumerate(calls)
        ]})

    def reply_error(self, status: int, message: str) -> None:
        self.replies.append({"status": status, "error": message})


def completion(model: str, reply: dict[str, Any]) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.get("content")}
    if reply.get("tool_calls"):
        message["tool_calls"] = reply["tool_calls"]
    choice: dict[str, Any] = {"index": 0, "message": message,
                              "finish_reason": "tool_calls" if reply.get("tool_calls") else "stop"}
    if "logprobs" in reply:  # {"content": [{"token", "logprob"}...]}, as OpenAI sends them
        choice["logprobs"] = reply["logprobs"]
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0, "model": model,
        "choices": [choice],
        "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18},
    }


@pytest.fixture
def server(monkeypatch) -> Iterator[ScriptedOpenAI]:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                "all_proxy", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    srv = ScriptedOpenAI()
    srv.thread.start()
    yield srv
    srv.server.shutdown()
    srv.server.server_close()
