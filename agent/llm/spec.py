"""Backend specs: ``embedded[:NAME]``, ``gguf:PATH``, ``openai[-json]:MODEL@URL``, ``hf:ID``.

Parsed apart from ``agent.llm`` (which builds the backends) so that a backend module can name
the parsed form without importing the package that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LLMSpec", "canonical_spec", "parse_spec"]


@dataclass(frozen=True)
class LLMSpec:
    """A parsed backend spec."""

    kind: str  # "embedded" | "gguf" | "openai" | "hf"
    model: str = ""
    """The catalogue name (embedded), the file (gguf), the served model (openai), the id or
    folder (hf)."""
    base_url: str | None = None
    native_tools: bool = True


def parse_spec(spec: str) -> LLMSpec:
    """Parse ``embedded[:NAME]``, ``gguf:PATH``, ``openai[-json]:MODEL@URL`` or ``hf:ID_OR_PATH``.

    ``gguf:PATH`` is the one form checked on disk (the file exists and starts like a GGUF), so
    a bad path fails when the option is read, not at the first question.
    Raises ValueError with the accepted forms (or the planner names, or what is wrong with
    the file) when the spec is malformed.
    """
    from agent.llm.embedded.catalog import DEFAULT, lookup

    spec = spec.strip()
    forms = ("expected 'embedded', 'embedded:NAME', 'gguf:PATH', 'openai:MODEL@BASE_URL' "
             "or 'hf:ID_OR_PATH'")
    if spec == "embedded":
        return LLMSpec(kind="embedded", model=DEFAULT, native_tools=False)
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ValueError(f"bad --llm {spec!r}: {forms}")
    if kind == "embedded":
        return LLMSpec(kind="embedded", model=lookup(rest).name, native_tools=False)
    if kind == "gguf":
        from agent.llm.embedded.errors import EmbeddedModelError
        from agent.llm.embedded.template import check_gguf

        try:
            path = check_gguf(rest)
        except EmbeddedModelError as exc:
            raise ValueError(f"bad --llm {spec!r}: {exc}") from None
        return LLMSpec(kind="gguf", model=str(path), native_tools=False)
    if kind in ("openai", "openai-json"):
        model, at, url = rest.rpartition("@")
        if not at or not model or not url.startswith(("http://", "https://")):
            raise ValueError(f"bad --llm {spec!r}: {forms}")
        return LLMSpec(kind="openai", model=model, base_url=url, native_tools=kind == "openai")
    if kind == "hf":
        return LLMSpec(kind="hf", model=rest, native_tools=False)
    raise ValueError(f"bad --llm {spec!r}: {forms}")


def canonical_spec(spec: str) -> str:
    """The spec with ``embedded`` resolved to the planner it runs (``embedded:NAME``).

    What a setting fitted for one planner (a calibration map, say) should be keyed by: plain
    ``embedded`` names whichever planner is the default, and the default can change.
    """
    parsed = parse_spec(spec)
    return f"embedded:{parsed.model}" if parsed.kind == "embedded" else spec.strip()
