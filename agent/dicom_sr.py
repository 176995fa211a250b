"""The answer as a DICOM Structured Report (TID 1500 measurement report) with its masks as SEG.

What a viewer or PACS can keep beside the images: one Comprehensive 3D SR whose *Imaging
Measurements* hold

* an answer group: the answer text (its tracking identifier), the answer's confidence as a
  Probability (DCM 122157, unit 1), and the agent as the algorithm (with "abstained" and any
  contradictions as its parameters);
* one group per (finding, cited evidence item): the finding's statement and the evidence id
  as the tracking identifier; the tool and model that produced the evidence as the algorithm
  (TID 4019), with the evidence summary and the pixel spacing used (value and source attribute,
  or "unknown: values in pixels") as its parameters; each measurement with its UCUM unit; the
  tool's own score; present/absent assertions as qualitative evaluations. A group whose
  evidence drew a mask points at its segment in the Segmentation (TID 1410); otherwise it
  points at its source image (TID 1501).

Masks become DICOM Segmentations (``tools.export.dicom_seg``), one per source image.

Which UIDs: the source images are referenced by the *pseudonymous* UIDs that keyed
de-identification (``tools.ingest.pseudonym``) gives them at this site, and patient and study
come from the de-identified header; no original UID, name or date is written. A site maps the
references back to its originals forward, with its secret: ``SiteKey.uid(original)`` (or
``medloop deid`` of the study with the same secret) yields the pseudonym of each original UID,
so a lookup over the study's originals finds the one an SR names; nobody without the secret
can. The report's own dates (content, series, instance creation) are shifted by the patient's
shift too, since an unshifted creation date next to a shifted study date would give the shift
away. Finding statements and the answer are the planner's words: they hold no identifier unless
the question put one there.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from agent.answer import Answer, Claim
from tools.evidence import Evidence
from tools.export.dicom_seg import SegmentInput, build_segmentation

__all__ = ["DicomResults", "DicomSource", "build_results", "medloop_version", "write_results"]

SR_SERIES_NUMBER = 9902
_LOCAL = "99MEDLOOP"  # private coding scheme for concepts no standard code names
# medloop unit -> (UCUM code, meaning)
_UNITS = {
    "mm": ("mm", "millimeter"),
    "mm2": ("mm2", "square millimeter"),
    "cm": ("cm", "centimeter"),
    "cm2": ("cm2", "square centimeter"),
    "ml": ("ml", "milliliter"),
    "HU": ("[hnsf'U]", "Hounsfield unit"),
    "px": ("{pixels}", "pixels"),
    "px2": ("{square pixels}", "square pixels"),
    "fraction": ("1", "no units"),
    "a.u.": ("1", "no units"),
    "": ("1", "no units"),
}
# Elements the writer stamps with today's date: shifted like the study's dates.
_OWN_DATES = ("ContentDate", "SeriesDate", "InstanceCreationDate")


@dataclass(frozen=True)
class DicomSource:
    """A stored image that came from one DICOM file.

    Attributes:
        header: its de-identified pydicom header, no pixels
            (``tools.ingest.deid.read_deidentified`` with the site's keyed anonymizer).
        date_shift_days: the days its patient's dates were moved back (``SiteKey``), applied to
            the report's own dates; 0 when unknown.
    """

    header: Any
    date_shift_days: int = 0


@dataclass
class DicomResults:
    """What ``build_results`` made: the SR, the Segmentations it cites, and what was left out."""

    sr: Any
    segmentations: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def medloop_version() -> str:
    """The installed medloop version, recorded as the algorithm and software version."""
    try:
        return metadata.version("medloop")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_results(
    answer: Answer, evidence: Sequence[Evidence], sources: Mapping[str, DicomSource],
    get_mask: Callable[[str], np.ndarray], *, planner: str = "",
) -> DicomResults:
    """The SR (and SEGs) for ``answer``, citing ``evidence``; ``sources`` by store image id.

    ``get_mask`` returns a stored mask by key (``ImageStore.get_array``). Evidence on images
    that are not in ``sources`` (PNG, planes cut from volumes) is reported without a source
    reference, and its masks are left out, each with a note.

    Raises:
        ValueError: ``sources`` is empty: an SR needs a DICOM image to take patient and study
            from.
    """
    if not sources:
        raise ValueError("a DICOM SR needs at least one DICOM source image")
    version = medloop_version()
    by_id = {e.id: e for e in evidence}
    notes: list[str] = []
    cited = _cited(answer.findings, by_id, notes)
    segs, segment_of = _segmentations(cited, sources, get_mask, version, notes)
    groups = [_answer_group(answer, planner, version)]
    for n, claim, ev in cited:
        groups.extend(_evidence_groups(n, claim, ev, sources, segs, segment_of, version))
    sr = _report(groups, sources, segs, version)
    shift = next(iter(sources.values())).date_shift_days
    for ds in (sr, *segs):
        _shift_own_dates(ds, shift)
    return DicomResults(sr=sr, segmentations=segs, notes=notes)


def write_results(results: DicomResults, sr_path: str | Path,
                  seg_path: str | Path | None = None) -> list[Path]:
    """Write the SR to ``sr_path`` and each SEG beside it; the paths written, SR first.

    ``seg_path`` None names the SEGs ``<sr stem>-seg.dcm`` (``-seg2.dcm``, ... for more).
    """
    sr_out = Path(sr_path)
    sr_out.parent.mkdir(parents=True, exist_ok=True)
    results.sr.save_as(sr_out, enforce_file_format=True)
    written = [sr_out]
    base = Path(seg_path) if seg_path else sr_out.with_name(f"{sr_out.stem}-seg.dcm")
    for i, seg in enumerate(results.segmentations, start=1):
        out = base if i == 1 else base.with_name(f"{base.stem}{i}{base.suffix}")
        out.parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(out, enforce_file_format=True)
        written.append(out)
    return written


# ---------------------------------------------------------------------------------------------
# Content
# ---------------------------------------------------------------------------------------------
def _cited(findings: Sequence[Claim], by_id: Mapping[str, Evidence],
           notes: list[str]) -> list[tuple[int, Claim, Evidence]]:
    """(finding number, finding, evidence) for every ok evidence item a finding cites."""
    out = []
    for n, claim in enumerate(findings, start=1):
        for eid in claim.evidence_ids:
            ev = by_id.get(eid)
            if ev is None or ev.status != "ok":
                notes.append(f"finding {n}: evidence {eid} is missing or failed; not reported")
                continue
            out.append((n, claim, ev))
    return out


def _segmentations(
    cited: Sequence[tuple[int, Claim, Evidence]], sources: Mapping[str, DicomSource],
    get_mask: Callable[[str], np.ndarray], version: str, notes: list[str],
) -> tuple[list[Any], dict[str, tuple[Any, int]]]:
    """One SEG per source image with masks; mask key -> (its SEG, its segment number)."""
    per_image: dict[str, list[tuple[str, SegmentInput]]] = {}
    seen: set[str] = set()
    for _, _, ev in cited:
        for key in ev.mask_keys:
            if key in seen:
                continue
            seen.add(key)
            if ev.image_id is None or ev.image_id not in sources:
                notes.append(f"{ev.id}: mask {key} is not on a DICOM source image; not written")
                continue
            label = str(ev.data.get("label") or ev.tool)
            model = str(ev.data.get("model") or ev.tool)
            mask = np.asarray(get_mask(key)).astype(bool)
            per_image.setdefault(ev.image_id, []).append(
                (key, SegmentInput(label=label, mask=mask, algorithm=model, version=version)))
    segs: list[Any] = []
    segment_of: dict[str, tuple[Any, int]] = {}
    for image_id, items in per_image.items():
        try:
            seg = build_segmentation(sources[image_id].header, [s for _, s in items],
                                     software_version=version)
        except ValueError as exc:
            notes.append(f"masks on {image_id} not written: {exc}")
            continue
        segs.append(seg)
        for number, (key, _) in enumerate(items, start=1):
            segment_of[key] = (seg, number)
    return segs, segment_of


def _answer_group(answer: Answer, planner: str, version: str) -> Any:
    """The answer text, its confidence and the agent that produced it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    params = [f"planner {planner}"] if planner else []
    if answer.abstained:
        params.append("abstained: refer to a radiologist")
    params += [f"contradiction: {c}" for c in answer.contradictions]
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"Answer: {answer.text}"),
        algorithm_id=hd.sr.AlgorithmIdentification(
            name="medloop agent", version=version, parameters=params or None),
        measurements=[hd.sr.Measurement(
            name=codes.DCM.Probability, value=round(answer.confidence, 4), unit=_unit(""))],
    )


def _evidence_groups(
    n: int, claim: Claim, ev: Evidence, sources: Mapping[str, DicomSource],
    segs: Sequence[Any], segment_of: Mapping[str, tuple[Any, int]], version: str,
) -> list[Any]:
    """The group(s) for one cited evidence item: one per mask in a SEG, else one."""
    import highdicom as hd

    common: dict[str, Any] = {
        "algorithm_id": hd.sr.AlgorithmIdentification(
            name=str(ev.data.get("model") or ev.tool)[:64], version=version,
            parameters=[f"tool {ev.tool}", f"evidence {ev.id}: {ev.summary}", _spacing(ev)]),
        "qualitative_evaluations": _assertions(ev) or None,
    }
    ident = f"Finding {n} ({ev.id}): {claim.statement}"
    refs = [segment_of[k] for k in ev.mask_keys if k in segment_of]
    source = sources.get(ev.image_id or "")
    if refs and source is not None:
        return [
            hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=ident),
                referenced_segment=_segment_ref(seg, number, source),
                measurements=_measurements(ev) if i == 0 else None,
                **common,
            )
            for i, (seg, number) in enumerate(refs)
        ]
    images = ([hd.sr.SourceImageForMeasurementGroup.from_source_image(source.header)]
              if source is not None else None)
    return [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=ident),
        measurements=_measurements(ev) or None, source_images=images, **common,
    )]


def _segment_ref(seg: Any, number: int, source: DicomSource) -> Any:
    """The reference to segment ``number`` of ``seg`` and the image it was drawn on.

    Built by hand rather than by ``ReferencedSegmentationFrame.from_segmentation``, which
    (highdicom 0.28) fails on a one-segment SEG, whose segment id is in the shared groups.
    ``build_segmentation`` writes one frame per segment, in segment order.
    """
    import highdicom as hd

    ref = hd.sr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        frame_number=number, segment_number=number,
        source_image=hd.sr.SourceImageForSegmentation(
            source.header.SOPClassUID, source.header.SOPInstanceUID),
    )
    # PS3.3 C.10.7.1 (Image SOP Instance Reference): a segment number and a frame number must
    # not both be given (dciodvfy errs); the segment number alone says which frames.
    for item in ref[0].ReferencedSOPSequence:
        if "ReferencedFrameNumber" in item:
            del item.ReferencedFrameNumber
    return ref


def _measurements(ev: Evidence) -> list[Any]:
    """Each measurement with its UCUM unit, then the tool's own score (unit 1)."""
    import highdicom as hd
    from pydicom.sr.coding import Code

    out = [hd.sr.Measurement(name=_concept(m.name), value=m.value, unit=_unit(m.unit))
           for m in ev.measurements]
    if ev.score is not None:
        out.append(hd.sr.Measurement(name=Code("TOOLSCORE", _LOCAL, "Tool quality score"),
                                     value=ev.score, unit=_unit("")))
    return out


def _assertions(ev: Evidence) -> list[Any]:
    """Present/absent statements of the tool, as coded qualitative evaluations."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [hd.sr.QualitativeEvaluation(name=_concept(a.finding),
                                        value=codes.SCT.Present if a.present else codes.SCT.Absent)
            for a in ev.assertions]


def _spacing(ev: Evidence) -> str:
    """The pixel spacing the measurements used, and the attribute it came from."""
    sp = next((m.spacing_mm for m in ev.measurements if m.spacing_mm), None)
    if sp is None:
        return "pixel spacing unknown or unused: lengths in pixels"
    source = ev.data.get("spacing_source") or "the image"
    return f"pixel spacing {sp[0]:.4g} x {sp[1]:.4g} mm from {source}"


def _concept(name: str) -> Any:
    """A coded concept for a measurement or finding name: SNOMED CT where one fits."""
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    words = name.lower()
    if words == "area" or words.endswith("_area"):
        return codes.SCT.Area
    if "diameter" in words:
        return codes.SCT.Diameter
    if words in ("distance", "length") or words.endswith(("_width", "_height")):
        return codes.SCT.Length
    return Code(_code_value(name), _LOCAL, name[:64] or "value")


def _code_value(name: str) -> str:
    """A CodeValue (SH: at most 16 characters, no backslash) for a local concept."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:16] or "value"


def _unit(unit: str) -> Any:
    """The UCUM code for a medloop unit; anything else as a UCUM annotation ``{unit}``."""
    from pydicom.sr.coding import Code

    if unit in _UNITS:
        value, meaning = _UNITS[unit]
    else:
        word = re.sub(r"[^!-z|~]", "_", unit)[:14] or "unit"  # printable, no braces
        value, meaning = f"{{{word}}}", unit[:64]
    return Code(value, "UCUM", meaning)


def _report(groups: Sequence[Any], sources: Mapping[str, DicomSource], segs: Sequence[Any],
            version: str) -> Any:
    """The Comprehensive 3D SR document around the TID 1500 content."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="medloop", manufacturer_name="medloop", model_name=version),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=list(groups),
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*(s.header for s in sources.values()), *segs],
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medloop",
        is_complete=True,
        series_description="medloop answer (not for diagnosis)",
    )


def _shift_own_dates(ds: Any, days: int) -> None:
    """Move the writer's own dates back by the patient's shift (see the module docstring)."""
    if not days:
        return
    for keyword in _OWN_DATES:
        value = str(ds.get(keyword, "") or "")
        if len(value) == 8 and value.isdigit():
            day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:]))
            setattr(ds, keyword, (day - dt.timedelta(days=days)).strftime("%Y%m%d"))
