"""agent.planner.toolset: one list of tool modules feeds the tool set, models and picker."""

from __future__ import annotations

import logging
import sys
import time
import types
from importlib.metadata import EntryPoint

import pytest
from pydantic import BaseModel

from agent import AgentContext
from agent.planner import toolset
from agent.planner.toolset import (
    TOOL_MODULES,
    default_tools,
    offered_specs,
    tool_catalog,
    tool_deps,
    tool_models,
    tool_specs,
)
from tools.base import ImageArgs
from tools.evidence import Evidence
from tools.models.registry import models
from tools.spec import ToolSpec

DEFAULT_NAMES = ["describe_image", "region_stats", "measure_distance", "read_text",
                 "detect_lesions", "segment", "find", "measure", "measure_lungs",
                 "similar_cases", "report_lookup", "classify", "case_answer", "window"]


@pytest.fixture
def ctx(medloop_home):
    return AgentContext(home=medloop_home, checkpoint=None, device="cpu")


@pytest.fixture
def plugins(monkeypatch):
    """Installs fake ``medloop.tools`` entry points; the spec cache is fresh before and after."""

    def install(*eps: EntryPoint) -> None:
        monkeypatch.setattr(toolset, "entry_points", lambda group: [
            ep for ep in eps if group == toolset.ENTRY_POINT_GROUP])
        tool_specs.cache_clear()

    yield install
    tool_specs.cache_clear()


def _echo(name: str, precedence: int = 0, variant: str = "") -> ToolSpec:
    def build(deps):
        return lambda args: Evidence(tool=name, summary=f"{variant or name} on {args.image_id}")

    return ToolSpec(name=name, description=f"{name} ({variant})", args=ImageArgs, build=build,
                    precedence=precedence, variant=variant, examples=(f"Run {name}?",))


def test_default_tools_in_the_order_the_planner_always_saw(ctx, store):
    assert [t.name for t in default_tools(ctx, store)] == DEFAULT_NAMES
    assert [t.name for t in default_tools(ctx)] == DEFAULT_NAMES  # ctx.store by default


def test_the_shipped_case_library_answers_unless_turned_off_or_replaced(medloop_home, store,
                                                                       tmp_path):
    from retrievers.shipped_library import SOURCE

    default = AgentContext(home=medloop_home, checkpoint=None)
    assert default.answers_library_path == SOURCE
    deps = tool_deps(default, store)
    assert deps.answers_path == SOURCE and deps.answers is not None
    assert not (medloop_home / "libraries").exists()  # copied and opened on first use only
    off = AgentContext(home=medloop_home, checkpoint=None, answers_library="none")
    assert off.answers_library_path is None
    assert "case_answer" not in [t.name for t in default_tools(off, store)]
    site = tmp_path / "site-pairs"  # a site's own labelled library in its place
    site.mkdir()
    (site / "qa.jsonl").write_text("")
    mine = AgentContext(home=medloop_home, checkpoint=None, answers_library=str(site))
    assert tool_deps(mine, store).answers_path == site
    assert "case_answer" in [t.name for t in default_tools(mine, store)]
    empty = AgentContext(home=medloop_home, checkpoint=None, answers_library=str(tmp_path))
    assert "case_answer" not in [t.name for t in default_tools(empty, store)]  # no pairs there
    env = AgentContext.from_env({"MEDLOOP_ANSWERS_LIBRARY": "none",
                                 "MEDLOOP_HOME": str(medloop_home)})
    assert env.answers_library_path is None


def test_every_declared_tool_comes_from_the_module_list_and_has_examples():
    specs = tool_specs()
    # segment_anatomy is declared too, offered only with an anatomy model configured
    # (MEDLOOP_ANATOMY); ask_image and draft_report only with a vision-language model
    # (MEDLOOP_VLM)
    assert {s.name for s in specs} == {*DEFAULT_NAMES, "segment_anatomy", "ask_image",
                                       "draft_report"}
    assert all(s.examples and s.description for s in specs)
    assert len(TOOL_MODULES) == len(set(TOOL_MODULES))


def test_a_configured_classifier_outranks_the_knn_one_in_its_own_place(medloop_home, store):
    ctx = AgentContext(home=medloop_home, checkpoint=None, device="cpu",
                       classifier="open_clip:hf-hub:org/model")
    tools = default_tools(ctx, store)
    names = [t.name for t in tools]
    assert names.count("classify") == 1
    assert names.index("classify") == names.index("measure_lungs") + 1
    classify = tools[names.index("classify")]
    assert classify.description.startswith("Zero-shot classification")
    assert "labels" in classify.args_schema.model_fields
    by_variant = {e.variant: e for e in tool_catalog(ctx) if e.name == "classify"}
    assert (by_variant["open_clip"].offered, by_variant["knn"].offered) == (True, False)
    assert by_variant["knn"].enabled and not by_variant["hf"].enabled


def test_a_configured_detector_makes_find_open_vocabulary(medloop_home, store):
    ctx = AgentContext(home=medloop_home, checkpoint=None, device="cpu", detector="hf:/no/owl")
    find = {t.name: t for t in default_tools(ctx, store)}["find"]
    assert find.description.startswith("Locate a named structure or finding")
    assert "hf-detector" in [r.name for r in tool_models(ctx)]


def test_equal_precedence_for_one_name_is_an_error_not_a_silent_choice(ctx, store):
    deps = tool_deps(ctx, store)
    low, high = _echo("t", 0, "a"), _echo("t", 5, "b")
    assert offered_specs([low, high], deps) == [high]
    assert offered_specs([high, low], deps) == [high]
    with pytest.raises(ValueError, match=r"two enabled 't' tools .* precedence 0"):
        offered_specs([low, _echo("t", 0, "c")], deps)


def test_tool_models_are_the_registry_rows_from_the_specs(ctx):
    assert tool_models(ctx) == models(ctx.vision)
    offered = {e.name: e for e in tool_catalog(ctx) if e.offered}
    assert offered["read_text"].models == ("rapidocr-pp-ocrv4",)
    assert offered["find"].models == ("lungs-finder", "lite-medsam", "rapidocr-pp-ocrv4")
    assert offered["window"].models == ()


def test_entry_point_plugins_add_tools_and_can_outrank(plugins, ctx, store, monkeypatch):
    mod = types.ModuleType("medloop_test_plugin")
    mod.TOOLS = (_echo("cxr_findings"), _echo("classify", 20, "cxr"))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    plugins(EntryPoint("cxr", mod.__name__, toolset.ENTRY_POINT_GROUP))
    tools = {t.name: t for t in default_tools(ctx, store)}
    # The winner of a shared name sits where it is declared: here, after the listed modules.
    assert list(tools) == [*(n for n in DEFAULT_NAMES if n != "classify"), "cxr_findings",
                           "classify"]
    assert tools["classify"].description == "classify (cxr)"
    from agent.planner.route import route_examples

    route_examples.cache_clear()
    try:
        assert route_examples()["cxr_findings"] == ("Run cxr_findings?",)
    finally:
        route_examples.cache_clear()


def test_a_broken_plugin_is_logged_and_left_out_a_wrong_one_is_refused(
        plugins, ctx, store, monkeypatch, caplog):
    plugins(EntryPoint("gone", "medloop_no_such_module", toolset.ENTRY_POINT_GROUP))
    with caplog.at_level(logging.ERROR, logger=toolset.__name__):
        assert [t.name for t in default_tools(ctx, store)] == DEFAULT_NAMES
    assert "'gone'" in caplog.text

    class NotASpec(BaseModel):
        name: str = "x"

    mod = types.ModuleType("medloop_bad_plugin")
    mod.TOOLS = (NotASpec(),)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    plugins(EntryPoint("bad", mod.__name__, toolset.ENTRY_POINT_GROUP))
    with pytest.raises(TypeError, match="entry point 'bad'"):
        tool_specs()


def test_default_tools_offer_retrieval_without_opening_the_library(store, medloop_home):
    from agent.context import AgentContext
    from agent.planner.toolset import default_tools

    t0 = time.perf_counter()
    names = [t.name for t in default_tools(AgentContext(checkpoint=None), store)]
    assert {"similar_cases", "report_lookup", "classify"} <= set(names)
    assert names.count("classify") == 1
    assert not (medloop_home / "retrieval").exists()  # nothing built or opened yet
    assert time.perf_counter() - t0 < 5


def test_a_library_of_labelled_cases_adds_case_answer_and_its_trained_heads(medloop_home, store,
                                                                            tmp_path):
    from retrievers.heads import HEADS_FILE
    from retrievers.vqa_library import QA_FILE

    lib = tmp_path / "vqa-lib"
    lib.mkdir()
    ctx = AgentContext(home=medloop_home, checkpoint=None, device="cpu", library=str(lib))

    def answering() -> set[str]:
        return {e.variant for e in tool_catalog(ctx) if e.name == "case_answer" and e.offered}

    assert answering() == {"shipped-library"}  # no pairs yet: the shipped library answers
    (lib / QA_FILE).write_text("")
    assert answering() == {"vqa-library"}  # the site's own pairs outrank it
    assert ctx.answers_library_path is None
    names = [t.name for t in default_tools(ctx, store)]
    # a library of pairs has no reports: report_lookup is not offered over it
    assert names == [n for n in DEFAULT_NAMES if n != "report_lookup"]
    knn = {e.variant for e in tool_catalog(ctx) if e.name == "classify" and e.offered}
    assert knn == {"knn"}
    (lib / HEADS_FILE).write_text("{}")  # trained heads outrank the kNN classify
    offered = {e.variant for e in tool_catalog(ctx) if e.name == "classify" and e.offered}
    assert offered == {"trained-heads"}
    assert [t.name for t in default_tools(ctx, store)].count("classify") == 1


def test_without_a_library_of_its_own_classify_is_the_shipped_librarys_trained_heads(
        medloop_home, store):
    """The heads ``case_answer`` reads (what ``medloop eval --library-folds`` measures), not
    the kNN over the demo library, whose first call started a minutes-long build."""
    def classify(ctx: AgentContext) -> set[str]:
        return {e.variant for e in tool_catalog(ctx) if e.name == "classify" and e.offered}

    shipped = AgentContext(home=medloop_home, checkpoint=None, device="cpu")
    assert shipped.answers_library_path is not None
    assert classify(shipped) == {"shipped-heads"}
    tool = {t.name: t for t in default_tools(shipped, store)}["classify"]
    assert "trained on the case library's labelled images" in tool.description
    none = AgentContext(home=medloop_home, checkpoint=None, device="cpu", answers_library="none")
    assert classify(none) == {"knn"}


@pytest.mark.slow
def test_the_shipped_heads_classify_a_real_image(medloop_home, store):
    from pathlib import Path

    from tools.ingest import ingest_path

    image = Path(__file__).resolve().parents[2] / "fixtures" / "vqa_rad_mini" / "images" / \
        "synpic17145.jpg"
    _, refs = ingest_path(store, image)
    ctx = AgentContext(home=medloop_home, checkpoint=None, device="cpu")
    classify = {t.name: t for t in default_tools(ctx, store)}["classify"]
    ev = classify.invoke({"image_id": refs[0].id})
    assert ev.status == "ok" and ev.data["method"] == "trained-heads"
    assert set(ev.data["probabilities"]) == {"modality", "organ", "plane"}
    organ = dict(ev.data["probabilities"]["organ"])
    assert max(organ, key=organ.get) == "chest"  # its items are labelled CHEST
