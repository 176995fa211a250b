"""De-identifying DICOM files: the PS3.15 Annex E Basic Application Level Confidentiality Profile.

Why dicognito: the profile's table has hundreds of rows and changes with every edition of the
standard, so we use a maintained implementation rather than a hand-copied table. dicognito
replaces every PN with a fake name, every date/time with one shifted by a per-run offset (so
intervals between the studies of one patient survive), every UID (except SOP Class and Transfer
Syntax UIDs) with a new one derived from the old one and a per-run random seed, known identifier
elements (PatientID, AccessionNumber, StationName, ...) with fake ids, and institution/address
elements with fake addresses. One ``Anonymizer`` reused over the files of a study therefore maps
the same StudyInstanceUID (or PatientID) in to the same one out.

With a site key (``new_anonymizer(key=SiteKey...)``, ``tools.ingest.pseudonym``) the mapping is
keyed instead of random: the same original UID, id or patient maps to the same pseudonym and the
same date shift in every run and process, so a re-uploaded study lands on the same pseudonymous
study; different sites' keys give unrelated mappings.

On top of dicognito this module:

* removes free-text and descriptor elements the profile marks X (comments, descriptions,
  patient history, procedure descriptions, protocol name, device serial number, ...) that
  dicognito leaves alone, because free text is where identifiers hide (``_REMOVE``);
* removes overlays (60xx groups) and curves (50xx groups), whose data the profile removes;
* removes every private element (``remove_private_tags``): their meaning is vendor-specific,
  so no table can vouch for them;
* records what was done: PatientIdentityRemoved, DeidentificationMethod and
  DeidentificationMethodCodeSequence with 113100 (Basic Application Confidentiality Profile).
  113105 (Clean Descriptors) is *not* claimed, because descriptors are removed, not cleaned.

The pixel data is never touched: text burned into the pixels (common in ultrasound and
secondary captures) survives. When ``BurnedInAnnotation`` is ``YES`` the file keeps
``PatientIdentityRemoved = NO`` (the standard defines YES as "removed from the attributes *and
the pixel data*") and the report warns; ``tools.ingest.burned_in`` can find and black out such text.

Files are read without ``force=True`` (arbitrary bytes are never parsed as a dataset) and
reports name files by their name only, never their folder, since paths can hold patient names.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tools.errors import IngestError, NotAnImageError
from tools.ingest.pseudonym import KeyedAnonymizer, SiteKey
from tools.ingest.values import one_line

__all__ = [
    "DeidReport",
    "deidentify_dataset",
    "deidentify_file",
    "deidentify_tree",
    "new_anonymizer",
    "read_deidentified",
]

# Elements the Basic Profile removes (action X, or X/Z, X/D where removal is allowed) that
# dicognito 0.19 leaves unchanged: free text, descriptors, and patient characteristics. Names,
# ids, dates and UIDs are dicognito's job and are not repeated here.
_REMOVE = (
    # free-text comments and histories
    "AdditionalPatientHistory",
    "AdmittingDiagnosesDescription",
    "AcquisitionComments",
    "Allergies",
    "DerivationDescription",
    "DischargeDiagnosisDescription",
    "FrameComments",
    "IdentifyingComments",
    "ImageComments",
    "ImagingServiceRequestComments",
    "InterpretationText",
    "MedicalAlerts",
    "PatientComments",
    "PatientState",
    "ReasonForStudy",
    "ReasonForTheRequestedProcedure",
    "RequestedProcedureComments",
    "ServiceEpisodeDescription",
    "SpecialNeeds",
    "StudyComments",
    "TextComments",
    "TextString",
    "VisitComments",
    # descriptors (kept only under the Clean Descriptors option, which is not applied)
    "PerformedProcedureStepDescription",
    "ProtocolName",
    "RequestedProcedureDescription",
    "ScheduledProcedureStepDescription",
    "SeriesDescription",
    "StudyDescription",
    # patient characteristics and demographics (kept only under the Retain Patient
    # Characteristics option, which is not applied)
    "EthnicGroup",
    "PatientAge",
    "PatientSize",
    "PatientWeight",
    "PregnancyStatus",
    "SmokingStatus",
    "IssuerOfPatientID",
    "AdmissionID",
    "PatientBirthTime",
    "PersonAddress",
    "PersonTelephoneNumbers",
    "PerformedLocation",
    "ScheduledStudyLocation",
    # device identity (can identify the site and so narrow down the patient)
    "DeviceSerialNumber",
    # whole sequences whose items are request / patient records
    "RequestAttributesSequence",
    "ReferencedPatientSequence",
    "OtherPatientIDsSequence",
    # copies of the original values, signatures over them, and padding that can hold anything
    "OriginalAttributesSequence",
    "EncryptedAttributesSequence",
    "DigitalSignaturesSequence",
    "MACParametersSequence",
    "DataSetTrailingPadding",
)
# Repeating groups: overlays 6000-601E (even) and the retired curves 5000-501E. The profile
# removes overlay data (xxxx,3000) and comments (xxxx,4000) and all curve data; the whole overlay
# group goes, so that no overlay is left described (rows, columns, origin) but without its data.
# Overlays can carry clinical marks (a lesion outline): they are lost, as the profile requires.
_OVERLAY_GROUPS = range(0x6000, 0x6020, 2)
_CURVE_GROUPS = range(0x5000, 0x5020, 2)

_BASIC_PROFILE = ("113100", "DCM", "Basic Application Confidentiality Profile")

# dicognito's randomizer state is mutated while it anonymizes: one lock per process keeps a
# shared Anonymizer consistent when the CLI or app calls it from several threads.
_LOCK = threading.Lock()


@dataclass
class DeidReport:
    """What de-identifying one file did.

    Attributes:
        source: the input file's name only (never its folder), or "<dataset>".
        output: the output file's name only, or None when nothing was written.
        changed: elements whose value was replaced (names, ids, dates, UIDs, ...), counted
            over the whole dataset including nested sequence items and the file meta.
        removed: standard elements removed (free text, descriptors, overlays, ...), not
            counting the contents of removed sequences.
        private_removed: private elements removed.
        uids_remapped: whether StudyInstanceUID / SOPInstanceUID were given new values.
        warnings: caveats the user must read, e.g. burned-in annotation in the pixels.
        elapsed_s: wall time in seconds.
        skipped: True when the file was not DICOM and nothing was written (``deidentify_tree``).
    """

    source: str
    output: str | None = None
    changed: int = 0
    removed: int = 0
    private_removed: int = 0
    uids_remapped: bool = False
    warnings: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    skipped: bool = False

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able dict for ``medloop deid --json``."""
        return asdict(self)


def new_anonymizer(seed: str | None = None, key: SiteKey | None = None) -> Any:
    """A dicognito ``Anonymizer``; reuse one across the files of a study for consistent UIDs.

    ``seed`` and ``key`` None give a random mapping per run: the same input de-identified twice
    gets unlinkable outputs. ``key`` (a site's ``SiteKey``) gives the keyed, per-patient mapping
    of ``tools.ingest.pseudonym``: the same in every run and process, so linkable at will by the
    site, and by anyone who gets its secret. A fixed ``seed`` alone makes dicognito's mapping
    reproducible with one date shift for everybody; prefer ``key``.
    """
    if key is not None:
        return KeyedAnonymizer(key)
    from dicognito.anonymizer import Anonymizer

    return Anonymizer(seed=seed)


def deidentify_dataset(ds: Any, anonymizer: Any, source: str = "<dataset>") -> DeidReport:
    """De-identify a pydicom ``Dataset`` in place and report what changed.

    SOPClassUID, TransferSyntaxUID and the pixel data are left as they are.
    """
    import dicognito
    from pydicom.dataset import Dataset

    t0 = time.perf_counter()
    report = DeidReport(source=source)
    before = _snapshot(ds)
    study_uid, sop_uid = ds.get("StudyInstanceUID"), ds.get("SOPInstanceUID")
    burned_in = str(ds.get("BurnedInAnnotation", "")).upper()

    ds.remove_private_tags()
    with _LOCK:
        anonymizer.anonymize(ds)
    _remove_elements(ds)

    after = _snapshot(ds)
    gone = [k for k in before if k not in after and not _in_removed(k, after)]
    report.private_removed = sum(1 for k in gone if (k[-1] >> 16) % 2 == 1)
    report.removed = len(gone) - report.private_removed
    report.changed = sum(1 for k, v in before.items() if k in after and after[k] != v)
    report.uids_remapped = bool(
        (study_uid and ds.get("StudyInstanceUID") != study_uid)
        or (sop_uid and ds.get("SOPInstanceUID") != sop_uid)
    )

    identity_removed = burned_in != "YES"
    ds.PatientIdentityRemoved = "YES" if identity_removed else "NO"
    # LO, so at most 64 characters per value: several values rather than one long sentence.
    method = [
        f"medloop: dicognito {dicognito.__version__} Basic Profile",
        "free text, descriptors, overlays, curves removed",
        "private tags removed",
        "pixel data unchanged",
    ]
    if isinstance(anonymizer, KeyedAnonymizer):  # which key: a site can tell its own outputs
        method.append(f"keyed pseudonyms, site key {anonymizer.key.fingerprint}")
    ds.DeidentificationMethod = method
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = _BASIC_PROFILE
    ds.DeidentificationMethodCodeSequence = [code]

    if burned_in == "YES":
        report.warnings.append(
            "BurnedInAnnotation=YES: pixel data may contain identifiers; "
            "PatientIdentityRemoved set to NO"
        )
    elif not burned_in and str(ds.get("Modality", "")) in ("US", "OT", "XC", "ES", "SC"):
        report.warnings.append(
            f"BurnedInAnnotation not stated for modality {ds.get('Modality')}: such images "
            "often carry text in the pixels; check them (medloop's read_text tool)"
        )
    report.elapsed_s = round(time.perf_counter() - t0, 4)
    return report


def read_deidentified(path: str | Path, anonymizer: Any) -> Any:
    """The header of the DICOM file at ``path`` (no pixel data), de-identified by ``anonymizer``.

    What results written back as DICOM (``agent.export``) take their patient, study and
    source-image references from: with a keyed anonymizer these are the pseudonymous UIDs every
    other de-identification at the site gives this file, never the originals.

    Raises:
        NotAnImageError: not a DICOM Part 10 file. IngestError: missing or unparsable.
    """
    src = Path(path)
    ds = _read(src, stop_before_pixels=True)
    try:
        deidentify_dataset(ds, anonymizer, source=src.name)
    except Exception as exc:  # malformed datasets fail in many ways while walked
        raise IngestError(f"{src.name}: cannot be de-identified ({one_line(exc)})") from exc
    return ds


def deidentify_file(
    in_path: str | Path, out_path: str | Path, anonymizer: Any | None = None
) -> DeidReport:
    """Read a DICOM Part 10 file, de-identify it, and write it to ``out_path``.

    ``anonymizer`` None uses a fresh one (a new random mapping). The output keeps the input's
    transfer syntax; its folder is created if needed.

    Raises:
        NotAnImageError: the input is not a DICOM Part 10 file.
        IngestError: the input is missing, or cannot be parsed, de-identified or written as a
            valid Part 10 file (e.g. its file meta lacks the SOP Class / Instance UIDs); no
            output file is left behind.
    """
    src, dst = Path(in_path), Path(out_path)
    ds = _read(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    part = dst.with_name(dst.name + ".part")
    try:
        report = deidentify_dataset(ds, anonymizer or new_anonymizer(), source=src.name)
        # written to a side file and renamed, so a failure never leaves a half-cleaned file
        ds.save_as(part, enforce_file_format=True)
    except Exception as exc:  # malformed datasets fail in many ways while walked or written
        part.unlink(missing_ok=True)
        raise IngestError(f"{src.name}: cannot be de-identified ({one_line(exc)})") from exc
    part.replace(dst)
    report.output = dst.name
    return report


def deidentify_tree(
    in_dir: str | Path, out_dir: str | Path, anonymizer: Any | None = None
) -> list[DeidReport]:
    """De-identify every DICOM file under ``in_dir`` into the same layout under ``out_dir``.

    One anonymizer serves the whole tree, so the files of a study keep one (new) Study UID and
    a patient keeps one fake name and id. Returns one report per file, in path order; files
    that are not DICOM, or DICOM that cannot be parsed, get a report with ``skipped=True``
    and a warning saying why, and are not copied (they may hold identifiers).
    Output file and folder names are kept as they are; rename them if they carry identifiers.
    """
    src, dst = Path(in_dir), Path(out_dir)
    if not src.is_dir():
        raise IngestError(f"{src.name}: not a folder")
    anon = anonymizer or new_anonymizer()
    reports: list[DeidReport] = []
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        try:
            reports.append(deidentify_file(path, dst / path.relative_to(src), anon))
        except NotAnImageError:
            reports.append(DeidReport(source=path.name, skipped=True,
                                      warnings=["not a DICOM file: skipped, not copied"]))
        except IngestError as exc:  # a broken DICOM file must not stop the rest of the study
            reports.append(DeidReport(source=path.name, skipped=True,
                                      warnings=[f"{exc}: skipped, not copied"]))
    return reports


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
def _read(src: Path, stop_before_pixels: bool = False) -> Any:
    """Parse a DICOM Part 10 file, refusing anything without the ``DICM`` prefix."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not src.is_file():
        raise IngestError(f"{src.name}: file not found")
    try:  # no force=True: a file without the DICM prefix is refused
        return pydicom.dcmread(src, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError as exc:
        raise NotAnImageError(f"{src.name}: not a DICOM file (no 'DICM' prefix)") from exc
    except Exception as exc:  # pydicom raises many types on malformed headers
        raise IngestError(f"{src.name}: DICOM header cannot be parsed ({one_line(exc)})") from exc


def _remove_elements(ds: Any) -> None:
    """Delete ``_REMOVE`` keywords, overlays and curves, at every nesting level."""
    from pydicom.datadict import tag_for_keyword

    tags = {tag_for_keyword(k) for k in _REMOVE}

    def visit(d: Any) -> None:
        for elem in list(d):
            t = elem.tag
            if t in tags or t.group in _OVERLAY_GROUPS or t.group in _CURVE_GROUPS:
                del d[t]
            elif elem.VR == "SQ":
                for item in elem.value:
                    visit(item)

    visit(ds)


def _snapshot(ds: Any) -> dict[tuple[int, ...], Any]:
    """Every element's value keyed by its path (tag, item index, tag, ...), file meta included.

    Pixel data is keyed but not copied (its identity is enough: it is never changed).
    """
    out: dict[tuple[int, ...], Any] = {}

    def visit(d: Any, prefix: tuple[int, ...]) -> None:
        for elem in d:
            key = (*prefix, int(elem.tag))
            if elem.VR == "SQ":
                out[key] = None
                for i, item in enumerate(elem.value):
                    visit(item, (*key, i))
            elif elem.tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
                out[key] = id(elem.value)
            else:
                out[key] = str(elem.value)

    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        visit(meta, (-1,))
    visit(ds, ())
    return out


def _in_removed(key: tuple[int, ...], after: dict[tuple[int, ...], Any]) -> bool:
    """Whether ``key`` lies inside a sequence that is itself gone (counted once, at the top)."""
    return any(key[:cut] not in after for cut in range(len(key) - 2, 0, -2))
