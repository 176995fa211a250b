"""tools.domain: judging an image against a tool's declared domain, and flagging evidence."""

from __future__ import annotations

import numpy as np
import pytest

from tools.domain import (
    ANY_IMAGE,
    COLOUR_SHARE,
    FLAGGED_SCORE_FACTOR,
    Domain,
    ImageFacts,
    colour_share,
    flag_evidence,
)
from tools.errors import OutsideDomain, ToolInputError
from tools.evidence import Evidence
from tools.image import ImageRef, LoadedImage

CHEST = Domain(validated_on="frontal chest radiographs", modalities=frozenset({"CR", "DX"}),
               body_parts=frozenset({"CHEST"}), projections=frozenset({"PA", "AP"}),
               outside="refuse", unknown="flag")
PHANTOMS = Domain(validated_on="phantoms", synthetic_only=True, outside="flag")


def _img(meta: dict, fmt: str = "dicom") -> LoadedImage:
    return LoadedImage(pixels=np.zeros((4, 4)), display=np.zeros((4, 4), np.uint8), meta=meta,
                       source_format=fmt)


@pytest.mark.parametrize("meta, status", [
    ({"modality": "CR", "body_part": "CHEST", "view_position": "PA"}, "inside"),
    ({"modality": "CT"}, "outside"),
    ({"modality": "DX", "body_part": "KNEE", "view_position": "AP"}, "outside"),
    ({"modality": "DX", "body_part": "chest", "view_position": "LL"}, "outside"),
    ({"modality": "unknown"}, "unknown"),  # a JPEG: the loader writes "unknown"
    ({"modality": "DX", "body_part": "CHEST"}, "unknown"),  # no view
])
def test_metadata_decides_inside_outside_or_unknown(meta, status):
    assert CHEST.judge(ImageFacts.of_image(_img(meta))).status == status


def test_synthetic_only_domains_take_phantoms_and_nothing_clinical():
    assert PHANTOMS.judge(ImageFacts.of_image(_img({"modality": "CT"}, "phantom"))).status \
        == "inside"
    assert PHANTOMS.judge(ImageFacts.of_image(_img({"phantom": True}, "png"))).status == "inside"
    verdict = PHANTOMS.judge(ImageFacts.of_image(_img({"modality": "unknown"}, "jpeg")))
    assert verdict.status == "outside" and "clinical jpeg" in verdict.reason


def test_clinical_only_domains_refuse_phantoms_and_take_every_clinical_image():
    real = Domain(validated_on="real cases", clinical_only=True, outside="refuse")
    assert not real.is_any
    verdict = real.judge(ImageFacts.of_image(_img({"modality": "CT"}, "phantom")))
    assert verdict.status == "outside" and "not a clinical image" in verdict.reason
    assert not real.admits(ImageFacts.of_ref(ImageRef(id="img-000000000001",
                                                      source_format="phantom")))
    for meta, fmt in (({"modality": "unknown"}, "jpeg"), ({"modality": "MR"}, "dicom")):
        assert real.judge(ImageFacts.of_image(_img(meta, fmt))).status == "inside"
    with pytest.raises(ToolInputError, match="not a clinical image"):
        real.screen(ImageFacts(source_format="phantom", synthetic=True), "case_answer")


def test_screen_refuses_flags_or_runs_per_the_declaration():
    with pytest.raises(ToolInputError, match=r"frontal chest radiographs only.*modality is CT"):
        CHEST.screen(ImageFacts(modality="CT", source_format="dicom"), "find")
    note = CHEST.screen(ImageFacts(source_format="jpeg"), "find")
    assert note and "cannot be established" in note
    assert CHEST.screen(ImageFacts(modality="CR", body_part="CHEST", view="PA"), "find") is None
    runs = Domain(validated_on="x", modalities=frozenset({"CT"}), unknown="run")
    assert runs.screen(ImageFacts(source_format="jpeg"), "window") is None
    assert ANY_IMAGE.is_any and ANY_IMAGE.admits(ImageFacts(modality="MR"))
    assert not CHEST.admits(ImageFacts(modality="MR")) and CHEST.admits(ImageFacts())


def _rgb(grey: np.ndarray, red_share: float) -> np.ndarray:
    """A grey picture saved as RGB, with the first ``red_share`` of its rows painted red."""
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    rgb[: round(red_share * grey.shape[0])] = (200, 30, 30)
    return rgb


def test_colour_share_counts_coloured_pixels_not_jpeg_noise_on_grey():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (100, 100)).astype(np.uint8)
    assert colour_share(grey) == 0.0
    noisy = np.clip(np.repeat(grey[..., None], 3, -1).astype(int)
                    + rng.integers(-12, 13, (100, 100, 3)), 0, 255).astype(np.uint8)
    assert colour_share(noisy) == 0.0  # a grey JPEG's channels differ by a few levels
    assert colour_share(_rgb(grey, 0.01)) == pytest.approx(0.01)  # an arrow drawn in red
    assert colour_share(_rgb(grey, 0.30)) == pytest.approx(0.30)


def test_grey_only_domains_refuse_a_colour_picture_whatever_its_metadata():
    grey_only = Domain(validated_on="grey-scale radiology", clinical_only=True, grey_only=True,
                       outside="refuse")
    grey = np.full((50, 50), 90, np.uint8)
    arrows = LoadedImage(pixels=grey, display=_rgb(grey, 0.01), source_format="jpeg")
    photo = LoadedImage(pixels=grey, display=_rgb(grey, 0.4), meta={"modality": "CT"},
                        source_format="dicom")
    assert 0.01 < COLOUR_SHARE < 0.4
    assert grey_only.judge(ImageFacts.of_image(arrows)).status == "inside"
    verdict = grey_only.judge(ImageFacts.of_image(photo))
    assert verdict.status == "outside" and "a colour image (40% of its pixels" in verdict.reason
    with pytest.raises(OutsideDomain, match="validated on grey-scale radiology only") as err:
        grey_only.screen(ImageFacts.of_image(photo), "case_answer")
    assert err.value.reason == verdict.reason and isinstance(err.value, ToolInputError)
    # a state reference carries the share measured when the image was stored
    assert ImageFacts.of_ref(ImageRef(id="img-000000000002", source_format="jpeg")).colour \
        is None
    assert ImageFacts.of_ref(ImageRef(id="img-000000000003", colour=0.4)).colour == 0.4


def test_the_store_measures_a_pictures_colour_once_for_its_reference(tmp_path):
    from tools.store import ImageStore

    grey = np.full((40, 40), 90, np.uint8)
    store = ImageStore(tmp_path / "store")
    shown = _rgb(grey, 0.25)
    photo = store.put(LoadedImage(pixels=shown, display=shown, source_format="png"))
    film = store.put(LoadedImage(pixels=grey, display=grey, source_format="png"))
    assert photo.colour == pytest.approx(0.25) and film.colour == 0.0
    assert store.ref(photo.id).colour == photo.colour


def test_a_ref_knows_modality_and_format_only():
    ref = ImageRef(id="img-000000000000", modality="CT", source_format="dicom")
    facts = ImageFacts.of_ref(ref)
    assert (facts.modality, facts.body_part, facts.synthetic) == ("CT", None, False)
    assert ImageFacts.of_ref(ImageRef(id="img-000000000001", source_format="phantom")).synthetic


def test_flagged_evidence_says_so_scores_lower_and_is_flagged_once():
    ev = Evidence(tool="t", summary="3 things found.", score=0.9, data={"k": 1})
    flagged = flag_evidence(ev, "a clinical jpeg", "phantoms")
    assert flagged.data == {"k": 1, "out_of_domain": True, "domain_note": "a clinical jpeg"}
    assert flagged.score == pytest.approx(0.9 * FLAGGED_SCORE_FACTOR)
    assert flagged.summary == ("Outside what this tool was validated for (phantoms; a clinical "
                               "jpeg): 3 things found.")
    assert ev.data == {"k": 1} and ev.score == 0.9  # the original is unchanged
    again = flag_evidence(flagged, "76 detections", "phantoms")
    assert again.score == flagged.score and again.summary == flagged.summary
    assert again.data["domain_note"] == "a clinical jpeg; 76 detections"
    assert flag_evidence(Evidence(tool="t", summary="s"), "n", "v").score == FLAGGED_SCORE_FACTOR
