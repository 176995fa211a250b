"""agent.planner.offer: what the planner is offered each round."""

from __future__ import annotations

from pydantic import BaseModel

from agent.planner.offer import offered_tools
from tools.base import make_tool
from tools.evidence import Evidence
from tools.image import ImageRef


class MaskArgs(BaseModel):
    image_id: str
    mask_key: str


class ImgArgs(BaseModel):
    image_id: str


def _tools():
    def measure(a: MaskArgs) -> Evidence:
        return Evidence(tool="measure", summary="x")

    def look(a: ImgArgs) -> Evidence:
        return Evidence(tool="look", summary="x")

    return [make_tool(measure, name="measure", description="Measure a mask.", args_schema=MaskArgs),
            make_tool(look, name="look", description="Look at an image.", args_schema=ImgArgs)]


def _names(specs):
    return [s["function"]["name"] for s in specs]


def _tool(name: str, description: str, args_schema: type[BaseModel]):
    """A tool whose result does not matter here: only how it is offered."""
    def run(a: BaseModel) -> Evidence:
        return Evidence(tool=name, summary="x")

    return make_tool(run, name=name, description=description, args_schema=args_schema)


def _props(specs, name):
    (spec,) = [s for s in specs if s["function"]["name"] == name]
    return spec["function"]["parameters"]["properties"]


def test_mask_tools_wait_for_a_mask_and_keys_are_enums():
    images = [ImageRef(id="img-000000000001", summary="a")]
    none = offered_tools(_tools(), images, [])
    assert _names(none) == ["look"]  # no mask yet: measure is withheld, and no final_answer
    assert _props(none, "look")["image_id"]["enum"] == ["img-000000000001"]

    ev = [Evidence(id="E1", tool="segment", summary="m", mask_keys=["mask-aaaaaaaaaaaa"]),
          Evidence(id="E2", tool="segment", status="error", summary="failed",
                   mask_keys=["mask-bbbbbbbbbbbb"])]
    some = offered_tools(_tools(), images, ev)
    assert _names(some) == ["measure", "look", "final_answer"]
    assert _props(some, "measure")["mask_key"]["enum"] == ["mask-aaaaaaaaaaaa"]
    # a mask from a tool outside its domain is not offered: its measurement would be flagged
    flagged = Evidence(id="E3", tool="measure_lungs", summary="Outside what ...",
                       mask_keys=["mask-cccccccccccc"], data={"out_of_domain": True})
    mixed = offered_tools(_tools(), images, [*ev, flagged])
    assert _props(mixed, "measure")["mask_key"]["enum"] == ["mask-aaaaaaaaaaaa"]
    assert "measure" not in _names(offered_tools(_tools(), images, [flagged]))


def test_image_tools_are_withheld_when_no_image_is_attached():
    # A question without an image: an image tool could only be called with a made-up id.
    specs = offered_tools(_tools(), [], [])
    assert _names(specs) == ["final_answer"]


def _domain_tools():
    from tools.domain import Domain

    chest = _tool("lungs", "Find lungs.", ImgArgs)
    chest.metadata = {"domain": Domain(validated_on="chest films", modalities=frozenset({"DX"}),
                                       outside="refuse", unknown="flag")}
    blobs = _tool("blobs", "Find blobs.", ImgArgs)
    blobs.metadata = {"domain": Domain(validated_on="phantoms", synthetic_only=True)}
    return [chest, blobs]


def test_a_tool_is_offered_only_the_images_its_domain_admits():
    ct = ImageRef(id="img-c", modality="CT", source_format="dicom")
    jpeg = ImageRef(id="img-j", source_format="jpeg")
    offer = offered_tools(_domain_tools(), [ct, jpeg], [])
    # The chest tool refuses the CT: only the JPEG (modality unknown: judged when it runs).
    assert _props(offer, "lungs")["image_id"]["enum"] == ["img-j"]
    assert offered_tools(_domain_tools(), [ct], []) and "lungs" not in _names(
        offered_tools(_domain_tools(), [ct], []))


def test_a_grey_scale_tool_is_not_offered_a_colour_picture_and_the_answer_can_name_it():
    from agent.planner.offer import unfit_tools
    from tools.domain import Domain

    grey = _tool("cases", "Answer from cases.", ImgArgs)
    grey.metadata = {"domain": Domain(validated_on="grey-scale radiology", grey_only=True,
                                      outside="refuse")}
    tools = [grey, *_domain_tools()]
    photo = ImageRef(id="img-p", source_format="png", colour=0.38)
    film = ImageRef(id="img-f", source_format="jpeg", colour=0.004)
    assert "cases" not in _names(offered_tools(tools, [photo], []))
    assert _props(offered_tools(tools, [photo, film], []), "cases")["image_id"]["enum"] == [
        "img-f"]
    assert unfit_tools(tools, [photo]) == {
        "cases": "a colour image (38% of its pixels coloured), not a grey-scale CT, MR or "
                 "radiograph"}
    assert unfit_tools(tools, [photo, film]) == {}  # it can still look at the film
    # a ref saved before colours were measured is not held against the tool
    assert "cases" in _names(offered_tools(tools, [ImageRef(id="img-o")], []))


def test_a_tool_outside_its_domain_for_every_image_says_so_in_its_description():
    from agent.planner.offer import OUTSIDE_NOTE

    jpeg = ImageRef(id="img-j", source_format="jpeg")
    phantom = ImageRef(id="img-p", modality="CT", source_format="phantom")
    [desc] = [s["function"]["description"] for s in offered_tools(_domain_tools(), [jpeg], [])
              if s["function"]["name"] == "blobs"]
    assert desc.startswith("Find blobs. " + OUTSIDE_NOTE + " this image (validated on phantoms;")
    assert "img-j" not in desc  # no id in the tools' text: it starts every planner prompt
    assert "not findings" in desc
    [mixed] = [s["function"]["description"]
               for s in offered_tools(_domain_tools(), [jpeg, phantom], [])
               if s["function"]["name"] == "blobs"]
    assert mixed == "Find blobs."  # inside for one image: nothing to warn about


class BoxArgs(BaseModel):
    image_id: str
    box: list[int] | None = None
    k: int = 3


class KnobArgs(BaseModel):
    image_id: str
    k: int = 3
    label: str | None = None


def test_a_tool_that_answered_on_an_image_is_not_offered_it_again():
    def run(a: BaseModel) -> Evidence:
        return Evidence(tool="x", summary="x")

    tools = [make_tool(run, name="look", description="Look.", args_schema=ImgArgs),
             make_tool(run, name="rank", description="Rank.", args_schema=KnobArgs),
             make_tool(run, name="boxed", description="Box stats.", args_schema=BoxArgs)]
    images = [ImageRef(id="img-000000000001", summary="a"),
              ImageRef(id="img-000000000002", summary="b")]
    ev = [Evidence(id="E1", tool="look", summary="chest", image_id="img-000000000001",
                   args={"image_id": "img-000000000001"}),
          Evidence(id="E2", tool="rank", summary="top: chest", image_id="img-000000000001",
                   args={"image_id": "img-000000000001", "k": 5}),
          Evidence(id="E3", tool="boxed", summary="mean 3", image_id="img-000000000001",
                   args={"image_id": "img-000000000001", "box": [1, 2, 3, 4]})]
    specs = offered_tools(tools, images, ev)
    # the other image is still to be looked at; a box tool may be asked about another box
    assert _props(specs, "look")["image_id"]["enum"] == ["img-000000000002"]
    assert _props(specs, "rank")["image_id"]["enum"] == ["img-000000000002"]
    assert _props(specs, "boxed")["image_id"]["enum"] == ["img-000000000001",
                                                          "img-000000000002"]
    one = offered_tools(tools, images[:1], ev)
    assert _names(one) == ["boxed", "final_answer"]
    # a failed call answered nothing: the tool stays on offer for that image
    failed = [ev[0].model_copy(update={"status": "error"})]
    assert "look" in _names(offered_tools(tools, images[:1], failed))
    # evidence of another tool's name withholds nothing
    other = [ev[0].model_copy(update={"tool": "describe_image"})]
    assert _names(offered_tools(tools, images[:1], other))[:2] == ["look", "rank"]


def test_the_catalogue_is_every_tool_without_ids_whatever_the_round():
    from agent.planner.offer import tool_catalogue

    catalogue = tool_catalogue(_tools())
    assert _names(catalogue) == ["measure", "look", "final_answer"]
    assert "enum" not in str(catalogue)  # no ids: the same text for every image and round
    assert tool_catalogue(_tools()) == catalogue


def test_think_hands_the_catalogue_to_a_backend_that_reads_it(tmp_path):
    from typing import ClassVar

    from agent import AgentContext, build_graph
    from tests.fakes import ScriptedChatModel, ai, call, final

    class Reads(ScriptedChatModel):
        reads_tool_catalogue: ClassVar[bool] = True

    images = [ImageRef(id="img-000000000001", summary="a")]
    for cls, expect in ((ScriptedChatModel, False), (Reads, True)):
        model = cls.of([ai(call("look", image_id="img-000000000001")),
                        final("A.", [("a", ["E1"])])])
        ctx = AgentContext(llm=model, tools=_tools(), home=tmp_path, checkpoint=None)
        graph = build_graph(ctx)
        graph.invoke({"messages": [("user", "look")], "image_refs": images}, context=ctx)
        got = [k.get("tool_catalogue") for k in model.bind_kwargs]
        if expect:
            assert all(_names(c) == ["measure", "look", "final_answer"] for c in got)
            assert _names(model.offered[1]) == ["final_answer"]  # look answered; no mask yet
        else:
            assert got == [None, None]


def test_final_answer_is_bound_to_the_yes_no_the_evidence_gave_this_question():
    import re

    from agent.planner.offer import bind_answer

    q = "Is there a midline shift?"
    ev = [Evidence(id="E1", tool="case_answer", summary="Answer: no", score=0.6,
                   data={"yes_no": "no", "question": q})]
    offer = offered_tools(_tools(), [ImageRef(id="img-000000000001", summary="a")], ev)
    bound = bind_answer(offer, "no")
    pattern = _props(bound, "final_answer")["answer"]["pattern"]
    assert re.match(pattern, "No. The midline is straight.")
    assert re.match(pattern, "No.")
    for wrong in ("Yes, there is a shift.", "There is a shift.", 'No. "quoted"', "No\nYes"):
        assert not re.match(pattern, wrong), wrong
    assert _props(bound, "look") == _props(offer, "look")  # the other tools untouched
    assert "pattern" not in _props(offer, "final_answer")["answer"]  # a copy was bound
    assert bind_answer(offer, None) == offer  # the evidence did not answer it
    count = _props(bind_answer(offer, "2"), "final_answer")["answer"]["pattern"]
    for right in ("2", "2.", "2 focal lesions.", "2, both in the upper right."):
        assert re.match(count, right), right
    for wrong in ("25 lesions.", "The lesion is in the upper right.", "Two lesions."):
        assert not re.match(count, wrong), wrong
    side = _props(bind_answer(offer, "Right"), "final_answer")["answer"]["pattern"]
    assert re.match(side, "Right, on the patient's right side.") and re.match(side, "Right")
    assert not re.match(side, "Left.") and not re.match(side, "Rightward.")
    size = _props(bind_answer(offer, "13.5 mm"), "final_answer")["answer"]["pattern"]
    assert "\\" not in size  # no escapes: llama.cpp's converter would keep the backslash
    assert re.match(size, "13.5 mm.") and not re.match(size, "1305 mm.")
    assert bind_answer(offer, 'a "quoted" lead') == offer  # not a plain lead: left unbound
    film = _props(bind_answer(offer, "Chest x-ray"), "final_answer")["answer"]["pattern"]
    assert "\\" not in film and re.match(film, "Chest x-ray, a frontal film.")
    assert not re.match(film, "Chest xray.") and not re.match(film, "CT.")
    seq = _props(bind_answer(offer, "MRI/FLAIR"), "final_answer")["answer"]["pattern"]
    assert re.match(seq, "MRI/FLAIR") and not re.match(seq, "MRI FLAIR")


def test_a_constrained_planner_cannot_answer_against_the_evidence(store, medloop_home):
    """The graph binds the answer; the scripted planner is shown the bound schema."""
    from agent import AgentContext, build_graph
    from tests.conftest import phantom
    from tests.fakes import ScriptedChatModel, ai, call, final

    q = "Is there a midline shift?"
    img = store.put(phantom()).id

    def case(a: ImgArgs) -> Evidence:
        return Evidence(tool="case", summary="Answer: yes", score=0.7, image_id=a.image_id,
                        data={"yes_no": "yes", "question": q})

    tools = [make_tool(case, name="case", description="Case answer.", args_schema=ImgArgs)]
    model = ScriptedChatModel.of([ai(call("case", image_id=img)),
                                  final("Yes, there is a shift.", [("shift", ["E1"])])])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke({"messages": [("user", q)], "images": [img]},
                                               context=ctx)
    assert "pattern" not in str(model.offered[0])  # nothing answered yet: nothing bound
    (fa,) = [s for s in model.offered[1] if s["function"]["name"] == "final_answer"]
    assert fa["function"]["parameters"]["properties"]["answer"]["pattern"].startswith("^Yes")
    assert out["answer"].text.startswith("Yes")


def test_a_tool_that_failed_twice_running_on_an_image_is_withheld_for_it():
    from agent.planner.offer import failing_images

    img = "img-000000000001"
    images = [ImageRef(id=img, summary="a")]

    def fail(n):
        return Evidence(id=f"E{n}", tool="look", status="error", summary="bad target",
                        args={"image_id": img})

    assert "look" in _names(offered_tools(_tools(), images, [fail(1)]))  # once: may fix args
    assert failing_images([fail(1), fail(2)]) == {"look": [img]}
    assert "look" not in _names(offered_tools(_tools(), images, [fail(1), fail(2)]))
    ok = Evidence(id="E3", tool="look", summary="fine", args={"image_id": img}, image_id=img)
    assert failing_images([fail(1), fail(2), ok]) == {}  # a success since resets the streak
    # refused as outside its domain: no other arguments mend the image, withheld at once
    refused = fail(4).model_copy(update={"data": {"refused": "a colour image"}})
    assert failing_images([ok, refused]) == {"look": [img]}
    assert "look" not in _names(offered_tools(_tools(), images, [refused]))


class QueryArgs(BaseModel):
    query: str


def test_a_tool_without_an_image_that_failed_twice_running_is_withheld():
    from agent.planner.offer import failing_images

    tools = [*_tools(), _tool("search", "Search reports.", QueryArgs)]
    images = [ImageRef(id="img-000000000001", summary="a")]
    fails = [Evidence(id=f"E{n}", tool="search", status="error", summary="no report index",
                      args={"query": f"effusion {n}"}) for n in (1, 2)]
    assert failing_images(fails) == {"search": [""]}
    assert "search" in _names(offered_tools(tools, images, fails[:1]))
    assert "search" not in _names(offered_tools(tools, images, fails))
    assert "look" in _names(offered_tools(tools, images, fails))  # the others stay


def test_with_nothing_left_to_call_or_cite_the_agent_abstains_without_asking(store,
                                                                          medloop_home):
    from agent import AgentContext, build_graph
    from tests.conftest import phantom
    from tests.fakes import ScriptedChatModel, ai, call
    from tools.errors import ToolInputError

    img = store.put(phantom()).id

    def look(a: ImgArgs) -> Evidence:
        raise ToolInputError("cannot look at this")

    tools = [make_tool(look, name="look", description="Look.", args_schema=ImgArgs)]
    model = ScriptedChatModel.of([ai(call("look", image_id=img)) for _ in range(2)])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke(
        {"messages": [("user", "What is it?")], "images": [img]}, context=ctx)
    assert [_names(o) for o in model.offered] == [["look"], ["look"]]  # no third call
    assert out["answer"].abstained and not out["answer"].budget_exhausted
    assert [s.get("stopped") for s in out["trace"] if s["step"] == "think"][-1] == (
        "no tool left to call and no evidence to cite")


def test_final_answer_waits_while_every_result_is_outside_its_tools_domain():
    """The Qwen planners answered from measure_lungs' lung areas on abdominal CTs."""
    images = [ImageRef(id="img-000000000001", summary="a")]
    flagged = Evidence(id="E1", tool="lungs", summary="Outside what ...: lung areas",
                       data={"out_of_domain": True})
    assert _names(offered_tools(_tools(), images, [flagged])) == ["look"]
    # nothing else left to call: it may answer (and the check then abstains, naming E1)
    looked = Evidence(id="E2", tool="look", summary="x", data={"out_of_domain": True})
    assert _names(offered_tools(_tools()[:1], images, [flagged, looked])) == ["final_answer"]
    inside = Evidence(id="E3", tool="look", summary="x")
    offer = offered_tools(_tools(), images, [flagged, inside])
    assert _names(offer)[-1] == "final_answer"
    # the flagged result is not citable beside one that is not; alone, it is
    cite = _props(offer, "final_answer")["claims"]["items"]["properties"]["evidence_ids"]
    assert cite["items"]["enum"] == ["E3"]
    alone = offered_tools(_tools()[:1], images, [flagged, looked])
    cite = _props(alone, "final_answer")["claims"]["items"]["properties"]["evidence_ids"]
    assert cite["items"]["enum"] == ["E1", "E2"]


def test_results_that_cannot_bear_on_the_question_are_citable_only_alone():
    images = [ImageRef(id="img-000000000001", summary="a")]
    pixels = Evidence(id="E1", tool="look", summary="256 x 256 px", data={"observes": "pixels"})
    answer = Evidence(id="E2", tool="case", summary="Answer: no.")

    def cite(evidence):
        offer = offered_tools(_tools(), images, evidence,
                              lambda ev: ev.data.get("observes") != "pixels")
        props = _props(offer, "final_answer")["claims"]["items"]["properties"]
        return props["evidence_ids"]["items"]["enum"]

    assert cite([pixels, answer]) == ["E2"]
    assert cite([pixels]) == ["E1"]  # nothing else: the check then names it
    plain = offered_tools(_tools(), images, [pixels, answer])  # no question given: all citable
    props = _props(plain, "final_answer")["claims"]["items"]["properties"]
    assert props["evidence_ids"]["items"]["enum"] == ["E1", "E2"]


def test_a_closed_set_of_argument_values_becomes_an_enum(medloop_home, store):
    """``ToolSpec.choices``: the small planner had filled classify's task with "find multiple
    infarcts"; offered, only the trained tasks can be named (an optional argument stays
    optional)."""
    from pydantic import Field

    from agent import AgentContext
    from agent.planner.toolset import default_tools

    class TaskArgs(BaseModel):
        image_id: str
        task: str | None = Field(default=None, description="one task")

    tool = make_tool(lambda a: Evidence(tool="heads", summary="x"), name="heads",
                     description="Heads.", args_schema=TaskArgs)
    tool.metadata = {"choices": {"task": ["modality", "organ"]}}
    images = [ImageRef(id="img-000000000001", summary="a")]
    params = offered_tools([tool], images, [])[0]["function"]["parameters"]
    assert params["properties"]["task"] == {"type": "string", "enum": ["modality", "organ"],
                                            "description": "one task"}
    assert params["required"] == ["image_id"]

    tools = {t.name: t for t in default_tools(AgentContext(home=medloop_home, checkpoint=None),
                                              store)}
    assert tools["classify"].metadata["choices"] == {"task": ["modality", "organ", "plane"]}


class AskArgs(BaseModel):
    image_id: str
    question: str


def test_a_tool_that_took_this_very_question_is_not_offered_again_on_that_image():
    tools = [*_tools(), _tool("ask", "Answer from cases.", AskArgs)]
    one, two = "img-000000000001", "img-000000000002"
    images = [ImageRef(id=one, summary="a"), ImageRef(id=two, summary="b")]
    answered = Evidence(id="E1", tool="ask", summary="No answer.", image_id=one,
                        args={"image_id": one, "question": "Is there a mass?"})
    # answered, it stays offered (question-taking tools ask something new each time) ...
    assert _props(offered_tools(tools, images, [answered]), "ask")["image_id"]["enum"] == [
        one, two]
    # ... unless it took the question being answered: then only the other image is left
    again = offered_tools(tools, images, [answered], asked=[answered])
    assert _props(again, "ask")["image_id"]["enum"] == [two]
    assert "ask" not in _names(offered_tools(tools, images[:1], [answered], asked=[answered]))
    assert "look" in _names(again)
