"""medloop's web app: the entry point of ``python app.py`` and ``medloop app``.

Research software, not a medical device. The app itself is the ``webapp`` package (rendering,
uploads, sessions, handlers, speech, the page and its launch); this file only starts it::

    python app.py [--port 7860] [--llm embedded] [--auth user:password]
"""

from __future__ import annotations

from webapp.launch import launch, main, parse_auth
from webapp.layout import make_app

__all__ = ["launch", "main", "make_app", "parse_auth"]

if __name__ == "__main__":
    main()
