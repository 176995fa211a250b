"""A throw-away Orthanc PACS for tests: HTTP (with DICOMweb) and DICOM on free loopback ports.

Uses the machine's Debian ``orthanc`` and ``orthanc-dicomweb`` packages (the Makefile's
``system-deps`` installs them); tests that need it are skipped (marker ``orthanc``) where they
are absent. Each server has its own temp folder for its configuration and storage, accepts
connections from this machine only, and is stopped (SIGTERM, then SIGKILL) and deleted after.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
USER, PASSWORD = "medloop", "pacs-test-password"
AET = "ORTHANC"


def orthanc_missing() -> str | None:
    """Why Orthanc cannot run here (a skip reason), or None."""
    if not os.access(ORTHANC, os.X_OK):
        return f"Orthanc is not installed ({ORTHANC}); `make system-deps` installs it"
    if not os.path.exists(DICOMWEB_PLUGIN):
        return f"the Orthanc DICOMweb plugin is not installed ({DICOMWEB_PLUGIN})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Orthanc:
    """A running server: where it listens and how to log in."""

    http_port: int
    dicom_port: int
    folder: Path
    user: str = USER
    password: str = PASSWORD

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def dimse_url(self) -> str:
        return f"dicom://{AET}@127.0.0.1:{self.dicom_port}"

    def rest(self, method: str, path: str, **kw) -> requests.Response:
        r = requests.request(method, self.http_url + path, auth=(self.user, self.password),
                             timeout=30, **kw)
        r.raise_for_status()
        return r

    def upload(self, path: str | Path) -> dict:
        """Store one DICOM file through Orthanc's REST API (as a modality would send it)."""
        return self.rest("POST", "/instances", data=Path(path).read_bytes()).json()

    def studies(self) -> list[str]:
        return self.rest("GET", "/studies").json()

    def instance_file(self, orthanc_id: str) -> bytes:
        return self.rest("GET", f"/instances/{orthanc_id}/file").content


@contextmanager
def temp_orthanc(auth: bool = True) -> Iterator[Orthanc]:
    """Start a private Orthanc; yield it; stop it and delete its folder afterwards."""
    reason = orthanc_missing()
    if reason:
        raise RuntimeError(reason)
    folder = Path(tempfile.mkdtemp(prefix="medloop-orthanc-"))
    server = Orthanc(free_port(), free_port(), folder)
    config = {
        "Name": "medloop-test",
        "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"),
        "HttpPort": server.http_port,
        "DicomPort": server.dicom_port,
        "DicomAet": AET,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": auth,
        "RegisteredUsers": {USER: PASSWORD} if auth else {},
        "Plugins": [DICOMWEB_PLUGIN],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": False},
        # medloop's AE title is not registered as a modality: allow C-FIND / C-GET / C-STORE
        # from any AE on loopback (a test server; a real PACS registers MEDLOOP).
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": True,
        "StorageCompression": False,
        "HttpsVerifyPeers": False,
        "ConcurrentJobs": 1,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    log = (folder / "orthanc.log").open("wb")
    proc = subprocess.Popen([ORTHANC, str(folder / "orthanc.json")], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_ready(server, proc, folder)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(server: Orthanc, proc: subprocess.Popen, folder: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (folder / "orthanc.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc exited with {proc.returncode}:\n{tail}")
        try:
            requests.get(server.http_url + "/system", auth=(server.user, server.password),
                         timeout=1).raise_for_status()
            with socket.create_connection(("127.0.0.1", server.dicom_port), timeout=1):
                return
        except (requests.RequestException, OSError):
            time.sleep(0.1)
    raise RuntimeError("Orthanc did not start within 30 s")


# ---------------------------------------------------------------------------------------------
# Studies to upload: copies of pydicom's test files under new UIDs, some of them hostile
# ---------------------------------------------------------------------------------------------
def derived(src: str | Path, dest: Path, *, study: str, series: str | None = None,
            preamble: bytes | None = None, huge: bool = False) -> Path:
    """A copy of ``src`` in study ``study`` (new series and instance UIDs unless given).

    ``preamble`` replaces the 128-byte DICOM preamble (a polyglot: ``b"MZ"`` makes it look
    like a Windows executable); ``huge`` declares absurd dimensions in the header (the pixel
    data stays small), which the ingest guard must refuse before decoding.
    """
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(src)
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if huge:
        ds.Rows, ds.Columns, ds.NumberOfFrames = 65535, 65535, 1000
    if preamble is not None:
        ds.preamble = preamble.ljust(128, b"\0")[:128]
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest, enforce_file_format=True)
    return dest


CT_STUDY = "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"  # pydicom's CT_small.dcm, as is
MIXED_STUDY = "1.2.826.0.1.3680043.8.498.4242.1"  # a CT, a polyglot and a huge-header file
HOSTILE_STUDY = "1.2.826.0.1.3680043.8.498.4242.2"  # the polyglot alone
NEEDS_ORTHANC = [pytest.mark.orthanc,
                 pytest.mark.skipif(orthanc_missing() is not None,
                                    reason=str(orthanc_missing()))]


def needs_orthanc(test):
    """Mark one test as needing Orthanc (``NEEDS_ORTHANC`` does it for a whole module)."""
    for mark in NEEDS_ORTHANC:
        test = mark(test)
    return test


def load_studies(server: Orthanc, folder: Path) -> None:
    """Upload the test studies: CT_small as is, and the mixed and hostile ones."""
    from pydicom.data import get_testdata_file

    ct = get_testdata_file("CT_small.dcm")
    server.upload(ct)
    server.upload(derived(ct, folder / "ct.dcm", study=MIXED_STUDY))
    server.upload(derived(ct, folder / "poly.dcm", study=MIXED_STUDY, preamble=b"MZ"))
    server.upload(derived(ct, folder / "huge.dcm", study=MIXED_STUDY, huge=True))
    server.upload(derived(ct, folder / "poly2.dcm", study=HOSTILE_STUDY, preamble=b"MZ"))


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> Iterator[Orthanc]:
    """One Orthanc per test module (with password authentication), loaded with the studies."""
    with temp_orthanc() as server:
        load_studies(server, tmp_path_factory.mktemp("studies"))
        yield server
