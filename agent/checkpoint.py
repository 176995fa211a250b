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
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

# The only non-LangChain types our state holds. Checkpoints are read back with this explicit
# allowlist (LangGraph's strict mode), so a tampered checkpoint cannot name any other class.
STATE_TYPES: tuple[tuple[str, str], ...] = (
    ("tools.image", "ImageRef"),
    ("tools.evidence", "Evidence"),
    ("tools.evidence", "Box"),
    ("tools.evidence", "Measurement"),
    ("tools.evidence", "Assertion"),
    ("agent.answer", "Answer"),
    ("agent.answer", "Claim"),
    ("agent.answer", "FinalAnswerArgs"),
    ("agent.answer", "ProposedClaim"),
)


def serializer() -> JsonPlusSerializer:
    """The checkpoint serializer, restricted to LangGraph's safe types plus ours."""
    return JsonPlusSerializer(allowed_msgpack_modules=STATE_TYPES)


def check_spec(spec: str | None) -> None:
    """Raise ValueError naming the accepted forms if ``spec`` is not one of them."""
    if (
        spec is None
        or spec in ("none", "memory", "sqlite")
        or spec.startswith(("sqlite:", "postgres://", "postgresql://"))
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
        return InMemorySaver(serde=serializer())
    if spec == "sqlite" or spec.startswith("sqlite:"):
        from langgraph.checkpoint.sqlite import SqliteSaver

        path = (
            Path(spec[len("sqlite:") :])
            if spec.startswith("sqlite:")
            else home / "checkpoints.sqlite"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the graph's threads; SqliteSaver serialises access itself.
        conn = sqlite3.connect(str(path), check_same_thread=False)
        # WAL with synchronous=NORMAL survives a crash of the process (the failure resume is
        # for) without an fsync per checkpoint; only an OS crash can lose the last steps.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        saver = SqliteSaver(conn, serde=serializer())
        saver.setup()
        return saver
    if spec.startswith(("postgres://", "postgresql://")):
        from langgraph.checkpoint.postgres import PostgresSaver
        from psycopg import Connection
        from psycopg.rows import dict_row

        pg = Connection.connect(spec, autocommit=True, prepare_threshold=0, row_factory=dict_row)
        psaver = PostgresSaver(pg, serde=serializer())
        psaver.setup()
        return psaver
    raise AssertionError("unreachable: check_spec accepted an unknown spec")
