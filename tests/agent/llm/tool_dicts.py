"""Two OpenAI-format tool dicts the backend tests share: a segment call with an enum and an
optional box, and a final answer whose claims cite evidence ids."""

from __future__ import annotations

SEGMENT = {
    "type": "function",
    "function": {
        "name": "segment",
        "description": "Segment an organ in an image.",
        "parameters": {
            "type": "object",
            "properties": {
                "image_id": {"type": "string", "enum": ["img1", "img2"],
                             "description": "which image"},
                "box": {"anyOf": [{"type": "array", "items": {"type": "number"}},
                                  {"type": "null"}], "default": None},
            },
            "required": ["image_id"],
        },
    },
}
FINAL = {
    "type": "function",
    "function": {
        "name": "final_answer",
        "description": "Answer the question.",
        "parameters": {
            "type": "object",
            "properties": {
                "answer": {"type": "string"},
                "claims": {"type": "array", "items": {
                    "type": "object",
                    "properties": {"statement": {"type": "string"},
                                   "evidence_ids": {"type": "array",
                                                    "items": {"type": "string", "enum": ["E1"]}}},
                    "required": ["statement", "evidence_ids"]}},
                "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["answer"],
        },
    },
}
TOOLS = [SEGMENT, FINAL]
