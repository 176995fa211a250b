"""``python -m agent.cli``: the same as the ``medloop`` script."""

from agent.cli.main import main

raise SystemExit(main())
