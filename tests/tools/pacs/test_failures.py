"""A PACS that is down, slow, trickling, silent or behind an untrusted certificate: clear errors.

Each case runs against a tiny local server started here (stdlib ``http.server`` on a free
loopback port, or a bare TCP socket), so the time limits are exercised for real: every test
also checks the call gave up near its limit instead of hanging.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tools.pacs.config import PacsConfig
from tools.pacs.errors import (
    PacsAuthError,
    PacsError,
    PacsTimeoutError,
    PacsUnavailableError,
)
from tools.pacs.fetch import fetch_study, find_studies

STUDY, SERIES = "1.2.3.4", "1.2.3.4.5"
STUDY_JSON = [{"0020000D": {"vr": "UI", "Value": [STUDY]},
               "00201208": {"vr": "IS", "Value": [1]}}]
INSTANCE_JSON = [{"0020000E": {"vr": "UI", "Value": [SERIES]},
                  "00080018": {"vr": "UI", "Value": ["1.2.3.4.5.6"]},
                  "00080016": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.2"]}}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


Route = Callable[[BaseHTTPRequestHandler], None]


@contextmanager
def http_server(routes: dict[str, Route], tls: ssl.SSLContext | None = None) -> Iterator[str]:
    """Serve ``routes`` (path prefix -> handler) on loopback; yield the DICOMweb root URL."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0].removeprefix("/dicom-web")
            for prefix, route in sorted(routes.items(), key=lambda kv: -len(kv[0])):
                if path.startswith(prefix):
                    with suppress(BrokenPipeError, ConnectionResetError):
                        route(self)
                    return
            self.send_error(404)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    scheme = "https" if tls else "http"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/dicom-web"
    finally:
        server.shutdown()
        server.server_close()


def send_json(h: BaseHTTPRequestHandler, data: object, status: int = 200) -> None:
    raw = json.dumps(data).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/dicom+json")
    h.send_header("Content-Length", str(len(raw)))
    h.end_headers()
    h.wfile.write(raw)


def cfg(url: str, **kw) -> PacsConfig:
    return PacsConfig(url=url, **{"connect_timeout_s": 1.0, "read_timeout_s": 0.5,
                                  "fetch_timeout_s": 5.0, **kw})


@pytest.mark.parametrize("url", ["http://127.0.0.1:{port}/dicom-web",
                                 "dicom://PACS@127.0.0.1:{port}"])
def test_a_refused_connection_says_so(url):
    config = cfg(url.format(port=free_port()))
    t0 = time.monotonic()
    with pytest.raises(PacsUnavailableError, match=r"cannot reach the PACS at 127\.0\.0\.1:\d+: "
                                                    r"connection refused"):
        find_studies(config)
    assert time.monotonic() - t0 < 5


def test_a_pacs_that_does_not_answer_hits_the_read_timeout():
    def sleepy(h: BaseHTTPRequestHandler) -> None:
        time.sleep(3)
        send_json(h, [])

    with http_server({"/studies": sleepy}) as url:
        t0 = time.monotonic()
        with pytest.raises(PacsTimeoutError, match=r"did not answer the study search within "
                                                   r"0\.5 s \(read_timeout_s\)"):
            find_studies(cfg(url))
        assert time.monotonic() - t0 < 2.5


def test_a_retrieval_that_trickles_hits_the_fetch_deadline(tmp_path):
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=BB')
        h.end_headers()
        h.wfile.write(b"--BB\r\nContent-Type: application/dicom\r\n\r\n")
        for _ in range(200):  # one byte every 0.1 s: never idle for the 0.5 s read timeout
            h.wfile.write(b"\0")
            h.wfile.flush()
            time.sleep(0.1)

    routes = {"/studies": lambda h: send_json(h, STUDY_JSON),
              f"/studies/{STUDY}/instances": lambda h: send_json(h, INSTANCE_JSON),
              f"/studies/{STUDY}/series/": trickle}
    before = set(Path(tempfile.gettempdir()).glob("medloop-pacs-*"))
    with http_server(routes) as url:
        t0 = time.monotonic()
        with pytest.raises(PacsTimeoutError, match=r"took longer than 1\.5 s \(fetch_timeout_s\)"):
            fetch_study(cfg(url, fetch_timeout_s=1.5), STUDY)
        assert time.monotonic() - t0 < 4
    # the partial download (identifiable bytes) is gone
    assert set(Path(tempfile.gettempdir()).glob("medloop-pacs-*")) == before


@pytest.mark.parametrize("status,error,needle", [
    (401, PacsAuthError, "refused the study search (HTTP 401)"),
    (403, PacsAuthError, "(HTTP 403)"),
    (500, PacsError, "answered HTTP 500 to the study search"),
    (503, PacsError, "answered HTTP 503"),  # no retries for minutes: at once
])
def test_http_errors_are_named(status, error, needle):
    with http_server({"/studies": lambda h: send_json(h, {"error": "x"}, status)}) as url:
        t0 = time.monotonic()
        with pytest.raises(error, match=needle.replace("(", r"\(").replace(")", r"\)")):
            find_studies(cfg(url))
        assert time.monotonic() - t0 < 2


def test_a_retrieval_that_is_not_multipart_is_refused():
    routes = {"/studies": lambda h: send_json(h, STUDY_JSON),
              f"/studies/{STUDY}/instances": lambda h: send_json(h, INSTANCE_JSON),
              f"/studies/{STUDY}/series/": lambda h: send_json(h, {"not": "dicom"})}
    with http_server(routes) as url, pytest.raises(PacsError, match="not multipart/related"):
        fetch_study(cfg(url), STUDY)


def test_an_unknown_study_is_named():
    from tools.pacs.errors import StudyNotFoundError

    with http_server({"/studies": lambda h: send_json(h, [])}) as url, \
            pytest.raises(StudyNotFoundError, match=r"no study 1\.2\.3\.4 on the PACS"):
        fetch_study(cfg(url), STUDY)


def test_a_dimse_peer_that_never_answers_the_association_times_out():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(listener.accept()[0])  # accept, read nothing, say nothing
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    try:
        t0 = time.monotonic()
        with pytest.raises(PacsTimeoutError, match="accepted the connection but no DICOM "
                                                   "association"):
            find_studies(cfg(f"dicom://PACS@127.0.0.1:{port}"))
        assert time.monotonic() - t0 < 5
    finally:
        listener.close()
        for s in held:
            s.close()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """A loopback certificate and key made by openssl (skipped where openssl is absent)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (needed to make a test certificate)")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return d / "cert.pem", d / "key.pem"


def test_tls_with_an_untrusted_certificate_fails_and_the_site_ca_fixes_it(self_signed):
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with http_server({"/studies": lambda h: send_json(h, STUDY_JSON)}, tls=tls) as url:
        with pytest.raises(PacsUnavailableError, match=r"TLS with the PACS at 127\.0\.0\.1:\d+ failed "
                                                       r"\(certificate verify failed\).*MEDLOOP_PACS_CA"):
            find_studies(cfg(url, read_timeout_s=5))
        found = find_studies(cfg(url, read_timeout_s=5, ca_bundle=str(cert)))
        assert [s.study_uid for s in found] == [STUDY] and found[0].n_instances == 1
        # checks off only when a setting says so explicitly (a test PACS)
        from urllib3.exceptions import InsecureRequestWarning

        with pytest.warns(InsecureRequestWarning):  # and urllib3 says so on every request
            assert len(find_studies(cfg(url, read_timeout_s=5, tls_verify=False))) == 1
