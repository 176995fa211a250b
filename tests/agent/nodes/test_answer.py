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


def test_an_answer_to_a_declined_question_is_not_given(store, medloop_home):
    q = "Is this image abnormal?"
    img = store.put(phantom()).id

    def case(a: _Args) -> Evidence:
        return Evidence(tool="case", image_id=a.image_id, score=0.0,
                        summary="No answer: similar cases cannot answer this kind of question "
                                "reliably; no offline tool checked it.",
                        data={"answer": None, "withheld": "no", "question": q})

    tools = [make_tool(case, name="case", description="Cases.", args_schema=_Args)]
    model = ScriptedChatModel.of([ai(call("case", image_id=img)),
                                  final("No.", [("not abnormal", ["E1"])], 0.9)])
    ctx = AgentContext(llm=model, tools=tools, home=medloop_home, checkpoint=None)
    out = build_graph(ctx, store=store).invoke({"messages": [("user", q)], "images": [img]},
                                               context=ctx)
    answer = out["answer"]
    assert answer.abstained and "No offline tool can answer this question" in answer.text
    assert "E1 (case)" in answer.text and not answer.text.startswith("No.")
    assert any("declined this question" in n for n in answer.notes)
