"""What a PACS says about its studies, and the budget one study fetch may spend.

``StudyInfo`` is what a study search returns: enough to pick a study (date, modalities,
description, counts), and no patient name, id or birth date, so listings can be printed or
shown without carrying a patient's identity along. ``FetchBudget`` is shared by every series
of one fetch: the instance and byte limits and the deadline of ``PacsConfig``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from tools.pacs.errors import PacsTimeoutError, StudyTooLargeError

__all__ = ["FetchBudget", "InstanceInfo", "StudyInfo", "check_uid", "study_info"]


@dataclass(frozen=True)
class StudyInfo:
    """One study as a search lists it (no patient identifiers).

    Attributes:
        study_uid: its Study Instance UID (what ``--study`` takes).
        date: StudyDate as ``YYYY-MM-DD`` ("" when the PACS gave none).
        modalities: ModalitiesInStudy.
        description: StudyDescription.
        n_series: NumberOfStudyRelatedSeries, or None when the PACS does not say.
        n_instances: NumberOfStudyRelatedInstances, or None when the PACS does not say.
    """

    study_uid: str
    date: str = ""
    modalities: tuple[str, ...] = ()
    description: str = ""
    n_series: int | None = None
    n_instances: int | None = None

    def label(self) -> str:
        """One line for a person choosing a study (no UID, no patient)."""
        parts = [self.date or "no date", "/".join(self.modalities) or "?"]
        if self.description:
            parts.append(self.description)
        if self.n_instances is not None:
            parts.append(f"{self.n_instances} image{'s' * (self.n_instances != 1)}")
        return " · ".join(parts)


@dataclass(frozen=True)
class InstanceInfo:
    """One instance of a study: which series, which SOP class (what C-GET must accept)."""

    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""


def study_info(ds: Any) -> StudyInfo:
    """A ``StudyInfo`` from a study-level query result (a pydicom ``Dataset``)."""
    date = str(ds.get("StudyDate", "") or "")
    if len(date) == 8 and date.isdigit():
        date = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    mods = ds.get("ModalitiesInStudy", "") or ()
    modalities = (mods,) if isinstance(mods, str) else tuple(str(m) for m in mods)
    return StudyInfo(
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        date=date,
        modalities=tuple(m for m in modalities if m),
        description=str(ds.get("StudyDescription", "") or ""),
        n_series=_count(ds.get("NumberOfStudyRelatedSeries")),
        n_instances=_count(ds.get("NumberOfStudyRelatedInstances")),
    )


def _count(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass
class FetchBudget:
    """Instances, bytes and time one study fetch may still use; raises once over.

    Attributes:
        max_instances: instances allowed.
        max_bytes: bytes allowed, counted as they arrive.
        timeout_s: seconds the whole fetch may take.
        where: the PACS as messages name it.
    """

    max_instances: int
    max_bytes: int
    timeout_s: float
    where: str
    instances: int = 0
    bytes: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def remaining_s(self) -> float:
        """Seconds left before the deadline (0 when past it)."""
        return max(0.0, self.timeout_s - (time.monotonic() - self.started))

    def check_instances(self, n: int) -> None:
        """Refuse a study the PACS says has ``n`` instances, before fetching it."""
        if n > self.max_instances:
            raise StudyTooLargeError(
                f"the study has {n} instances, over the limit of {self.max_instances} "
                "(max_study_instances in the PACS settings)")

    def add_instance(self) -> None:
        """Count one more instance received."""
        self.instances += 1
        if self.instances > self.max_instances:
            raise StudyTooLargeError(
                f"the study sent more than {self.max_instances} instances "
                "(max_study_instances in the PACS settings); fetch stopped")

    def add_bytes(self, n: int) -> None:
        """Count ``n`` more bytes received; also checks the deadline."""
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise StudyTooLargeError(
                f"the study is larger than {self.max_bytes} bytes "
                "(max_study_bytes in the PACS settings); fetch stopped")
        self.check_time()

    def check_time(self) -> None:
        """Raise ``PacsTimeoutError`` once the whole fetch has run past its time limit."""
        if self.remaining_s <= 0:
            raise self.timeout_error()

    def timeout_error(self) -> PacsTimeoutError:
        """The error for a fetch that ran past its deadline."""
        return PacsTimeoutError(f"fetching the study from {self.where} took longer than "
                                f"{self.timeout_s:g} s (fetch_timeout_s); stopped")


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(uid: str, what: str = "Study Instance UID") -> str:
    """``uid`` stripped, if it is a well-formed DICOM UID (digits and dots, at most 64).

    UIDs given by a user go into PACS URLs and queries: anything else is refused here.

    Raises:
        ValueError: naming ``what`` and the problem.
    """
    uid = (uid or "").strip()
    if not uid or len(uid) > 64 or not _UID.match(uid):
        raise ValueError(f"{what} must be digits and dots (at most 64 characters), "
                         f"got {uid[:70]!r}")
    return uid
