"""Untrusted values from a file as plain, bounded Python values.

A DICOM element can hold anything its writer put there: a DS with letters, a CS with a name in
it, NaN, the wrong number of values. Every reader in ``tools.ingest`` goes through these
coercers, which return a usable value or None (never raise), so that one rule decides what a
malformed element means everywhere: it is ignored, and the caller says so when it matters.
``one_line`` does the same for the text of an exception raised on such data (decoder and parser
messages), which goes into one-line ``IngestError`` messages.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

__all__ = [
    "as_float",
    "as_floats",
    "as_int",
    "as_list",
    "cs_code",
    "exact_floats",
    "first_item",
    "float_or",
    "one_line",
    "positive_pair",
    "raw_preview",
]

# The CS (code string) rules of PS3.5 6.2: upper case, digits, space, underscore, 16 characters.
_CS = re.compile(r"^[A-Z0-9 _]{1,16}$")
# Longest exception text quoted in a message, in characters.
_MAX_LINE = 200


def as_list(value: Any) -> list[Any]:
    """A DICOM value as a list (multi-valued elements are already sequences; None -> [])."""
    if value is None:
        return []
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def as_int(value: Any) -> int | None:
    """A single integer DICOM value (US, IS), or None if absent, empty or not an integer."""
    try:
        return int(value) if value is not None and value != "" else None
    except (TypeError, ValueError):
        return None


def as_floats(value: Any) -> list[float]:
    """All values of a numeric element as finite floats; empty if any value is not one."""
    out: list[float] = []
    for v in as_list(value):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return []
        if not math.isfinite(f):
            return []
        out.append(f)
    return out


def as_float(value: Any) -> float | None:
    """The first value of a numeric element as a finite float, or None."""
    numbers = as_floats(value)
    return numbers[0] if numbers else None


def exact_floats(value: Any, n: int) -> list[float] | None:
    """Exactly ``n`` finite floats (e.g. the 6 of ImageOrientationPatient), else None."""
    numbers = as_floats(value)
    return numbers if len(numbers) == n else None


def float_or(value: Any, default: float) -> float:
    """A single finite DS value (RescaleSlope, ...) as float, else ``default``.

    Absent, empty, malformed and multi-valued elements all give ``default``: a single-valued
    attribute written with several values is malformed, not a choice between them.
    """
    numbers = as_floats(value)
    return numbers[0] if len(numbers) == 1 else default


def positive_pair(value: Any) -> tuple[float, float] | None:
    """Two finite positive floats (a ``(row, col)`` spacing in mm), or None."""
    numbers = as_floats(value)
    if len(numbers) != 2 or min(numbers) <= 0:
        return None
    return numbers[0], numbers[1]


def cs_code(value: Any) -> str | list[str] | None:
    """A CS value if every part follows the CS rules, else None (it may hide free text)."""
    parts = [str(v).strip() for v in as_list(value)]
    parts = [v for v in parts if v]
    if not parts or not all(_CS.match(v) for v in parts):
        return None
    return parts[0] if len(parts) == 1 else parts


def first_item(seq: Any) -> Any:
    """The first item of a DICOM sequence, or None (absent, empty or not a sequence)."""
    try:
        return seq[0] if seq else None
    except (IndexError, TypeError):
        return None


def raw_preview(value: Any) -> str:
    """A value for a note without trusting its contents: at most 3 parts of 12 characters."""
    parts = [str(v)[:12] for v in as_list(value)[:3]]
    return "(" + ", ".join(parts) + ")"


def one_line(exc: BaseException) -> str:
    """An exception as one short line (whitespace collapsed, at most 200 characters)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _MAX_LINE else text[: _MAX_LINE - 3] + "..."
