"""Shared fixtures: an isolated medloop home per test, and no network for model calls."""

from __future__ import annotations

import os

import numpy as np
import pytest

from tools.image import LoadedImage
from tools.store import ImageStore

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def medloop_home(tmp_path, monkeypatch):
    """Every test gets its own medloop home: store, checkpoints, libraries, calibrations.

    Both ways a home is found point at it: ``MEDLOOP_HOME`` (read by ``AgentContext.from_env``,
    so CLI and app runs see it) and the default of a context built without one
    (``tools.store.default_home``).
    """
    import tools.store

    home = tmp_path / "medloop-home"
    monkeypatch.setenv("MEDLOOP_HOME", str(home))
    monkeypatch.setattr(tools.store, "default_home", lambda: home)
    return home


@pytest.fixture(autouse=True)
def no_real_embedded_llm_unless_slow(request, monkeypatch):
    """Fail any test that runs the real embedded LLM (llama.cpp) without ``@pytest.mark.slow``.

    Every use of the real weights passes ``runtime.check_real_model_allowed`` (a load, or a
    model already cached by an earlier slow test); here it fails the test instead. A scripted
    model or a missing-weights error never reaches it.
    """
    if request.node.get_closest_marker("slow") is not None:
        return
    from agent.llm.embedded import runtime

    def refuse(path: str) -> None:
        pytest.fail(f"this test runs the real embedded LLM ({path}); mark it @pytest.mark.slow "
                    f"or give it a scripted model", pytrace=False)

    monkeypatch.setattr(runtime, "check_real_model_allowed", refuse)


@pytest.fixture
def store(medloop_home) -> ImageStore:
    return ImageStore(medloop_home / "store")


def phantom(
    h: int = 64,
    w: int = 80,
    spacing: tuple[float, float] | None = (0.5, 0.5),
    value: float = 100.0,
    seed: int = 0,
) -> LoadedImage:
    """A synthetic grey image with a bright square, at known spacing."""
    rng = np.random.default_rng(seed)
    px = rng.normal(10, 1, (h, w)).astype(np.float32)
    px[h // 4 : h // 2, w // 4 : w // 2] = value
    disp = np.clip(px / px.max() * 255, 0, 255).astype(np.uint8)
    return LoadedImage(
        pixels=px,
        display=disp,
        spacing_mm=spacing,
        spacing_source="PixelSpacing" if spacing else None,
        meta={"modality": "OT"},
        source_format="synthetic",
    )


from tests.openai_server import server  # noqa: E402, F401 - the scripted OpenAI server fixture
