"""Keyed pseudonymisation: one site secret makes de-identification repeatable, and only there.

Plain de-identification (``tools.ingest.deid`` with a fresh dicognito ``Anonymizer``) draws a new
random mapping per run, so two uploads of one study made a week apart land on two unrelated
pseudonymous studies and a prior can never be matched to a current. With a ``SiteKey`` the
mapping is a function of the original value and the site's secret alone:

* every UID (Study, Series, SOP Instance, Frame of Reference, ...) maps to the same
  pseudonymous UID in every run, upload and process (dicognito's own UID rule, seeded with a
  value derived from the secret);
* names, ids (PatientID, AccessionNumber, ...) and addresses likewise;
* dates and times shift by a whole number of days, 62 to 730 days back, chosen per *patient*
  (IssuerOfPatientID + PatientID; the StudyInstanceUID when a file names no patient). Intervals
  between one patient's studies survive; a shift learnt from one patient (someone who knows
  their own scan date) tells nothing about any other patient's, which a site-wide shift would.

Different secrets give unrelated mappings. The mapping is one-way (keyed hashes): nobody can
map a pseudonym back, not even the site. A site that holds the originals maps *forward* instead:
``SiteKey.uid(original)`` (or ``medloop deid`` of its own copy with the same secret) gives the
pseudonym of each original UID, and a lookup table of those is the way back. So the secret must
be kept like a password: whoever has it and a candidate UID or patient id can confirm a match.

The secret is 32 random bytes, written once as hex to ``$MEDLOOP_HOME/site_secret`` (mode 0600)
by ``SiteKey.load_or_create``, or given as text (``SiteKey.from_text``). Nothing here reads the
environment: the caller passes the path or the text (``AgentContext`` reads the settings).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["SECRET_FILE", "KeyedAnonymizer", "SiteKey", "patient_key"]

SECRET_FILE = "site_secret"
_SECRET_BYTES = 32
_MIN_TEXT_CHARS = 32  # a given secret: at least this many characters (``openssl rand -hex 32``)
# The date shift range, in days back, as dicognito's own random shift (62 to 730 days).
_MIN_SHIFT_DAYS, _MAX_SHIFT_DAYS = 62, 730


@dataclass(frozen=True)
class SiteKey:
    """A site's pseudonymisation secret and the values derived from it.

    Attributes:
        secret: the secret bytes (never printed: ``repr`` shows the fingerprint only).
    """

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < 16:
            raise ValueError("a site secret needs at least 16 bytes")

    def __repr__(self) -> str:
        return f"SiteKey(fingerprint={self.fingerprint!r})"

    @classmethod
    def from_text(cls, text: str) -> SiteKey:
        """A key from a given secret string (at least 32 characters, e.g. 64 hex digits)."""
        text = text.strip()
        if len(text) < _MIN_TEXT_CHARS:
            raise ValueError(
                f"the site secret must have at least {_MIN_TEXT_CHARS} characters "
                "(e.g. the output of `openssl rand -hex 32`)"
            )
        return cls(text.encode("utf-8"))

    @classmethod
    def load_or_create(cls, path: str | Path) -> SiteKey:
        """The key in ``path``, creating it (32 random bytes as hex, mode 0600) if absent.

        Creation is atomic: the secret is written to a private side file and hard-linked into
        place, so two processes starting at once both end up with the one secret that won,
        never with an empty or half-written file.

        Raises:
            ValueError: the file is readable or writable by others than its owner (a secret
                any local user can read protects nothing; ``chmod 600`` it), or too short.
        """
        path = Path(path)
        if not path.exists():
            _create_secret(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{path.name}: the site secret is accessible to other users "
                f"(mode {mode:o}); run `chmod 600` on it"
            )
        return cls.from_text(path.read_text(encoding="utf-8"))

    @property
    def fingerprint(self) -> str:
        """12 hex digits that name the key without revealing it (recorded in outputs)."""
        return self._derive("fingerprint", "")[:12]

    @property
    def seed(self) -> str:
        """dicognito's seed: UIDs, names, ids and addresses depend on it and the value only."""
        return self._derive("dicognito-seed", "")

    def date_shift_days(self, patient: str) -> int:
        """Days to move this patient's dates back (62 to 730; same patient, same shift)."""
        span = _MAX_SHIFT_DAYS - _MIN_SHIFT_DAYS + 1
        return _MIN_SHIFT_DAYS + int(self._derive("date-shift", patient), 16) % span

    def uid(self, original: str) -> str:
        """The pseudonymous UID ``original`` maps to under this key.

        What de-identifying any file holding ``original`` writes; a site builds its way back
        from pseudonyms to originals as a table of these.
        """
        from pydicom.dataset import Dataset, FileMetaDataset

        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.StudyInstanceUID = original
        KeyedAnonymizer(self).anonymize(ds)
        return str(ds.StudyInstanceUID)

    def _derive(self, purpose: str, value: str) -> str:
        """HMAC-SHA256 of ``purpose`` and ``value`` under the secret, as 64 hex digits."""
        message = f"medloop-pseudonym-v1\0{purpose}\0{value}".encode()
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()


def patient_key(ds: Any) -> str:
    """What identifies the patient of ``ds`` for the date shift (read before it is replaced).

    IssuerOfPatientID + PatientID; a file without a PatientID falls back to its study, so at
    least the files of one study share a shift.
    """
    pid = str(ds.get("PatientID", "") or "").strip()
    if pid:
        return f"patient\0{str(ds.get('IssuerOfPatientID', '') or '').strip()}\0{pid}"
    return f"study\0{str(ds.get('StudyInstanceUID', '') or '').strip()}"


class KeyedAnonymizer:
    """A stand-in for dicognito's ``Anonymizer`` (its ``anonymize(ds)``) keyed by a ``SiteKey``.

    One seeded ``Anonymizer`` per patient, each with a date handler for that patient's shift put
    in front of dicognito's own (``add_element_handler``), so UIDs, names and ids map the same
    for every patient and only the dates differ. Not thread-safe on its own: ``deid`` calls it
    under its lock.
    """

    def __init__(self, key: SiteKey) -> None:
        self.key = key
        self._by_patient: dict[str, Any] = {}

    def anonymize(self, ds: Any) -> None:
        """De-identify ``ds`` in place, as dicognito's ``Anonymizer.anonymize`` does."""
        patient = patient_key(ds)
        anonymizer = self._by_patient.get(patient)
        if anonymizer is None:
            from dicognito.anonymizer import Anonymizer
            from dicognito.datetimeanonymizer import DateTimeAnonymizer

            anonymizer = Anonymizer(seed=self.key.seed)
            shift_hours = -24 * self.key.date_shift_days(patient)
            anonymizer.add_element_handler(DateTimeAnonymizer(shift_hours))
            self._by_patient[patient] = anonymizer
        anonymizer.anonymize(ds)


def _create_secret(path: Path) -> None:
    """Write a new random secret to ``path`` unless another process has just done so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    side = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    fd = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_hex(_SECRET_BYTES) + "\n")
        with contextlib.suppress(FileExistsError):  # the secret exists: the first one wins
            os.link(side, path)  # atomic: the file appears whole or not at all
    finally:
        side.unlink(missing_ok=True)
