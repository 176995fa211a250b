"""A throw-away PostgreSQL server for tests, on a Unix socket in a temp folder.

Uses the server binaries of the machine's Debian ``postgresql`` package; tests that need it
are skipped (marker ``postgres``) where they are absent. Postgres refuses to run as root, so
when the tests run as root the cluster is run as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def pg_bin() -> str | None:
    """The folder holding initdb and pg_ctl, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(found[-1]) if found else None


@contextmanager
def temp_postgres() -> Iterator[str]:
    """Start a private cluster; yield a DSN; stop and delete it afterwards."""
    bindir = pg_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL server binaries not found")
    base = tempfile.mkdtemp(prefix="medloop-pg-")
    data, sock = os.path.join(base, "data"), os.path.join(base, "sock")
    os.makedirs(sock)
    prefix: list[str] = []
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]

    def run(*cmd: str) -> None:
        subprocess.run([*prefix, *cmd], check=True, capture_output=True, timeout=60)

    try:
        run(f"{bindir}/initdb", "-D", data, "-A", "trust", "-U", "medloop", "--no-sync")
        opts = f"-c listen_addresses='' -c unix_socket_directories={sock} -c fsync=off"
        run(
            f"{bindir}/pg_ctl",
            "-D",
            data,
            "-o",
            opts,
            "-w",
            "-t",
            "30",
            "-l",
            os.path.join(base, "log"),
            "start",
        )
        yield f"postgresql://medloop@/postgres?host={sock}"
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(
                [*prefix, f"{bindir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)
