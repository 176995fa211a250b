"""The embedded planner's one error, at the bottom of the package so every module can raise it."""

from __future__ import annotations

from tools.errors import MedloopError

__all__ = ["EmbeddedModelError"]


class EmbeddedModelError(MedloopError, RuntimeError):
    """The embedded planner cannot run: weights missing, unreadable, or the prompt cannot fit."""
