"""The ``medloop`` command line: one package, shared options, one module per subcommand.

``main`` (``agent.cli.main``) assembles the parser from ``ask``, ``inspect``, ``deid``,
``models``, ``app``, ``index`` and ``eval``; ``options`` holds what they share (bad input,
the planner options, settings through ``AgentContext.from_env``, ``--json`` output).
"""

from agent.cli.main import main

__all__ = ["main"]
