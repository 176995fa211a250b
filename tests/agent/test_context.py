"""Run settings: one dataclass, and ``from_env`` the one reader of ``MEDLOOP_*``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agent.context import AgentContext
from tools.models.registry import VisionConfig

ROOT = Path(__file__).resolve().parents[2]


def test_from_env_reads_every_setting():
    env = {"MEDLOOP_LLM": "openai:m@http://h:1/v1", "MEDLOOP_HOME": "/data/medloop",
           "MEDLOOP_DEVICE": "cpu", "MEDLOOP_SEGMENTER": "hf:org/sam",
           "MEDLOOP_DETECTOR": "hf:/models/owl", "MEDLOOP_CLASSIFIER": "open_clip:hf-hub:o/n",
           "MEDLOOP_LIBRARY": "/libs/site", "MEDLOOP_CALIBRATION": "none",
           "MEDLOOP_LLM_THREADS": "1", "MEDLOOP_LLM_TEMPERATURE": "0.7"}
    ctx = AgentContext.from_env(env)
    assert (ctx.llm, ctx.home, ctx.device, ctx.library, ctx.calibration) == (
        "openai:m@http://h:1/v1", "/data/medloop", "cpu", "/libs/site", "none")
    assert ctx.vision == VisionConfig("hf:org/sam", "hf:/models/owl", "open_clip:hf-hub:o/n",
                                      "cpu")
    assert (ctx.llm_threads, ctx.llm_temperature) == (1, 0.7)
    assert ctx.library_path == Path("/libs/site")


def test_from_env_defaults_and_overrides():
    ctx = AgentContext.from_env({"MEDLOOP_LLM": "", "MEDLOOP_DEVICE": "cpu"})
    assert ctx.llm == "embedded" and ctx.home is None and ctx.library_path is None
    # explicit keywords win over the environment, None included (no persistence)
    ctx = AgentContext.from_env({"MEDLOOP_DEVICE": "cpu"}, device="auto", checkpoint=None)
    assert ctx.device == "auto" and ctx.checkpoint is None


@pytest.mark.parametrize("env, message", [
    ({"MEDLOOP_LLM_THREADS": "two"}, "MEDLOOP_LLM_THREADS must be a whole number"),
    ({"MEDLOOP_LLM_TEMPERATURE": "hot"}, "MEDLOOP_LLM_TEMPERATURE must be a number"),
    ({"MEDLOOP_LLM_TEMPERATURE": "3"}, "llm_temperature must be from 0"),
    ({"MEDLOOP_DEVICE": "gpu"}, "device must be auto, cpu or cuda"),
    ({"MEDLOOP_SEGMENTER": "medsam"}, "segmenter must be"),
])
def test_a_malformed_setting_is_named(env, message):
    with pytest.raises(ValueError, match=message):
        AgentContext.from_env(env)


def test_an_unknown_override_is_refused():
    with pytest.raises(TypeError, match="unknown AgentContext setting"):
        AgentContext.from_env({}, max_round=3)


def _environ_readers(path: Path) -> list[int]:
    """Lines of ``path`` that read ``os.environ`` / ``os.getenv`` for a MEDLOOP_ name."""
    tree = ast.parse(path.read_text())
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("MEDLOOP_"):
            lines.append(node.lineno)
    text = path.read_text().splitlines()
    return [n for n in lines if "environ" in text[n - 1] or "getenv" in text[n - 1]]


def test_no_module_but_the_context_reads_a_medloop_variable():
    readers = {}
    for pkg in ("agent", "tools", "retrievers", "prompts"):
        for path in (ROOT / pkg).rglob("*.py"):
            found = _environ_readers(path)
            if found and path.name != "context.py":
                readers[str(path.relative_to(ROOT))] = found
    # The front ends' own launch options (the CLI's MEDLOOP_DEBUG) are not run settings.
    readers.pop("agent/cli/main.py", None)
    assert readers == {}


def test_the_site_key_comes_from_the_secret_or_the_home(tmp_path):
    given = AgentContext.from_env({"MEDLOOP_DEID_SECRET": "x" * 40}, home=tmp_path)
    from_home = AgentContext(home=tmp_path)
    assert given.site_key().fingerprint != from_home.site_key().fingerprint
    assert from_home.site_key().fingerprint == AgentContext(home=tmp_path).site_key().fingerprint
    assert (tmp_path / "site_secret").exists()
    assert "x" * 40 not in repr(given)  # the secret is not printed with the settings
