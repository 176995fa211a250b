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


def test_image_tools_are_withheld_when_no_image_is_attached():
    # A question without an image: an image tool could only be called with a made-up id.
    specs = offered_tools(_tools(), [], [])
    assert _names(specs) == ["final_answer"]
