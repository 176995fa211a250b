"""Sessions: one conversation thread per browser, its secret, and the graphs that serve them.

Every browser session has its own conversation thread, checkpointed (SQLite by default); its
random id is the only key to it. The id is remembered in the browser's local storage
(``gr.BrowserState``), encrypted with a secret kept under the medloop home so it survives a
restart; nothing is shared between sessions, and only the id is stored in the browser. With
``--auth`` a thread id starts with its user's name and is usable by that user only.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from agent import AgentContext, build_graph
from agent.checkpoint import make_checkpointer

__all__ = [
    "GIVEN_MODEL",
    "THREAD_ID",
    "Runner",
    "app_secret",
    "new_thread",
    "thread_is_usable",
]

# A thread id: 32 hex digits, after ``user~`` when the app has auth.
THREAD_ID = re.compile(r"^(?:[A-Za-z0-9_.@-]{1,64}~)?[0-9a-f]{32}$")
# The backend choice that means "the model the app was started with" (a spec or an object).
GIVEN_MODEL = "(the model this app was started with)"


def _owner(username: str) -> str:
    """A user name as it may appear in a thread id (64 safe characters at most)."""
    return re.sub(r"[^A-Za-z0-9_.@-]", "_", username)[:64]


def new_thread(username: str | None = None) -> str:
    """A fresh, unguessable thread id; prefixed by the user name when the app has auth."""
    tid = uuid.uuid4().hex
    return f"{_owner(username)}~{tid}" if username else tid


def thread_is_usable(thread: Any, username: str | None) -> bool:
    """A well-formed thread id that belongs to this user (or to nobody, without auth)."""
    if not isinstance(thread, str) or not THREAD_ID.match(thread):
        return False
    owner = thread.split("~", 1)[0] if "~" in thread else None
    if username is None:
        return owner is None
    return owner == _owner(username)


def app_secret(home: Path) -> str:
    """The key that encrypts the thread id in browsers' local storage, kept across restarts.

    Written once to ``home/app_secret`` (readable by its owner only: mode 0600).
    """
    path = home / "app_secret"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16))
    return path.read_text().strip()


class Runner:
    """The graphs of one app: one per tool selection, all sharing one checkpointer and store.

    The operator's ``ctx`` is fixed at launch; a browser may narrow the tools, pick a backend
    the operator listed in ``llm_choices`` and change the round budget, per run.
    """

    def __init__(self, ctx: AgentContext, llm_choices: Sequence[str] = ()) -> None:
        self.ctx = ctx
        if ctx.tools is not None:
            self.tools = list(ctx.tools)
        else:
            from agent.planner.toolset import default_tools

            self.tools = default_tools(ctx)
        self.saver = make_checkpointer(ctx.checkpoint, ctx.home_dir)
        given = ctx.llm if isinstance(ctx.llm, str) else GIVEN_MODEL
        self.llm_choices = list(dict.fromkeys([given, *llm_choices]))
        self._graphs: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()

    @property
    def tool_names(self) -> list[str]:
        """Every tool the operator's tool set offers."""
        return [t.name for t in self.tools]

    def graph(self, tool_names: Sequence[str] | None = None) -> Any:
        """The compiled graph offering ``tool_names`` (all tools when None)."""
        names = tuple(self.tool_names if tool_names is None else
                      [n for n in self.tool_names if n in set(tool_names)])
        with self._lock:
            if names not in self._graphs:
                chosen = [t for t in self.tools if t.name in names]
                sub = dataclasses.replace(self.ctx, tools=chosen)
                sub._store = self.ctx.store
                self._graphs[names] = build_graph(sub, checkpointer=self.saver)
            return self._graphs[names]

    def run_context(self, llm: str | None, rounds: int | None) -> AgentContext:
        """The settings of one run: the operator's, with the browser's backend and budget.

        Raises ``gr.Error`` for a backend the operator did not offer (a browser cannot point
        the server at a URL of its choosing). Rounds are kept within 1..20.
        """
        run = dataclasses.replace(self.ctx)
        run._store = self.ctx.store
        if llm and llm != GIVEN_MODEL:
            if llm not in self.llm_choices:
                raise gr.Error(f"LLM backend {llm!r} is not offered by this app")
            run.llm = llm
        if rounds:
            run.max_rounds = max(1, min(int(rounds), 20))
        return run

    def state(self, thread: str) -> dict[str, Any]:
        """The checkpointed state of a thread ({} when it has none)."""
        snap = self.graph().get_state({"configurable": {"thread_id": thread}})
        return dict(snap.values or {})
