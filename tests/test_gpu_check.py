"""bench/gpu_check.py on the CPU: each path but the PSPNet with ``--device cpu --small``; the report.

The GPU check exists for machines with an accelerator; here it runs the same paths on the CPU
(tiny VLM, SAM and index; the TorchXRayVision DenseNet at its real size; batches 1 and 2), so
a broken path is caught before a GPU is lent. Timings are not asserted: they are the script's
output, not a test's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


gpu_check = _load()


def _rows(out: str) -> dict[str, list[str]]:
    lines = [ln for ln in out.splitlines() if ln.startswith("| ") and not ln.startswith("| path")]
    return {cells[0]: cells for cells in ([c.strip() for c in ln.strip("|").split("|")]
                                          for ln in lines)}


@pytest.mark.slow
def test_every_path_runs_on_the_cpu(capsys, tmp_path):
    # Not the PSPNet: a ResNet-101 at 512 px (273 MB of random weights written and loaded, then
    # 5-20 s per image on two busy cores). Its path is the DenseNet's function with the other
    # name; tests/tools/models/test_xrv.py loads and runs it through the same loader.
    light = [p for p in gpu_check.PATHS if p != "xrv-pspnet"]
    out_json = tmp_path / "rows.json"
    code = gpu_check.main(["--device", "cpu", "--small", "--batches", "1,2", "--repeats", "1",
                           "--only", ",".join(light), "--json", str(out_json), "--in-process"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert out.splitlines()[0].startswith("torch ") and "CPU" in out.splitlines()[0]
    rows = _rows(out)
    assert list(rows) == light
    for path, cells in rows.items():
        # path | status | load s | ms/img | peak MB | /s b=1 | /s b=2 | note
        assert cells[1] == "ok", (path, cells)
        assert float(cells[2]) >= 0 and float(cells[3]) > 0 and float(cells[4]) > 0
        assert cells[5].endswith("(1.0×)") and cells[6].endswith("×)")
    data = json.loads(out_json.read_text())
    assert [r["path"] for r in data] == light
    assert all(set(r["per_s"]) == {"1", "2"} and r["device"] == "cpu" for r in data)
    assert "no GPU support" in rows["faiss"][-1] or "GPU copy" in rows["faiss"][-1]


def test_a_failing_path_is_a_row_and_exit_1(capsys, monkeypatch):
    def broken(device, work, small):
        raise RuntimeError("CUDA error: out of memory\nmore detail")

    def missing(device, work, small):
        raise gpu_check.Skip("faiss is not installed")

    monkeypatch.setitem(gpu_check.BUILDERS, "sam", broken)
    monkeypatch.setitem(gpu_check.BUILDERS, "faiss", missing)
    code = gpu_check.main(["--device", "cpu", "--only", "sam,faiss", "--repeats", "1",
                           "--in-process"])
    out = capsys.readouterr().out
    rows = _rows(out)
    assert code == 1
    assert rows["sam"][1] == "FAILED" and rows["sam"][-1] == "RuntimeError: CUDA error: out of memory"
    assert rows["faiss"][1] == "SKIPPED" and rows["faiss"][-1] == "faiss is not installed"
    # A skipped path alone is not a failure.
    assert gpu_check.main(["--device", "cpu", "--only", "faiss", "--in-process"]) == 0


def test_each_path_in_its_own_process(capsys):
    code = gpu_check.main(["--device", "cpu", "--small", "--only", "faiss", "--repeats", "1"])
    [cells] = _rows(capsys.readouterr().out).values()
    assert code == 0 and cells[:2] == ["faiss", "ok"] and float(cells[4]) > 0
    # A path that does not finish in its time is a FAILED row, and the run goes on.
    code = gpu_check.main(["--device", "cpu", "--small", "--only", "faiss,faiss",
                           "--path-timeout", "0.2"])
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| faiss")]
    assert code == 1 and len(rows) == 2 and all("FAILED" in r and "no result in 0.2 s" in r
                                                for r in rows)


def test_table_ratios_against_batch_one():
    row = gpu_check.Row("x", "cuda", load_s=1.5, ms_per_image=10.0, peak_mb=512.0,
                        per_s={1: 100.0, 8: 400.0, 32: 1600.0}, note="n")
    text = gpu_check.table([row], [1, 8, 32])
    assert "| x | ok | 1.50 | 10.0 | 512 | 100.0 (1.0×) | 400.0 (4.0×) | 1600.0 (16.0×) | n |" in text
    assert "peak GPU MB" in text.splitlines()[0]


def test_bad_arguments():
    with pytest.raises(SystemExit):
        gpu_check.main(["--device", "cpu", "--only", "tpu"])
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="torch sees no CUDA device"):
            gpu_check.main(["--device", "cuda"])
