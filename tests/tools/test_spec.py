"""tools.spec: a tool's declaration builds the tool the planner sees."""

from __future__ import annotations

import numpy as np
import pytest

from tools.base import ImageArgs
from tools.domain import Domain
from tools.errors import ToolInputError
from tools.evidence import Evidence
from tools.image import LoadedImage
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


def _flat(meta: dict, fmt: str = "dicom") -> LoadedImage:
    return LoadedImage(pixels=np.zeros((8, 8), np.float32), display=np.zeros((8, 8), np.uint8),
                       meta=meta, source_format=fmt)


CHEST_ONLY = Domain(validated_on="frontal chest radiographs", modalities=frozenset({"CR"}),
                    body_parts=frozenset({"CHEST"}), projections=frozenset({"PA"}),
                    outside="refuse", unknown="flag")


def test_the_wrapper_checks_the_domain_before_the_tool_runs(store):
    calls = []

    def build(_deps: ToolDeps):
        def run(args):
            calls.append(args.image_id)
            return Evidence(tool="", summary="2 lungs found.", score=0.8)
        return run

    spec = ToolSpec(name="lungs", description="Find lungs.", args=ImageArgs, build=build,
                    domain=CHEST_ONLY)
    tool = spec.tool(ToolDeps(store))
    assert tool.metadata["domain"] is CHEST_ONLY
    ct = store.put(_flat({"modality": "CT"})).id
    with pytest.raises(ToolInputError, match="outside that \\(modality is CT"):
        tool.invoke({"image_id": ct})
    assert calls == []  # refused before running
    film = _flat({"modality": "CR", "body_part": "CHEST", "view_position": "PA"})
    film.pixels[0, 0] = 1
    inside = tool.invoke({"image_id": store.put(film).id})
    assert inside.summary == "2 lungs found." and "out_of_domain" not in inside.data
    jpeg = _flat({"modality": "unknown"}, "jpeg")
    jpeg.pixels[0, 0] = 2
    flagged = tool.invoke({"image_id": store.put(jpeg).id})
    assert flagged.data["out_of_domain"] is True and flagged.score == pytest.approx(0.2)
    assert "modality, body part, view cannot be established" in flagged.data["domain_note"]
    assert flagged.summary.startswith("Outside what this tool was validated for (frontal chest")


def test_a_domain_can_cover_some_calls_only(store):
    spec = _spec(domain=Domain(validated_on="CT", modalities=frozenset({"CT"}), outside="refuse",
                               applies=lambda args: args.image_id != "img-000000000000"))
    ev = spec.tool(ToolDeps(store)).invoke({"image_id": "img-000000000000"})
    assert ev.summary.startswith("img-000000000000")  # not judged: the store was not asked


def test_every_default_tool_declares_its_domain():
    from agent.planner.toolset import tool_specs

    domains = {s.name: s.domain for s in tool_specs() if not s.variant or s.variant in
               ("lungs", "knn")}
    assert domains["detect_lesions"].synthetic_only
    assert domains["find"].projections == {"PA", "AP"} and domains["find"].outside == "refuse"
    assert domains["measure_lungs"] is domains["find"]
    assert domains["window"].modalities == {"CT"}
    shipped = next(s for s in tool_specs() if s.variant == "shipped-library")
    assert shipped.name == "case_answer" and shipped.domain.clinical_only
    for name in ("describe_image", "region_stats", "measure_distance", "segment", "read_text"):
        assert domains[name].is_any, name
    for spec in tool_specs():
        assert spec.domain.validated_on, spec.name
