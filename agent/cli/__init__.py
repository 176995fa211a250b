"""The ``medloop`` command line: one package, shared options, one subcommand module each."""

from agent.cli.main import main

__all__ = ["main"]
