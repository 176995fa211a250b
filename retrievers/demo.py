"""The demo case library, built on first use from what installed packages carry.

* Images: eight distinct real DICOM images from ``pydicom`` / ``pydicom-data`` (chest and
  extremity radiographs, shoulder / abdomen / head MR, head CT, ultrasound...). Their labels are
  body regions taken from their headers or their published descriptions, not findings.
  The 64x64 ``MR_small.dcm`` and ``emri_small.dcm`` are left out: a crop of a few pixels
  moves their pooled LiteMedSAM embeddings nearer another image than to themselves (at 64 px
  the embedding is not crop-robust), so near-duplicate search on them fails.
* Reports: the 3,955 real chest X-ray reports of the Indiana University collection
  (``NLMCXR_reports.tgz`` inside the ``torchxrayvision`` wheel; CC BY-NC-ND 4.0; no images).
  Each report is FINDINGS + IMPRESSION; its labels are the MeSH "major" headings
  ("cardiomegaly", "pleural effusion", "normal"...). The tgz is located with
  ``importlib.util.find_spec`` without importing torchxrayvision.

The library lives in ``$MEDLOOP_HOME/retrieval/demo-v1`` (default ``~/.cache/medloop``). The
first build embeds the images with LiteMedSAM (about 2 s each on two CPU cores) and the
distinct reports with MiniLM, and takes about 1–2 minutes on two cores; it is resumable and
guarded by a file lock, so two processes do not build it at once. Later opens take < 1 s.
"""

from __future__ import annotations

import atexit
import fcntl
import importlib.util
import re
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

from retrievers.build import BuildReport, CaseRow, build_from_rows
from retrievers.embedders import MedSamImageEmbedder, MiniLMTextEmbedder, shared_minilm
from retrievers.library import CaseLibrary
from tools.errors import ToolFailure

__all__ = ["DEMO_IMAGES", "BuildStopped", "demo_image_rows", "demo_library", "demo_path",
           "nlmcxr_reports", "stop_builds"]

DEMO_VERSION = "demo-v1"

# (file, modality, labels): body regions from the header or the file's published description.
DEMO_IMAGES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("RG1_UNCI.dcm", "CR", ("chest",)),
    ("RG3_UNCI.dcm", "CR", ("extremity",)),
    ("MR2_UNCI.dcm", "MR", ("shoulder",)),
    ("MR-SIEMENS-DICOM-WithOverlays.dcm", "MR", ("abdomen", "liver lesion")),
    ("693_UNCI.dcm", "CT", ("head",)),
    ("CT_small.dcm", "CT", ()),
    ("US1_UNCI.dcm", "US", ()),
    ("OBXXXX1A.dcm", "US", ()),
)

_LOCK = threading.Lock()
_OPEN: dict[Path, CaseLibrary] = {}


def demo_path(home: str | Path | None = None) -> Path:
    """Where the demo library lives."""
    from tools.store import default_home

    return (Path(home) if home is not None else default_home()) / "retrieval" / DEMO_VERSION


def demo_image_rows() -> list[CaseRow]:
    """The demo images as layout rows (``image`` is the file name inside the package)."""
    from pydicom.data import get_testdata_file

    rows = []
    for name, modality, labels in DEMO_IMAGES:
        path = get_testdata_file(name)
        if path is None:
            raise ToolFailure(f"the demo image {name} is missing (pydicom-data not installed?)")
        rows.append(CaseRow(case_id=name, image_path=Path(str(path)), image=name, report=None,
                            labels=labels, modality=modality))
    return rows


def _nlmcxr_tgz() -> Path:
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise ToolFailure("the report corpus is not installed (torchxrayvision)")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "NLMCXR_reports.tgz"
    if not path.exists():
        raise ToolFailure(f"{path.name} is missing from the torchxrayvision install")
    return path


_SECTION = re.compile(r'<AbstractText Label="(\w+)">(.*?)</AbstractText>', re.S)
_MAJOR = re.compile(r"<major>(.*?)</major>", re.S)
_UID = re.compile(r'<uId id="([^"]+)"')


def nlmcxr_reports(limit: int | None = None) -> Iterator[CaseRow]:
    """The Indiana University chest X-ray reports as rows (report text, MeSH labels).

    Reports with neither FINDINGS nor IMPRESSION are skipped. The de-identification markers of
    the source ("XXXX") are kept as they are.
    """
    n = 0
    with tarfile.open(_nlmcxr_tgz()) as tf:
        members = sorted((m for m in tf.getmembers() if m.isfile() and m.name.endswith(".xml")),
                         key=lambda m: m.name)
        for m in members:
            f = tf.extractfile(m)
            if f is None:
                continue
            xml = f.read().decode("utf-8", "replace")
            sections = dict(_SECTION.findall(xml))
            parts = [f"{k.title()}: {' '.join(sections[k].split())}"
                     for k in ("FINDINGS", "IMPRESSION") if sections.get(k, "").strip()]
            if not parts:
                continue
            labels = sorted({h.split("/")[0].strip().lower() for h in _MAJOR.findall(xml)})
            uid = _UID.search(xml)
            yield CaseRow(case_id=uid.group(1) if uid else m.name, image_path=None, image=None,
                          report=" ".join(parts), labels=tuple(labels), modality=None)
            n += 1
            if limit is not None and n >= limit:
                return


def demo_library(home: str | Path | None = None, max_reports: int | None = None,
                 progress: bool = False) -> CaseLibrary:
    """The demo library, built (or finished, after an interruption) on first use.

    ``max_reports`` limits the report corpus (tests use a few hundred); a library built with a
    limit lives in its own folder.
    """
    root = demo_path(home)
    if max_reports is not None:
        root = root.with_name(f"{DEMO_VERSION}-{max_reports}")
    with _LOCK:
        lib = _OPEN.get(root)
        if lib is not None:
            return lib
        root.mkdir(parents=True, exist_ok=True)
        with (root.parent / f".{root.name}.lock").open("w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)  # another process may be building it
            if not _complete(root):
                writer = CaseLibrary.open_or_create(root, MedSamImageEmbedder(), _minilm(),
                                                    kind="flat")
                try:
                    build_demo(writer, max_reports, progress)
                finally:
                    writer.close()
        # Reopened read-only, with the same embedders (their weights stay loaded).
        lib = CaseLibrary.open(root, MedSamImageEmbedder(), _minilm())
        _OPEN[root] = lib
        return lib


_BUILD_LOCK = threading.Lock()
_BUILDS: dict[Path, threading.Thread] = {}
_BUILD_ERRORS: dict[Path, str] = {}


def demo_ready(home: str | Path | None = None) -> bool:
    """Whether the demo library can be opened now (built, or already open) without building."""
    root = demo_path(home)
    return root in _OPEN or _complete(root)


def start_demo_build(home: str | Path | None = None) -> str | None:
    """Build the demo library in a background thread, once per process.

    Why: the first build takes minutes (embedding ~3,900 reports with MiniLM on 2 cores:
    3 min 40 s measured), far past a tool call's time limit. A tool that needs the library
    starts the build, tells the planner to use other tools meanwhile, and works once it is
    done. The thread is a daemon: if the process ends first, the next build resumes.

    Returns the error of an earlier failed build in this process (it is not retried), or None.
    """
    root = demo_path(home)
    with _BUILD_LOCK:
        if root in _BUILD_ERRORS:
            return _BUILD_ERRORS[root]
        thread = _BUILDS.get(root)
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=_build_in_background, args=(home,), daemon=True,
                                      name="medloop-demo-library")
            _BUILDS[root] = thread
            thread.start()
    return None


class BuildStopped(RuntimeError):
    """The demo build was asked to stop (the process is ending); it resumes next time."""


_STOP = threading.Event()


@atexit.register
def stop_builds(wait_s: float = 60.0) -> None:
    """Ask background builds to stop after their current batch, and wait for them.

    Why: the build thread is a daemon, and one still inside torch when the interpreter
    finalises aborts the whole process ("terminate called without an active exception",
    exit 134): ``medloop ask --json``, whose question had started the build, printed its
    answer and then a crash dump after it. Registered with ``atexit``, so it runs while the
    interpreter still works; a batch takes a second or two.
    """
    _STOP.set()
    with _BUILD_LOCK:
        threads = list(_BUILDS.values())
    for thread in threads:
        thread.join(timeout=wait_s)
    _STOP.clear()  # a build asked for later starts afresh


def _build_in_background(home: str | Path | None) -> None:
    try:
        demo_library(home)
    except BuildStopped:
        return
    except Exception as exc:  # kept and reported by the next tool call that needs it
        with _BUILD_LOCK:
            _BUILD_ERRORS[demo_path(home)] = f"{type(exc).__name__}: {exc}"


def _complete(root: Path) -> bool:
    import json

    path = root / "manifest.json"
    return path.exists() and bool(json.loads(path.read_text()).get("complete"))


def _minilm() -> MiniLMTextEmbedder:
    """One MiniLM per process (its weights load once)."""
    return shared_minilm()


def build_demo(lib: CaseLibrary, max_reports: int | None = None,
               progress: bool = False) -> BuildReport:
    """Fill ``lib`` with the demo images and reports; marks the manifest complete.

    Raises ``BuildStopped`` when the process asked the build to stop (``stop_builds``):
    what was added is saved, and the next build resumes from there.
    """
    rows = demo_image_rows() + list(nlmcxr_reports(max_reports))
    report = build_from_rows(lib, rows, batch_size=64, progress=progress, stop=_STOP.is_set)
    if report.stopped:
        raise BuildStopped(f"stopped after {report.added + report.already_present} of "
                           f"{len(rows)} cases; the next build resumes")
    lib.manifest["complete"] = True
    lib.save()
    return report
