"""DICOMweb: QIDO-RS to find studies, WADO-RS to retrieve them, STOW-RS to store results.

Searches and stores go through dicomweb-client over one ``requests`` session that carries the
credentials (basic auth or a bearer token), the CA bundle, an optional client certificate and
the (connect, read) time limits; dicomweb-client's retries are off, so a PACS that answers 503
is reported at once rather than retried for minutes. Retrieval does not use dicomweb-client's
``retrieve_*`` (which parse every instance in memory): each series is streamed to disk by
``tools.pacs.multipart``, under the study's ``FetchBudget``, which stops the fetch once it runs
past ``fetch_timeout_s`` (a server trickling bytes slowly enough to dodge the read timeout still
ends, at most one read timeout late).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import requests

from tools.pacs.config import PacsConfig
from tools.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsTimeoutError,
    PacsUnavailableError,
    StudyNotFoundError,
)
from tools.pacs.multipart import boundary_of, split_parts
from tools.pacs.study import FetchBudget, InstanceInfo, StudyInfo, check_uid, study_info

__all__ = ["DicomWebPacs", "http_errors"]

# dicomweb-client wraps each request in ``retrying``, which logs every failed attempt with its
# traceback at WARNING; retries are off here and the failure is raised as a PacsError instead.
logging.getLogger("retrying").setLevel(logging.ERROR)

_STUDY_FIELDS = ("StudyDate", "StudyDescription", "ModalitiesInStudy",
                 "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_CHUNK = 64 * 1024


class DicomWebPacs:
    """One DICOMweb service, as ``config`` describes it (see ``tools.pacs.config``)."""

    def __init__(self, config: PacsConfig) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.config = config
        self.session = _Session()
        if config.user and config.password:
            self.session.auth = (config.user, config.password)
        if config.token:
            self.session.headers["Authorization"] = f"Bearer {config.token}"
        if config.ca_bundle or not config.tls_verify:
            self.session.pinned_verify = (str(Path(config.ca_bundle).expanduser())
                                          if config.ca_bundle else False)
            self.session.verify = self.session.pinned_verify
        if config.client_cert:
            self.session.cert = str(Path(config.client_cert).expanduser())
        self.client = DICOMwebClient(url=config.base_url, session=self.session,
                                     timeout=config.timeout)
        self.client.set_http_retry_params(retry=False)

    def close(self) -> None:
        """Close the session's connections."""
        self.session.close()

    def find_studies(self, filters: dict[str, str] | None = None,
                     limit: int = 50) -> list[StudyInfo]:
        """Studies matching ``filters`` (QIDO keywords: PatientID, StudyDate, ...)."""
        with http_errors(self.config, "the study search"):
            found = self.client.search_for_studies(
                limit=limit, fields=list(_STUDY_FIELDS), search_filters=dict(filters or {}))
        return [study_info(_dataset(item)) for item in found]

    def study(self, study_uid: str) -> StudyInfo:
        """The study ``study_uid``.

        Raises:
            StudyNotFoundError: the PACS lists no such study.
        """
        uid = check_uid(study_uid)
        found = self.find_studies({"StudyInstanceUID": uid}, limit=2)
        match = [s for s in found if s.study_uid == uid]
        if not match:
            raise StudyNotFoundError(f"no study {uid} on the PACS at {self.config.where}")
        return match[0]

    def instances(self, study_uid: str, limit: int) -> list[InstanceInfo]:
        """Up to ``limit`` instances of the study (series and SOP class of each)."""
        uid = check_uid(study_uid)
        with http_errors(self.config, "the instance search"):
            found = self.client.search_for_instances(
                study_instance_uid=uid, limit=limit,
                fields=["SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"])
        out = []
        for item in found:
            ds = _dataset(item)
            out.append(InstanceInfo(series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
                                    sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
                                    sop_class_uid=str(ds.get("SOPClassUID", "") or "")))
        return out

    def retrieve_series(self, study_uid: str, series_uid: str, instances: Sequence[InstanceInfo],
                        dest: Path, budget: FetchBudget) -> list[Path]:
        """Stream every instance of one series into ``dest`` (``00001.dcm``, ...), as stored.

        ``instances`` (what the search listed) is not needed here: WADO-RS sends the series.
        """
        url = (f"{self.config.base_url}/studies/{check_uid(study_uid)}"
               f"/series/{check_uid(series_uid, 'Series Instance UID')}")
        dest.mkdir(parents=True, exist_ok=True)
        files: list[Path] = []

        def open_part() -> BinaryIO:
            path = dest / f"{len(files) + 1:05d}.dcm"
            files.append(path)
            return path.open("wb")

        budget.check_time()
        connect, read = self.config.timeout
        with http_errors(self.config, "the study retrieval"):
            resp = self.session.get(url, headers={"Accept": _ACCEPT_DICOM}, stream=True,
                                    timeout=(connect, max(0.001, min(read, budget.remaining_s))))
            with closing(resp):
                resp.raise_for_status()
                boundary = boundary_of(resp.headers.get("Content-Type", ""))
                _stream(resp, boundary, open_part, budget, self.config)
        return files

    def store(self, paths: Sequence[Path]) -> list[str]:
        """STOW-RS the files at ``paths``; the SOP Instance UIDs the PACS accepted.

        Raises:
            PacsError: the PACS refused any of them (its failure reasons in the message).
        """
        import pydicom

        datasets = [pydicom.dcmread(p) for p in paths]
        with http_errors(self.config, "storing the results"):
            reply = self.client.store_instances(datasets)
        failed = reply.get("FailedSOPSequence") or []
        if failed:
            reasons = ", ".join(f"{f.get('ReferencedSOPInstanceUID', '?')} "
                                f"(reason {f.get('FailureReason', '?')})" for f in failed)
            raise PacsError(f"the PACS at {self.config.where} refused to store {reasons}")
        stored = [str(r.ReferencedSOPInstanceUID) for r in reply.get("ReferencedSOPSequence") or []]
        return stored or [str(ds.SOPInstanceUID) for ds in datasets]


class _Session(requests.Session):
    """A session whose configured CA bundle is the one used.

    ``requests`` lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` override a session's own
    ``verify`` (its issue 3829), so the site CA medloop was given would be silently ignored on
    machines that set them; here the configured choice wins, and the environment still applies
    when none was configured.
    """

    pinned_verify: bool | str | None = None

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any,
                                   cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.pinned_verify is not None:
            settings["verify"] = self.pinned_verify
        return settings


def _stream(resp: requests.Response, boundary: bytes, open_part: Any, budget: FetchBudget,
            config: PacsConfig) -> None:
    """Split ``resp``'s body into files as it arrives.

    Read with ``read1`` (whatever one socket read brings, not a full 64 KiB block), so the
    budget sees bytes as they come and a server that trickles a byte at a time is stopped at
    the fetch deadline, at most one read timeout late.
    """
    from urllib3.exceptions import HTTPError as TransportError
    from urllib3.exceptions import ReadTimeoutError

    def chunks() -> Iterator[bytes]:
        while True:
            data = resp.raw.read1(_CHUNK, decode_content=True)
            if not data:
                return
            yield data

    try:
        split_parts(chunks(), boundary, open_part, budget)
    except ReadTimeoutError:
        raise PacsTimeoutError(f"the PACS at {config.where} stopped sending the study for "
                               f"{config.read_timeout_s:g} s (read_timeout_s)") from None
    except TransportError:
        raise PacsUnavailableError(f"the PACS at {config.where} dropped the connection during "
                                   "the retrieval") from None


def _dataset(item: dict[str, Any]) -> Any:
    """A QIDO JSON result as a pydicom ``Dataset``."""
    from pydicom import Dataset

    return Dataset.from_json(item)


@contextmanager
def http_errors(config: PacsConfig, what: str) -> Iterator[None]:
    """Turn ``requests`` failures during ``what`` into ``PacsError``s naming the problem."""
    where = config.where
    try:
        yield
    except requests.exceptions.SSLError as exc:
        raise PacsUnavailableError(
            f"TLS with the PACS at {where} failed ({_tls_reason(exc)}); if it uses a site "
            "certificate authority, point MEDLOOP_PACS_CA (or ca_bundle) at its PEM file"
        ) from None
    except requests.exceptions.ConnectTimeout:
        raise PacsTimeoutError(f"the PACS at {where} did not accept a connection within "
                               f"{config.connect_timeout_s:g} s") from None
    except requests.exceptions.ReadTimeout:
        raise PacsTimeoutError(f"the PACS at {where} did not answer {what} within "
                               f"{config.read_timeout_s:g} s (read_timeout_s)") from None
    except requests.exceptions.ConnectionError as exc:
        raise PacsUnavailableError(
            f"cannot reach the PACS at {where}: {_connection_reason(exc)}") from None
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise PacsAuthError(
                f"the PACS at {where} refused {what} (HTTP {status}): check the PACS user and "
                "password or token (MEDLOOP_PACS_USER / MEDLOOP_PACS_PASSWORD)") from None
        if status == 404:
            raise StudyNotFoundError(f"the PACS at {where} has nothing at that address for "
                                     f"{what} (HTTP 404): is the URL its DICOMweb root?") from None
        raise PacsError(f"the PACS at {where} answered HTTP {status} to {what}") from None
    except requests.exceptions.RequestException as exc:
        raise PacsError(f"{what} from the PACS at {where} failed "
                        f"({type(exc).__name__})") from None


def _connection_reason(exc: Exception) -> str:
    """Why a connection failed, in words (from the exception chain's text)."""
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused (is it running, and is the port right?)"
    if "name or service not known" in text or "nodename nor servname" in text \
            or "failed to resolve" in text or "getaddrinfo" in text:
        return "unknown host name"
    if "reset" in text or "aborted" in text:
        return "the connection was dropped"
    return "connection failed"


def _tls_reason(exc: Exception) -> str:
    """The short reason of a TLS failure."""
    text = str(exc)
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "certificate verify failed"
    if "WRONG_VERSION_NUMBER" in text:
        return "the server does not speak TLS on that port"
    return "handshake failed"
