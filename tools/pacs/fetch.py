"""A study from a PACS into the store: search, fetch to a private folder, ingest like files.

``fetch_study`` asks the PACS what the study holds (refusing one over the instance limit before
anything is downloaded), retrieves it series by series into a private temporary folder (mode
0700: the files are still identifiable there), and says what to ingest: a single-file series as
its file, a series of parallel slices as its folder (one volume, ``tools.ingest.series``), any
other series file by file. ``ingest_study`` then sends each of those through
``tools.ingest.ingest_path``, the one function that files and uploads go through too, so the
same guards, decoders in a child process and de-identification apply; a file the guards refuse
is reported by name and the rest of the study is still used. ``fetched_study`` deletes the raw
files when the caller is done with them.

``store_results`` sends result files (an SR, SEGs) back to the PACS: STOW-RS or C-STORE.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tools.errors import IngestError
from tools.pacs.config import PacsConfig
from tools.pacs.errors import PacsError
from tools.pacs.study import FetchBudget, InstanceInfo, StudyInfo, check_uid

if TYPE_CHECKING:
    from tools.store import ImageStore

__all__ = [
    "FetchedStudy",
    "IngestedStudy",
    "Pacs",
    "connect",
    "fetch_study",
    "fetched_study",
    "find_studies",
    "ingest_study",
    "store_results",
]


class Pacs(Protocol):
    """What both protocols offer (``tools.pacs.dicomweb``, ``tools.pacs.dimse``)."""

    config: PacsConfig

    def close(self) -> None:
        """Close any open connection."""

    def find_studies(self, filters: dict[str, str] | None = None,
                     limit: int = 50) -> list[StudyInfo]:
        """Studies matching ``filters`` (DICOM keywords), at most ``limit``."""

    def study(self, study_uid: str) -> StudyInfo:
        """One study; ``StudyNotFoundError`` when the PACS has none with that UID."""

    def instances(self, study_uid: str, limit: int) -> list[InstanceInfo]:
        """Up to ``limit`` instances of the study."""

    def retrieve_series(self, study_uid: str, series_uid: str,
                        instances: Sequence[InstanceInfo], dest: Path,
                        budget: FetchBudget) -> list[Path]:
        """Write one series' instances into ``dest``, as stored; their paths."""

    def store(self, paths: Sequence[Path]) -> list[str]:
        """Store result files on the PACS; the SOP Instance UIDs stored."""


def connect(config: PacsConfig) -> Pacs:
    """The client for ``config``'s protocol (no connection is opened yet)."""
    if config.protocol == "dimse":
        from tools.pacs.dimse import DimsePacs

        return DimsePacs(config)
    from tools.pacs.dicomweb import DicomWebPacs

    return DicomWebPacs(config)


@dataclass
class FetchedStudy:
    """A study fetched to a private folder.

    Attributes:
        study_uid: the study's (original) Study Instance UID.
        folder: the private folder holding ``series-001/00001.dcm``, ...
        inputs: what to ingest, in series order: files and series folders.
        n_instances: instances received.
        n_bytes: bytes received.
        elapsed_s: seconds the search and retrieval took.
    """

    study_uid: str
    folder: Path
    inputs: list[Path] = field(default_factory=list)
    n_instances: int = 0
    n_bytes: int = 0
    elapsed_s: float = 0.0

    def delete(self) -> None:
        """Delete the raw (identifiable) files."""
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass
class IngestedStudy:
    """What ``ingest_study`` stored.

    Attributes:
        image_ids: stored ids in input order (a volume's planes after it).
        dicom_files: the single DICOM files that were stored (an SR can reference them).
        errors: one line per input that could not be used.
    """

    image_ids: list[str] = field(default_factory=list)
    dicom_files: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def find_studies(config: PacsConfig, filters: dict[str, str] | None = None,
                 limit: int = 50) -> list[StudyInfo]:
    """Studies on the PACS matching ``filters`` (DICOM keywords: PatientID, StudyDate, ...)."""
    pacs = connect(config)
    try:
        return pacs.find_studies(filters, limit)
    finally:
        pacs.close()


def fetch_study(config: PacsConfig, study_uid: str, dest: str | Path | None = None) -> FetchedStudy:
    """Fetch the study ``study_uid`` into ``dest`` (default: a new private temp folder).

    Raises:
        ValueError: ``study_uid`` is not a UID.
        StudyNotFoundError: the PACS has no such study.
        StudyTooLargeError: over ``max_study_instances`` / ``max_study_bytes``.
        PacsError: the PACS is down, slow, refuses the credentials, or answers nonsense
            (the subclasses in ``tools.pacs.errors``). A folder made here is deleted first.
    """
    uid = check_uid(study_uid)
    made = dest is None
    folder = Path(tempfile.mkdtemp(prefix="medloop-pacs-")) if dest is None else Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    budget = FetchBudget(config.max_study_instances, config.max_study_bytes,
                         float(config.fetch_timeout_s), config.where)
    pacs = connect(config)
    try:
        info = pacs.study(uid)
        if info.n_instances is not None:
            budget.check_instances(info.n_instances)
        instances = pacs.instances(uid, config.max_study_instances + 1)
        budget.check_instances(len(instances))
        if not instances:
            raise PacsError(f"the PACS lists no instances in study {uid}")
        by_series: dict[str, list[InstanceInfo]] = {}
        for inst in instances:
            by_series.setdefault(inst.series_uid, []).append(inst)
        inputs: list[Path] = []
        for n, (series_uid, items) in enumerate(by_series.items(), start=1):
            files = pacs.retrieve_series(uid, series_uid, items, folder / f"series-{n:03d}",
                                         budget)
            inputs += _inputs(folder / f"series-{n:03d}", files)
        if not budget.instances:
            raise PacsError(f"the PACS sent no instances of study {uid}")
    except BaseException:
        if made:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        pacs.close()
    return FetchedStudy(study_uid=uid, folder=folder, inputs=inputs,
                        n_instances=budget.instances, n_bytes=budget.bytes,
                        elapsed_s=time.perf_counter() - t0)


@contextmanager
def fetched_study(config: PacsConfig, study_uid: str) -> Iterator[FetchedStudy]:
    """``fetch_study`` into a private temp folder, deleted when the block ends."""
    study = fetch_study(config, study_uid)
    try:
        yield study
    finally:
        study.delete()


def ingest_study(store: ImageStore, study: FetchedStudy) -> IngestedStudy:
    """Send each input of ``study`` through ``ingest_path``; never raises for a bad file."""
    from tools.ingest import ingest_path

    out = IngestedStudy()
    for path in study.inputs:
        name = path.relative_to(study.folder).as_posix()
        try:
            _, refs = ingest_path(store, path)
        except IngestError as exc:
            out.errors.append(f"{name}: {str(exc).split(': ', 1)[-1]}")
            continue
        except Exception as exc:  # one broken instance must not lose the rest of the study
            out.errors.append(f"{name}: could not be read ({type(exc).__name__})")
            continue
        out.image_ids += [r.id for r in refs]
        if path.is_file():
            out.dicom_files.append(path)
    return out


def store_results(config: PacsConfig, paths: Sequence[str | Path]) -> list[str]:
    """Send result files (SR, SEG) to the PACS; the SOP Instance UIDs it stored."""
    pacs = connect(config)
    try:
        return pacs.store([Path(p) for p in paths])
    finally:
        pacs.close()


def _inputs(folder: Path, files: list[Path]) -> list[Path]:
    """What to ingest of one series: its one file, its folder (a stack), or each file."""
    if len(files) == 1:
        return files
    if files and _stackable(files):
        return [folder]
    return list(files)


def _stackable(files: Sequence[Path]) -> bool:
    """Single-frame slices of one grid with positions and orientation: one volume."""
    import pydicom

    from tools.ingest.guard import check_file_size

    shapes = set()
    try:
        for f in files:
            check_file_size(f.name, f.stat().st_size)
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=[
                "Rows", "Columns", "NumberOfFrames", "ImagePositionPatient",
                "ImageOrientationPatient"])
            if int(ds.get("NumberOfFrames", 1) or 1) != 1:
                return False
            if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
                return False
            shapes.add((int(ds.Rows), int(ds.Columns)))
    except Exception:  # unreadable here: ingest file by file, which names the problem
        return False
    return len(shapes) == 1
