"""The embedded planners: GGUF chat models through llama.cpp, on the CPU, offline.

Seven parts, each in its module:

- ``catalog``: the packaged planners by name (``embedded:NAME``) and which is the default;
- ``weights``: where a planner's GGUF is: in its package, or joined once from part packages
  into ``MEDLOOP_HOME/models`` (sha256 checked, renamed into place only when complete);
- ``runtime``: loading a GGUF once per process (threads, the AMX guard) and the saved prompt
  states that make a planner call cheap;
- ``template``: the chat template from the file's own metadata (any ``gguf:PATH``), and the
  check that a file is a GGUF;
- ``grammar``: the offered tools' schemas as one llama.cpp grammar, so every reply is a
  parseable call to an offered tool, and that reply read back (clamped to its bounds);
- ``prompt``: the chat turns, the tools described, the worked examples, fitted to the context;
- ``model``: ``EmbeddedChatModel``, the LangChain chat model that ties them together.

The text protocol it shares with the other text backends (tool descriptions, calls as JSON)
is ``agent.llm.text_protocol``.
"""

from agent.llm.embedded.catalog import CATALOG, DEFAULT, EmbeddedModel
from agent.llm.embedded.grammar import parse_tool_call, tool_call_grammar, tool_call_schema
from agent.llm.embedded.model import EmbeddedChatModel
from agent.llm.embedded.prompt import WorkedExamples, to_chatml, tool_prompt
from agent.llm.embedded.runtime import DEFAULT_MODEL_FILE, EmbeddedModelError, default_model_path
from agent.llm.embedded.template import ChatTemplate, check_gguf
from agent.llm.embedded.weights import WeightsError, model_file

__all__ = [
    "CATALOG",
    "DEFAULT",
    "DEFAULT_MODEL_FILE",
    "ChatTemplate",
    "EmbeddedChatModel",
    "EmbeddedModel",
    "EmbeddedModelError",
    "WeightsError",
    "WorkedExamples",
    "check_gguf",
    "default_model_path",
    "model_file",
    "parse_tool_call",
    "to_chatml",
    "tool_call_grammar",
    "tool_call_schema",
    "tool_prompt",
]
