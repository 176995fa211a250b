"""Server processes for the MCP and LangGraph server tests: a free port, a bounded wait, a stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def offline_env(**extra: str) -> dict[str, str]:
    """This environment with no proxy in the way of loopback calls, and ``extra`` on top."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "openai_api_key")}
    return {**env, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT), **extra}


def start(argv: list[str], log: Path, env: dict[str, str], cwd: Path = ROOT) -> subprocess.Popen:
    """Start ``argv`` in its own process group, stdout and stderr to ``log``."""
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_ready(proc: subprocess.Popen, url: str, log: Path, limit_s: float,
               *, accept_http_error: bool = True) -> float:
    """Seconds until ``url`` answers; fails (with the log's tail) if the process exits first
    or the limit passes."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited with {proc.returncode}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return time.monotonic() - t0
        except urllib.error.HTTPError:
            if accept_http_error:  # it answered: up
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.25)
    stop(proc)
    pytest.fail(f"{url} did not answer within {limit_s:g} s:\n"
                f"{log.read_text(errors='replace')[-3000:]}")


def stop(proc: subprocess.Popen, limit_s: float = 20.0) -> int:
    """SIGINT to the process group (a clean shutdown), SIGKILL after ``limit_s``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return int(proc.returncode)
