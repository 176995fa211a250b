"""tools.spec: a tool's declaration builds the tool the planner sees."""

from __future__ import annotations

import pytest

from tools.base import ImageArgs
from tools.evidence import Evidence
from tools.models.registry import LITE_MEDSAM, ModelNeed, VisionConfig, segmenter_need
from tools.spec import ToolDeps, ToolSpec


def _spec(**kw) -> ToolSpec:
    def build(deps: ToolDeps):
        return lambda args: Evidence(tool="", summary=f"{args.image_id} on {deps.device}")

    return ToolSpec(name="probe", description="Probe an image.", args=ImageArgs, build=build,
                    **kw)


def test_a_spec_builds_a_tool_with_its_name_description_and_schema(store):
    tool = _spec().tool(ToolDeps(store, VisionConfig(device="cpu")))
    assert (tool.name, tool.description, tool.args_schema) == ("probe", "Probe an image.",
                                                                ImageArgs)
    ev = tool.invoke({"image_id": "img-000000000000"})
    assert (ev.tool, ev.summary) == ("probe", "img-000000000000 on cpu")


def test_models_are_fixed_or_follow_the_configuration():
    assert _spec().needs(VisionConfig()) == ()
    assert _spec(models=(LITE_MEDSAM,)).needs(VisionConfig()) == (LITE_MEDSAM,)
    follows = _spec(models=lambda cfg: (segmenter_need(cfg),))
    assert follows.needs(VisionConfig()) == (LITE_MEDSAM,)
    [hf] = follows.needs(VisionConfig(segmenter="hf:org/sam"))
    assert (hf.name, hf.ref, hf.cache_key) == ("hf-segmenter", "org/sam", "hf-sam:org/sam")


def test_a_model_is_packaged_or_configured_never_both():
    with pytest.raises(ValueError, match="not both"):
        ModelNeed("m", "t", distribution="d", ref="r")
    with pytest.raises(ValueError, match="not both"):
        ModelNeed("m", "t")
