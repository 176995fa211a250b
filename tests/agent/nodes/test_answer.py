"""*answer*: what the agent says when a tool declined the question and nothing else answers."""

from __future__ import annotations

from pydantic import BaseModel

from agent import AgentContext, build_graph
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tools.base import make_tool
from tools.evidence import Evidence


class _Args(BaseModel):
    image_id: str


def _over_a_declining_tool(store, home, q: str, summary: str, data: dict, said: str,
                           claim: str, proposals: int = 1):
    """The answer when a tool asked ``q`` declined it and the planner answered anyway
    (``proposals`` times, when rethink sends the answer back)."""
    img = store.put(phantom()).id

    def case(a: _Args) -> Evidence:
        return Evidence(tool="case", image_id=a.image_id, score=0.0, summary=summary,
                        data={**data, "question": q})

    tools = [make_tool(case, name="case", description="Cases.", args_schema=_Args)]
    model = ScriptedChatModel.of([ai(call("case", image_id=img)),
                                  *[final(said, [(claim, ["E1"])], 0.9)] * proposals])
    ctx = AgentContext(llm=model, tools=tools, home=home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke({"messages": [("user", q)], "images": [img]},
                                               context=ctx)
    return out["answer"]


def test_an_answer_to_a_declined_question_is_not_given(store, medloop_home):
    answer = _over_a_declining_tool(
        store, medloop_home, "Is this image abnormal?",
        "No answer: similar cases cannot answer this kind of question reliably; no offline "
        "tool checked it.", {"answer": None, "withheld": "no"}, "No.", "not abnormal")
    assert answer.abstained and "No offline tool can answer this question" in answer.text
    assert "E1 (case)" in answer.text and not answer.text.startswith("No.")
    assert any("declined this question" in n for n in answer.notes)
    # the decline is quoted once, as the reason, not listed again beneath it
    assert answer.text.count("similar cases cannot answer this kind") == 1
    assert answer.text.endswith("What the tools found:\n- nothing beyond the above")


def test_an_answer_under_a_tool_that_had_none_is_not_given(store, medloop_home):
    """The cases were asked and had no answer: the planner's sentence stands on nothing."""
    answer = _over_a_declining_tool(
        store, medloop_home, "What is going on with this patient?",
        "None of the 10 most similar library images was asked a similar question; the case "
        "library cannot answer this.", {"answer": None}, "The patient has a lung.",
        "the patient has a lung")
    assert answer.abstained and "No offline tool can answer this question" in answer.text
    assert "the case library cannot answer this" in answer.text
    assert "has a lung" not in answer.text


def test_a_declined_question_leads_the_abstention_before_the_planner_s_own_fault(
        store, medloop_home):
    """"No, both kidneys are visible." under a withheld answer (3 dev items): the reason there
    is no answer is the decline; the sentence's self-contradiction comes after it."""
    answer = _over_a_declining_tool(
        store, medloop_home, "Are both kidneys visible?",
        "No answer: similar cases cannot answer this kind of question reliably; no offline "
        "tool checked it.", {"answer": None, "withheld": "yes"},
        "No, both kidneys are visible.", "both kidneys are visible", proposals=2)
    assert answer.abstained and answer.conflicts
    assert answer.text.startswith("No offline tool can answer this question: E1 (case) No "
                                  "answer: similar cases cannot answer")
    assert "The planner's own answer also contradicted its own evidence" in answer.text
    assert answer.text.index("No offline tool") < answer.text.index("contradicted")


def test_a_declined_question_is_named_when_the_rounds_run_out_without_an_answer(
        store, medloop_home):
    """The planner never proposed: the reason is the tool that declined, not the budget."""
    img = store.put(phantom()).id
    q = "Is there a pneumothorax?"

    def case(a: _Args) -> Evidence:
        return Evidence(tool="case", image_id=a.image_id, score=0.0,
                        summary="No answer: the image is unlike every image of the library.",
                        data={"answer": None, "withheld": "no", "question": q})

    tools = [make_tool(case, name="case", description="Cases.", args_schema=_Args)]
    model = ScriptedChatModel.of([ai(call("case", image_id=img))] * 2)
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None,
                       max_rounds=2)
    answer = build_graph(ctx, store=store).invoke(
        {"messages": [("user", q)], "images": [img]}, context=ctx)["answer"]
    assert answer.abstained and answer.budget_exhausted
    assert answer.text.startswith("No offline tool can answer this question: E1 (case) No "
                                  "answer: the image is unlike every image of the library.")
    assert "round budget ran out" not in answer.text


def test_the_map_of_the_question_form_calibrates_the_answer(store, medloop_home, tmp_path):
    """A closed question is calibrated by the closed map, an open one by the open map."""
    import pytest

    from agent.trust.calibration import Calibration, domain_of, save_calibration

    img = store.put(phantom()).id
    domain = domain_of([store.get(img)])

    def finder(a: _Args) -> Evidence:
        return Evidence(tool="finder", image_id=a.image_id, score=0.8,
                        summary="1 lesion found in the upper left of the image.")

    tools = [make_tool(finder, name="finder", description="Finds.", args_schema=_Args)]
    cal = Calibration("identity", domain=domain, by_form={
        "closed": Calibration("platt", {"a": 0.0, "b": -2.0}),
        "open": Calibration("platt", {"a": 0.0, "b": 2.0})})
    path = save_calibration(cal, tmp_path / "forms.json")
    got, text = {}, {}
    for q, said in (("Is there a lesion?", "Yes, one lesion"),
                    ("Where is the lesion?", "In the upper left.")):
        model = ScriptedChatModel.of([ai(call("finder", image_id=img)),
                                      final(said, [(said, ["E1"])], 0.9)])
        ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None,
                           calibration=str(path))
        out = build_graph(ctx, store=store).invoke({"messages": [("user", q)], "images": [img]},
                                                   context=ctx)
        got[q], text[q] = out["answer"].confidence, out["answer"].text
    assert got["Is there a lesion?"] == pytest.approx(0.1192, abs=1e-3)  # sigmoid(-2)
    # below the threshold: said as uncertain, the bare answer's sentence ended before the note
    assert text["Is there a lesion?"] == ("Uncertain (confidence 0.12): Yes, one lesion. This "
                                          "needs review by a radiologist.")
    assert got["Where is the lesion?"] == pytest.approx(0.8808, abs=1e-3)  # sigmoid(2)


def test_a_distance_between_the_planners_own_points_does_not_carry_a_finding(store,
                                                                            medloop_home):
    """Shown a blank picture, the small planner measured (1, 2)-(3, 4) and answered where the
    infarcts were from it, at 0.94: a distance between given points speaks to a distance only.
    """
    from tools.vision.basic import basic_tools

    img = _real_image(store)
    q = "Where are the multiple infarcts located?"
    tools = [t for t in basic_tools(store) if t.name == "measure_distance"]
    said = final("The multiple infarcts are located in the left half of the image.",
                 [("infarcts in the left half", ["E1"])], 0.9)
    model = ScriptedChatModel.of([ai(call("measure_distance", image_id=img, points=[1, 2, 3, 4])),
                                  said, said])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke({"messages": [("user", q)], "images": [img]},
                                               context=ctx)
    assert out["evidence"][0].status == "ok"
    assert out["answer"].abstained and "left half" not in out["answer"].text


def test_an_answer_on_the_pixels_alone_goes_back_then_is_not_given(store, medloop_home):
    """A clinical question answered from ``describe_image`` alone, twice, on a real image."""
    from pathlib import Path

    from tools.ingest.loader import load_image
    from tools.vision.basic import basic_tools

    q = "In which side is the hemidiaphragm elevated?"  # a VQA-RAD question on this radiograph
    jpeg = Path(__file__).parents[2] / "fixtures" / "vqa_rad_mini" / "images" / "synpic17145.jpg"
    img = store.put(load_image(jpeg)).id
    tools = [t for t in basic_tools(store) if t.name == "describe_image"]
    said = final("The hemidiaphragm is elevated on the left side.",
                 [("elevated hemidiaphragm", ["E1"])], 0.9)
    model = ScriptedChatModel.of([ai(call("describe_image", image_id=img)), said, said])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke({"messages": [("user", q)], "images": [img]},
                                               context=ctx)
    answer = out["answer"]
    assert answer.abstained and "The proposed answer could not be used" in answer.text
    assert "E1 (describe_image)" in answer.text and "left side" not in answer.text
    rethinks = [s for s in out["trace"] if s["step"] == "rethink"]
    assert [s["decision"] for s in rethinks] == ["think", "answer"]  # told once, then stopped
    assert "call a tool that can answer it" in rethinks[0]["problems"][-1]
    # the same image asked about its pixels is answered from them
    model = ScriptedChatModel.of([ai(call("describe_image", image_id=img)),
                                  final("It is 256 px wide.", [("256 px wide", ["E1"])], 0.9)])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke(
        {"messages": [("user", "What is the image width in pixels?")], "images": [img]},
        context=ctx)
    assert not out["answer"].abstained, out["answer"].text


class _QArgs(BaseModel):
    image_id: str
    question: str


_FRACTURE = "Is there a rib fracture?"


def _real_image(store) -> str:
    """A VQA-RAD chest film (a clinical JPEG) in the store."""
    from pathlib import Path

    from tools.ingest.loader import load_image

    jpeg = Path(__file__).parents[2] / "fixtures" / "vqa_rad_mini" / "images" / "synpic17145.jpg"
    return store.put(load_image(jpeg)).id


def _case(a: _QArgs) -> Evidence:
    """An expert that answers this very question no."""
    return Evidence(tool="case", image_id=a.image_id, score=0.7, summary="Answer: no.",
                    data={"answer": "no", "yes_no": "no", "question": a.question})


def _ask(model, tools, img, store, medloop_home, **settings):
    """Ask ``_FRACTURE`` about ``img`` with every tool offered (no routing).

    The always-offered experts are not asked before the planner unless ``settings`` say so
    (``consult_experts=True``): these scripts pin what the planner is offered from round one.
    """
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None,
                       route_tools=0, **{"consult_experts": False, **settings})
    return build_graph(ctx, store=store).invoke(
        {"messages": [("user", _FRACTURE)], "images": [img]}, context=ctx)


def _citable(offer) -> list[str]:
    """The evidence ids ``final_answer`` may cite in this offer."""
    spec = next(o for o in offer if o["function"]["name"] == "final_answer")
    claim = spec["function"]["parameters"]["properties"]["claims"]["items"]["properties"]
    return claim["evidence_ids"]["items"]["enum"]


def test_after_a_baseless_answer_only_the_expert_not_yet_asked_is_offered(store, medloop_home):
    """SmolLM2 re-proposed answers from ``describe_image`` 35 times in 320 real items."""
    from tools.vision.basic import basic_tools

    q, img = _FRACTURE, _real_image(store)
    expert = make_tool(_case, name="case", description="Answers from cases.",
                       args_schema=_QArgs)
    expert.metadata = {"always_offered": True}
    tools = [*(t for t in basic_tools(store) if t.name == "describe_image"), expert]
    model = ScriptedChatModel.of([
        ai(call("describe_image", image_id=img)),
        final("No fracture.", [("no fracture", ["E1"])], 0.9),
        ai(call("case", image_id=img, question=q)),
        final("No.", [("no fracture", ["E2"])], 0.8)])
    out = _ask(model, tools, img, store, medloop_home)
    names = [[s["function"]["name"] for s in offer] for offer in model.offered]
    assert "final_answer" in names[1] and names[2] == ["case"]  # the expert, and nothing else
    assert _citable(model.offered[3]) == ["E2"]  # the pixels' reading: not citable
    answer = out["answer"]
    assert not answer.abstained and answer.text.startswith("No"), answer.text
    # the expert asked already: the second baseless answer is not given, nothing is forced
    model = ScriptedChatModel.of([
        ai(call("case", image_id=img, question=q)),
        ai(call("describe_image", image_id=img)),
        final("No fracture.", [("no fracture", ["E2"])], 0.9),
        final("No fracture.", [("no fracture", ["E2"])], 0.9)])
    out = _ask(model, tools, img, store, medloop_home)
    names = [[s["function"]["name"] for s in offer] for offer in model.offered]
    assert all("final_answer" in n for n in names[2:]), names
    assert out["answer"].abstained


def test_the_expert_is_asked_the_question_before_the_planners_first_call(store, medloop_home):
    """On 640 real items the small planner's first call was case_answer on 522 of them."""
    from tools.vision.basic import basic_tools

    img = _real_image(store)
    expert = make_tool(_case, name="case", description="Answers from cases.",
                       args_schema=_QArgs)
    expert.metadata = {"always_offered": True}
    tools = [*(t for t in basic_tools(store) if t.name == "describe_image"), expert]
    model = ScriptedChatModel.of([final("No.", [("no fracture", ["E1"])], 0.8)])
    out = _ask(model, tools, img, store, medloop_home, consult_experts=True, max_rounds=1)
    first = out["evidence"][0]
    assert (first.tool, first.args) == ("case", {"image_id": img, "question": _FRACTURE})
    # one planner call, which the round budget of 1 allows: it started from the expert's answer
    assert len(model.offered) == 1 and not out.get("budget_exhausted")
    assert [s["function"]["name"] for s in model.offered[0]] == ["describe_image",
                                                                 "final_answer"]
    thinks = [t for t in out["trace"] if t["step"] == "think"]
    assert [(t.get("consulted", False), t["calls"]) for t in thinks] == [
        (True, ["case"]), (False, ["final_answer"])]
    assert not out["answer"].abstained and out["answer"].text.startswith("No")


def test_the_expert_is_asked_first_once_a_turn_even_when_it_fails(store, medloop_home):
    """A failed first ask is the planner's to take up: asking again would loop."""
    from tools.errors import ToolFailure

    def broken(a: _QArgs) -> Evidence:
        raise ToolFailure("library unreadable")

    img = _real_image(store)
    expert = make_tool(broken, name="case", description="Answers from cases.",
                       args_schema=_QArgs)
    expert.metadata = {"always_offered": True}
    model = ScriptedChatModel.of([ai(call("case", image_id=img, question=_FRACTURE)),
                                  final("No.", [("no fracture", ["E2"])], 0.8)])
    out = _ask(model, [expert], img, store, medloop_home, consult_experts=True)
    assert [e.status for e in out["evidence"]] == ["error", "error"]
    assert [t.get("consulted", False) for t in out["trace"] if t["step"] == "think"][:2] == [
        True, False]
    assert out["answer"].abstained


def test_a_result_about_other_topics_is_not_citable_beside_one_that_answers(store,
                                                                            medloop_home):
    """The heads' modality cited for a question about a finding (9 of 35 real items)."""
    q, img = _FRACTURE, _real_image(store)

    def heads(a: _Args) -> Evidence:
        return Evidence(tool="heads", image_id=a.image_id, score=0.9, summary="modality: xray",
                        data={"about": ["modality", "xray", "ct"]})

    tools = [make_tool(heads, name="heads", description="Labels.", args_schema=_Args),
             make_tool(_case, name="case", description="Cases.", args_schema=_QArgs)]
    model = ScriptedChatModel.of([ai(call("heads", image_id=img)),
                                  ai(call("case", image_id=img, question=q)),
                                  final("No.", [("no fracture", ["E2"])], 0.8)])
    out = _ask(model, tools, img, store, medloop_home)
    assert _citable(model.offered[2]) == ["E2"]
    assert not out["answer"].abstained


def test_an_abstention_names_the_tools_whose_domain_refuses_the_picture(store, medloop_home):
    """A colour picture: the grey-scale expert is never offered, and the answer says so."""
    import numpy as np

    from tools.domain import Domain
    from tools.image import LoadedImage

    q = "Is there a mass?"
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[..., 0] = 200  # red all over
    img = store.put(LoadedImage(pixels=rgb, display=rgb, source_format="png")).id

    def cases(a: _Args) -> Evidence:
        raise AssertionError("a grey-scale expert must not be offered a colour picture")

    def look(a: _Args) -> Evidence:
        return Evidence(tool="look", image_id=a.image_id, score=0.0, summary="No answer.",
                        data={"answer": None, "question": q})

    grey = make_tool(cases, name="cases", description="Cases.", args_schema=_Args)
    grey.metadata = {"domain": Domain(validated_on="grey-scale radiology", grey_only=True,
                                      outside="refuse")}
    tools = [grey, make_tool(look, name="look", description="Looks.", args_schema=_Args)]
    model = ScriptedChatModel.of([ai(call("look", image_id=img)),
                                  final("No.", [("there is no mass", ["E1"])], 0.9)])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    answer = build_graph(ctx, store=store).invoke(
        {"messages": [("user", q)], "images": [img]}, context=ctx)["answer"]
    assert all("cases" not in str(offer) for offer in model.offered)
    assert answer.abstained and "No offline tool can answer this question: E1 (look)" in answer.text
    assert ("Outside what these tools were built for: cases (a colour image (100% of its "
            "pixels coloured)") in answer.text


def _declining(a: _QArgs) -> Evidence:
    """An expert outside its library on this picture: it withholds its answer."""
    return Evidence(tool="case", image_id=a.image_id, score=0.0,
                    summary="No answer: the image is unlike every image of the case library.",
                    data={"answer": None, "withheld": "unlike", "question": a.question,
                          "out_of_domain": True})


def _lungs(a: _Args) -> Evidence:
    """A chest tool whose result is flagged outside its domain, as on a JPEG."""
    return Evidence(tool="lungs", image_id=a.image_id, score=0.2,
                    summary="Outside what lungs was validated for: lung areas 100 / 90 px.",
                    data={"out_of_domain": True})


def _sized(a: _Args) -> Evidence:
    """A tool that measured something: a result that may stand beside a decline."""
    from tools.evidence import Measurement

    return Evidence(tool="sized", image_id=a.image_id, score=0.8,
                    summary="A rib gap of 4.0 mm.",
                    measurements=[Measurement(name="gap", value=4.0, unit="mm")])


def _tools_after_a_decline(store, expert=_declining):
    from tools.vision.basic import basic_tools

    case = make_tool(expert, name="case", description="Answers from cases.", args_schema=_QArgs)
    case.metadata = {"always_offered": True}
    return [*(t for t in basic_tools(store) if t.name == "describe_image"), case,
            make_tool(_lungs, name="lungs", description="Lung areas.", args_schema=_Args),
            make_tool(_sized, name="sized", description="Gap sizes.", args_schema=_Args)]


def test_after_a_decline_two_rounds_that_found_nothing_usable_stop_the_loop(store,
                                                                          medloop_home):
    """On the blank baseline the planner spent all five rounds on tools, to abstain (70/72)."""
    img = _real_image(store)
    model = ScriptedChatModel.of([ai(call("describe_image", image_id=img)),
                                  ai(call("lungs", image_id=img))]
                                 + [ai(call("sized", image_id=img))] * 3)
    out = _ask(model, _tools_after_a_decline(store), img, store, medloop_home,
               consult_experts=True)
    assert len(model.offered) == 2  # the pixels' reading, then a flagged result: no third call
    answer = out["answer"]
    assert answer.abstained and not answer.budget_exhausted
    assert answer.text.startswith("No offline tool can answer this question: E1 (case)")
    assert "round budget ran out" not in answer.text
    stop = [t for t in out["trace"] if t["step"] == "think"][-1]
    assert stop["calls"] == [] and stop["stopped"].startswith("E1 (case) declined this question")
    assert any(n.startswith("stopped before the round budget: E1 (case)") for n in answer.notes)


def test_a_round_that_found_a_result_keeps_the_loop_going(store, medloop_home):
    """A measurement may stand beside the decline: the planner gets to answer from it."""
    img = _real_image(store)
    model = ScriptedChatModel.of([ai(call("describe_image", image_id=img)),
                                  ai(call("sized", image_id=img)),
                                  ai(call("lungs", image_id=img)),
                                  final("A 4.0 mm gap.", [("a rib gap of 4.0 mm", ["E3"])], 0.9)])
    out = _ask(model, _tools_after_a_decline(store), img, store, medloop_home,
               consult_experts=True)
    assert len(model.offered) == 4  # the second round found a result: no stop after the third
    assert not any(t.get("stopped") for t in out["trace"] if t["step"] == "think")
    assert "4.0 mm" in out["answer"].text


def test_without_a_decline_rounds_that_found_nothing_do_not_stop_the_loop(store,
                                                                        medloop_home):
    """The expert answered: the planner may still carry its answer, after any detour."""
    img = _real_image(store)
    model = ScriptedChatModel.of([ai(call("describe_image", image_id=img)),
                                  ai(call("lungs", image_id=img)),
                                  final("No.", [("no fracture", ["E1"])], 0.8)])
    out = _ask(model, _tools_after_a_decline(store, expert=_case), img, store, medloop_home,
               consult_experts=True)
    assert len(model.offered) == 3
    assert not out["answer"].abstained and out["answer"].text.startswith("No")
