"""Every prompt the agent uses, as versioned template files loaded with importlib.resources.

A prompt lives in ``prompts/<name>.v<N>.md``. ``load_prompt(name)`` returns the highest version
unless one is asked for, so a new wording is a new file and old runs stay reproducible (the
version is recorded in the trace). Templates use ``$name`` placeholders (``string.Template``)
so the JSON examples inside them need no escaping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from string import Template

__all__ = ["Prompt", "available_prompts", "load_prompt"]

_FILE = re.compile(r"^(?P<name>[a-z0-9_]+)\.v(?P<version>\d+)\.md$")


@dataclass(frozen=True)
class Prompt:
    """A loaded prompt template."""

    name: str
    version: int
    text: str

    @property
    def tag(self) -> str:
        """``name@vN``, recorded with every run that used it."""
        return f"{self.name}@v{self.version}"

    def render(self, **values: object) -> str:
        """Fill the ``$placeholders``; a missing value raises KeyError naming it."""
        return Template(self.text).substitute({k: str(v) for k, v in values.items()})


def available_prompts() -> dict[str, list[int]]:
    """Prompt names and their versions, as shipped in this package."""
    found: dict[str, list[int]] = {}
    for entry in resources.files(__package__).iterdir():
        m = _FILE.match(entry.name)
        if m:
            found.setdefault(m["name"], []).append(int(m["version"]))
    return {k: sorted(v) for k, v in sorted(found.items())}


@lru_cache(maxsize=64)
def load_prompt(name: str, version: int | None = None) -> Prompt:
    """Load ``name`` at ``version`` (default: the newest). Raises KeyError if there is none."""
    versions = available_prompts().get(name)
    if not versions:
        raise KeyError(f"no prompt named {name!r}; have {sorted(available_prompts())}")
    v = versions[-1] if version is None else version
    if v not in versions:
        raise KeyError(f"prompt {name!r} has versions {versions}, not {v}")
    text = resources.files(__package__).joinpath(f"{name}.v{v}.md").read_text(encoding="utf-8")
    return Prompt(name=name, version=v, text=text)
