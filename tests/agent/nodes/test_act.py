"""*act*: a tool that takes the user's question is given it as asked; a measurement of a
flagged tool's mask is flagged too."""

from __future__ import annotations

from pydantic import BaseModel

from agent import AgentContext, build_graph
from tests.conftest import phantom
from tests.fakes import ScriptedChatModel, ai, call, final
from tools.base import make_tool
from tools.evidence import Evidence


class _Args(BaseModel):
    image_id: str
    question: str


class _ImageOnly(BaseModel):
    image_id: str


def test_a_reworded_question_reaches_the_tool_as_asked_and_its_answer_binds(
        store, medloop_home):
    asked = "Is/Are the mass cystic? -yes/no"
    img = store.put(phantom()).id
    seen: list[str] = []

    def expert(a: _Args) -> Evidence:
        seen.append(a.question)
        return Evidence(tool="expert", image_id=a.image_id, score=0.8,
                        summary="Answer: yes (P(yes) = 0.80).",
                        data={"yes_no": "yes", "question": a.question})

    def look(a: _ImageOnly) -> Evidence:
        return Evidence(tool="look", image_id=a.image_id, score=0.5, summary="An image.")

    tools = [make_tool(expert, name="expert", description="Answers.", args_schema=_Args),
             make_tool(look, name="look", description="Looks.", args_schema=_ImageOnly)]
    model = ScriptedChatModel.of([
        ai(call("expert", image_id=img, question="Is the mass cystic?"),
           call("look", image_id=img)),
        final("No.", [("the mass is not cystic", ["E1"])], 0.9),
        final("No.", [("the mass is not cystic", ["E1"])], 0.9),
        final("No.", [("the mass is not cystic", ["E1"])], 0.9),
    ])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke({"messages": [("user", asked)], "images": [img]},
                                               context=ctx)
    assert seen == [asked]
    ev = {e.tool: e for e in out["evidence"]}
    assert ev["expert"].args["question"] == asked and "question" not in ev["look"].args
    # the expert answered this very question "yes": "No." contradicts it and is not given
    answer = out["answer"]
    assert answer.abstained and not answer.text.startswith("No.") and answer.conflicts


def test_a_measurement_of_a_flagged_tools_mask_is_flagged_too():
    from agent.nodes.act import inherit_flags

    lungs = Evidence(id="E1", tool="measure_lungs", summary="Outside what ...: lung areas",
                     mask_keys=["mask-aaaaaaaaaaaa"], data={"out_of_domain": True}, score=0.4)
    clean = Evidence(id="E2", tool="segment", summary="a mask", mask_keys=["mask-bbbbbbbbbbbb"])
    area = Evidence(id="E3", tool="measure", summary="area 120 mm2", score=0.9,
                    args={"image_id": "img-1", "mask_key": "mask-aaaaaaaaaaaa"})
    flagged = inherit_flags(area, [lungs, clean])
    assert flagged.data["out_of_domain"] and flagged.score < area.score
    assert "mask from E1 (measure_lungs)" in flagged.summary
    other = area.model_copy(update={"args": {"mask_key": "mask-bbbbbbbbbbbb"}})
    assert inherit_flags(other, [lungs, clean]) == other  # a clean mask: left alone
    listed = area.model_copy(update={"args": {"mask_keys": ["mask-bbbbbbbbbbbb",
                                                            "mask-aaaaaaaaaaaa"]}})
    assert inherit_flags(listed, [lungs, clean]).data["out_of_domain"]
    failed = area.model_copy(update={"status": "error"})
    assert inherit_flags(failed, [lungs]) == failed


def test_a_tool_refusing_the_image_is_not_run_on_it_again_and_the_answer_says_why(
        store, medloop_home):
    from agent.nodes.act import plan_jobs
    from tools.errors import OutsideDomain

    img = store.put(phantom()).id
    runs: list[str] = []

    def expert(a: _Args) -> Evidence:
        runs.append(a.question)
        raise OutsideDomain("expert is validated on grey-scale radiology only; this image is "
                            "outside that (a colour image): use another tool", "a colour image")

    tools = [make_tool(expert, name="expert", description="Answers.", args_schema=_Args)]
    model = ScriptedChatModel.of([
        ai(call("expert", image_id=img, question="Is there a mass?")),
        ai(call("expert", image_id=img, question="Is there a mass?")),
        final("No.", [("there is no mass", ["E1"])], 0.9),
    ])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None,
                       max_rounds=3)
    out = build_graph(ctx, store=store).invoke(
        {"messages": [("user", "Is there a mass?")], "images": [img]}, context=ctx)
    # the refused tool left the offer, nothing else was left: the planner was not asked again
    (first,) = out["evidence"]
    assert len(runs) == 1 and len(model.offered) == 1
    assert first.summary.startswith("expert cannot take this image:")
    assert "Fix them" not in first.summary and first.data["refused"] == "a colour image"
    answer = out["answer"]
    assert answer.abstained
    assert "Outside what these tools were built for: expert (a colour image)" in answer.text
    # a planner that calls it anyway (any backend that ignores the offer) is not run again
    (again,) = plan_jobs([call("expert", image_id=img, question="Is it a mass?")],
                         {"expert": tools[0]}, [first])
    assert isinstance(again, Evidence) and again.summary.startswith("already refused: see E1")
    assert len(runs) == 1
