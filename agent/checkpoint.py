"""Checkpointers: multi-turn memory and crash recovery.

SQLite is the default (one file under the medloop home); a ``postgresql://`` DSN gives the
Postgres saver for deployments with several app processes. Checkpoints hold only messages,
image ids and evidence (see ``agent.state``), so they stay small.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.memory import InMemorySaver


def check_spec(spec: str | None) -> None:
    """Raise ValueError naming the accepted forms if ``spec`` is not one of them."""
    if spec is None or spec in ("none", "memory", "sqlite") or spec.startswith(
        ("sqlite:", "postgres://", "postgresql://")
    ):
        return
    raise ValueError(
        f"bad checkpoint {spec!r}: expected 'sqlite', 'sqlite:PATH', 'memory', 'none' "
        "or a postgresql:// DSN"
    )


def make_checkpointer(spec: str | None, home: Path) -> BaseCheckpointSaver | None:
    """The saver a spec names: None, ``memory``, ``sqlite``, ``sqlite:PATH`` or a Postgres DSN."""
    check_spec(spec)
    if spec is None or spec == "none":
        return None
    if spec == "memory":
        return InMemorySaver()
    if spec == "sqlite" or spec.startswith("sqlite:"):
        from langgraph.checkpoint.sqlite import SqliteSaver

        path = Path(spec[len("sqlite:") :]) if spec.startswith("sqlite:") else home / "checkpoints.sqlite"
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the graph's threads; SqliteSaver serialises access itself.
        conn = sqlite3.connect(str(path), check_same_thread=False)
        saver = SqliteSaver(conn)
        saver.setup()
        return saver
    if spec.startswith(("postgres://", "postgresql://")):
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg import Connection
        from psycopg.rows import dict_row

        pg = Connection.connect(spec, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        psaver = PostgresSaver(pg)  # type: ignore[arg-type]
        psaver.setup()
        return psaver
    raise AssertionError("unreachable: check_spec accepted an unknown spec")
