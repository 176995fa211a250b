"""``cli``: run ``medloop ARGV...`` in-process and return (exit code, stdout, stderr)."""

from __future__ import annotations

import pytest

from agent.cli.main import main


@pytest.fixture
def cli(capsys):
    def run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
