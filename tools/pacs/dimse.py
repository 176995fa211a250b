"""DIMSE, for a PACS without DICOMweb: C-FIND to search, C-GET to retrieve, C-STORE to store.

pynetdicom, Study Root information model. C-GET (not C-MOVE) brings the instances back on the
association medloop opened, so nothing has to listen for an incoming connection and the PACS
needs to know medloop's AE title only, not an address to send to; the storage contexts offered
are those of the SOP classes the C-FIND listed, each accepting any transfer syntax, so the files
arrive as the PACS stored them. Each instance is written to disk as it arrives, as encoded
(``Event.encoded_dataset``), never decoded here: the ingest guards see it first.

Time limits: ``connect_timeout_s`` bounds the TCP connection, ``read_timeout_s`` every wait for
an association answer, a DIMSE message or network activity (pynetdicom's ``acse_timeout``,
``dimse_timeout``, ``network_timeout``); a watchdog aborts the association once the whole fetch
runs past ``fetch_timeout_s``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tools.pacs.config import PacsConfig
from tools.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsTimeoutError,
    PacsUnavailableError,
    StudyNotFoundError,
)
from tools.pacs.study import FetchBudget, InstanceInfo, StudyInfo, check_uid, study_info

__all__ = ["DimsePacs"]

# Study Root Query/Retrieve Information Model - FIND and - GET (PS3.4 C.6.2)
_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
_GET = "1.2.840.10008.5.1.4.1.2.2.3"
_PENDING = (0xFF00, 0xFF01)
_OUT_OF_RESOURCES = 0xA702
_MAX_CONTEXTS = 127  # 128 presentation contexts per association, one is the query's


class DimsePacs:
    """One DIMSE peer, ``dicom://AET@host:port`` in ``config``."""

    def __init__(self, config: PacsConfig) -> None:
        self.config = config

    def close(self) -> None:
        """Nothing to close: each request opens and releases its own association."""

    def find_studies(self, filters: dict[str, str] | None = None,
                     limit: int = 50) -> list[StudyInfo]:
        """Studies matching ``filters`` (keywords: PatientID, StudyDate, ...), at most ``limit``."""
        keys = {"StudyInstanceUID": "", "StudyDate": "", "StudyDescription": "",
                "ModalitiesInStudy": "", "NumberOfStudyRelatedSeries": "",
                "NumberOfStudyRelatedInstances": "", **(filters or {})}
        query = _query("STUDY", **keys)
        return [study_info(ds) for ds in self._find(query, limit, "the study search")]

    def study(self, study_uid: str) -> StudyInfo:
        """The study ``study_uid``.

        Raises:
            StudyNotFoundError: the PACS lists no such study.
        """
        uid = check_uid(study_uid)
        match = [s for s in self.find_studies({"StudyInstanceUID": uid}, 2) if s.study_uid == uid]
        if not match:
            raise StudyNotFoundError(f"no study {uid} on the PACS at {self.config.where}")
        return match[0]

    def instances(self, study_uid: str, limit: int) -> list[InstanceInfo]:
        """Up to ``limit`` instances of the study: series by series (C-FIND is hierarchical)."""
        uid = check_uid(study_uid)
        series = self._find(_query("SERIES", StudyInstanceUID=uid, SeriesInstanceUID=""),
                            limit, "the series search")
        out: list[InstanceInfo] = []
        for s in series:
            series_uid = str(s.get("SeriesInstanceUID", "") or "")
            if not series_uid:
                continue
            query = _query("IMAGE", StudyInstanceUID=uid, SeriesInstanceUID=series_uid,
                           SOPInstanceUID="", SOPClassUID="")
            for ds in self._find(query, limit - len(out) + 1, "the instance search"):
                out.append(InstanceInfo(series_uid=series_uid,
                                        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                                        sop_class_uid=str(ds.get("SOPClassUID", "") or "")))
            if len(out) > limit:
                break
        return out

    def retrieve_series(self, study_uid: str, series_uid: str, instances: Sequence[InstanceInfo],
                        dest: Path, budget: FetchBudget) -> list[Path]:
        """C-GET one series into ``dest`` (``00001.dcm``, ...), each file as the PACS sent it."""
        from pynetdicom import ALL_TRANSFER_SYNTAXES, build_role, evt
        dest.mkdir(parents=True, exist_ok=True)
        classes = sorted({i.sop_class_uid for i in instances if i.sop_class_uid})
        if not classes:
            raise PacsError("the PACS did not say which SOP classes the series holds")
        if len(classes) > _MAX_CONTEXTS:
            raise PacsError(f"the series holds {len(classes)} SOP classes; one association "
                            f"takes at most {_MAX_CONTEXTS}")
        files: list[Path] = []
        problems: list[PacsError] = []

        def on_store(event: Any) -> int:
            if problems:
                return _OUT_OF_RESOURCES
            try:
                data = event.encoded_dataset(include_meta=True)
                budget.add_instance()
                budget.add_bytes(len(data))
            except PacsError as exc:
                problems.append(exc)
                return _OUT_OF_RESOURCES
            path = dest / f"{len(files) + 1:05d}.dcm"
            path.write_bytes(data)
            files.append(path)
            return 0x0000

        ae = self._ae()
        ae.add_requested_context(_GET)
        for uid in classes:
            ae.add_requested_context(uid, ALL_TRANSFER_SYNTAXES)
        roles = [build_role(uid, scp_role=True) for uid in classes]
        query = _query("SERIES", StudyInstanceUID=check_uid(study_uid),
                       SeriesInstanceUID=check_uid(series_uid, "Series Instance UID"))
        budget.check_time()
        with self._association(ae, "the study retrieval", ext_neg=roles,
                               evt_handlers=[(evt.EVT_C_STORE, on_store)]) as assoc:
            self._get(assoc, query, budget, problems)
            if not assoc.is_established and not files and not problems:
                raise PacsTimeoutError(f"the PACS at {self.config.where} stopped answering the "
                                       f"retrieval (read_timeout_s {self.config.read_timeout_s:g})")
        return files

    def _get(self, assoc: Any, query: Any, budget: FetchBudget,
             problems: list[PacsError]) -> None:
        """Run the C-GET on ``assoc`` under a deadline watchdog; raise what went wrong."""
        watchdog = threading.Timer(budget.remaining_s, assoc.abort)
        watchdog.daemon = True
        watchdog.start()
        try:
            for status, _ in assoc.send_c_get(query, _GET):
                if problems:
                    assoc.abort()
                    break
                if status is None:  # no answer within dimse_timeout: pynetdicom aborted
                    break
                code = int(status.Status)
                # pending, success, or a warning (some sub-operations failed): go on
                if code in _PENDING or code == 0 or code & 0xF000 == 0xB000:
                    continue
                raise PacsError(f"the PACS at {self.config.where} answered the retrieval "
                                f"with status 0x{code:04X}")
        finally:
            watchdog.cancel()
        if problems:
            raise problems[0]
        if budget.remaining_s <= 0:
            raise budget.timeout_error()

    def store(self, paths: Sequence[Path]) -> list[str]:
        """C-STORE the files at ``paths``; their SOP Instance UIDs.

        Raises:
            PacsError: the PACS refused any of them (with its status).
        """
        import pydicom

        datasets = [pydicom.dcmread(p) for p in paths]
        ae = self._ae()
        for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
            syntaxes = sorted({str(ds.file_meta.TransferSyntaxUID) for ds in datasets
                               if str(ds.SOPClassUID) == sop_class})
            ae.add_requested_context(sop_class, syntaxes)
        stored = []
        with self._association(ae, "storing the results") as assoc:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status is not None and "Status" in status else -1
                if code == -1:
                    raise PacsTimeoutError(f"the PACS at {self.config.where} did not answer the "
                                           f"store within {self.config.read_timeout_s:g} s")
                if code != 0 and code & 0xF000 != 0xB000:
                    raise PacsError(f"the PACS at {self.config.where} refused to store "
                                    f"{ds.SOPInstanceUID} (status 0x{code:04X})")
                stored.append(str(ds.SOPInstanceUID))
        return stored

    # -----------------------------------------------------------------------------------------
    def _ae(self) -> Any:
        """An application entity with this config's AE title and time limits."""
        from pynetdicom import AE

        ae = AE(ae_title=self.config.calling_aet)
        ae.connection_timeout = float(self.config.connect_timeout_s)
        ae.acse_timeout = float(self.config.read_timeout_s)
        ae.dimse_timeout = float(self.config.read_timeout_s)
        ae.network_timeout = float(self.config.read_timeout_s)
        return ae

    def _find(self, query: Any, limit: int, what: str) -> list[Any]:
        """C-FIND ``query``; at most ``limit`` identifiers (the rest are cancelled)."""
        ae = self._ae()
        ae.add_requested_context(_FIND)
        out = []
        with self._association(ae, what) as assoc:
            for status, identifier in assoc.send_c_find(query, _FIND):
                if status is None:
                    raise PacsTimeoutError(f"the PACS at {self.config.where} did not answer "
                                           f"{what} within {self.config.read_timeout_s:g} s")
                code = int(status.Status)
                if code in _PENDING:
                    if identifier is not None:
                        out.append(identifier)
                    if len(out) >= limit:
                        assoc.abort()
                        break
                elif code != 0:
                    raise PacsError(f"the PACS at {self.config.where} answered {what} with "
                                    f"status 0x{code:04X}")
        return out

    @contextmanager
    def _association(self, ae: Any, what: str, **kwargs: Any) -> Iterator[Any]:
        """An established association with the PACS, released (or aborted) afterwards."""
        from pynetdicom import evt

        cfg = self.config
        handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, _no_delay)]
        assoc = ae.associate(cfg.host, cfg.port, ae_title=cfg.called_aet,
                             evt_handlers=handlers, **kwargs)
        if not assoc.is_established:
            if assoc.is_rejected:
                raise PacsAuthError(
                    f"the PACS at {cfg.where} rejected the association for {what}: does it "
                    f"know the AE title {cfg.calling_aet!r}, and is {cfg.called_aet!r} its own?")
            raise self._why_no_association(what)
        try:
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def _why_no_association(self, what: str) -> PacsError:
        """Tell a refused or silent peer from one that dropped the association request."""
        cfg = self.config
        try:
            with socket.create_connection((cfg.host, cfg.port), timeout=cfg.connect_timeout_s):
                pass
        except ConnectionRefusedError:
            return PacsUnavailableError(f"cannot reach the PACS at {cfg.where}: connection "
                                        "refused (is it running, and is the port right?)")
        except TimeoutError:
            return PacsTimeoutError(f"the PACS at {cfg.where} did not accept a connection "
                                    f"within {cfg.connect_timeout_s:g} s")
        except OSError as exc:
            return PacsUnavailableError(f"cannot reach the PACS at {cfg.where}: "
                                        f"{exc.strerror or type(exc).__name__}")
        return PacsTimeoutError(f"the PACS at {cfg.where} accepted the connection but no DICOM "
                                f"association for {what} within {cfg.read_timeout_s:g} s")


def _no_delay(event: Any) -> None:
    """Send each PDU at once (TCP_NODELAY).

    DIMSE's small request-and-answer messages otherwise wait on Nagle's algorithm: with it
    every C-FIND took twice as long on loopback.
    """
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _query(level: str, **keys: str) -> Any:
    """A C-FIND / C-GET identifier at ``level`` with ``keys`` (keyword -> value)."""
    from pydicom import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds
