"""agent.profiles: parsing, lookup by name or path, and how a profile sits under the settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.context import AgentContext
from agent.profiles import (
    PROFILE_KEYS,
    builtin_names,
    list_profiles,
    load_profile,
    parse_profile,
)


def test_builtin_profiles():
    assert builtin_names() == ["cxr-gpu", "offline-cpu"]
    cpu = load_profile("offline-cpu")
    assert cpu.source == "built-in" and cpu.description
    assert dict(cpu.settings) == {"segmenter": "lite-medsam", "detector": "lungs-finder",
                                  "classifier": None, "anatomy": None, "vlm": None,
                                  "device": "cpu"}
    gpu = load_profile("cxr-gpu")
    assert gpu.settings["classifier"] == "xrv:densenet121-res224-all"
    assert gpu.settings["anatomy"] == "xrv-pspnet"
    assert gpu.settings["segmenter"] == "hf:wanglab/medsam-vit-base"
    assert gpu.settings["vlm"] == "hf:google/medgemma-4b-it"


def test_every_builtin_profile_builds_a_valid_context(tmp_path):
    for name in builtin_names():
        ctx = AgentContext.from_env({}, profile=name, home=str(tmp_path), checkpoint=None)
        settings = load_profile(name).settings
        for key, value in settings.items():
            assert getattr(ctx, key) == value, (name, key)
        assert ctx.profile == name and ctx.vision.vlm == settings.get("vlm")


@pytest.mark.parametrize("text, message", [
    ('segmenter = "lite-medsam"\ncolour = "red"', r"unknown key\(s\) colour; a profile may set"),
    ("segmenter = 3", "segmenter must be a string"),
    ('segmenter = ""', "segmenter cannot be empty"),
    ('device = ""', "device cannot be empty"),
    ("description = 1", "description must be a string"),
    ("segmenter = ", "not valid TOML"),
])
def test_bad_profiles_are_named(text, message):
    with pytest.raises(ValueError, match=rf"profile mine.toml: {message}"):
        parse_profile(text, "mine", "mine.toml")


def test_a_partial_profile_sets_only_its_keys():
    p = parse_profile('description = "just a VLM"\nvlm = "openai:m@http://h:8000/v1"\n'
                      'classifier = ""\ngpu_mem = "20GB"', "vlm-only")
    assert dict(p.settings) == {"classifier": None, "vlm": "openai:m@http://h:8000/v1",
                                "gpu_mem": "20GB"}
    assert set(p.settings) <= set(PROFILE_KEYS) and p.description == "just a VLM"


def test_unknown_names_list_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match=r"unknown profile 'cxr-cpu': use one of cxr-gpu, "
                                         r"offline-cpu or the path"):
        load_profile("cxr-cpu", tmp_path)
    with pytest.raises(ValueError, match=r"profile file .*nowhere\.toml not found"):
        load_profile(str(tmp_path / "nowhere.toml"))
    with pytest.raises(ValueError, match="unknown profile"):
        AgentContext.from_env({"MEDLOOP_PROFILE": "cxr-cpu", "MEDLOOP_HOME": str(tmp_path)})


def _user_profile(home: Path, name: str, text: str) -> Path:
    folder = home / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


def test_user_profiles_by_path_and_by_name_in_the_home(tmp_path):
    path = _user_profile(tmp_path, "mine", 'description = "my CT setup"\ndevice = "cuda"\n'
                                           'vlm = "hf:/models/medgemma"\n')
    by_path = load_profile(str(path))
    assert by_path.name == "mine" and by_path.source == str(path)
    assert by_path.settings == {"device": "cuda", "vlm": "hf:/models/medgemma"}
    assert load_profile("mine", tmp_path) == by_path
    assert [p.name for p in list_profiles(tmp_path)] == ["cxr-gpu", "offline-cpu", "mine"]
    # A user's file with a built-in's name replaces the built-in.
    _user_profile(tmp_path, "cxr-gpu", 'vlm = "openai:medgemma-27b@http://gpu:8000/v1"\n')
    mine = load_profile("cxr-gpu", tmp_path)
    assert mine.source.endswith("cxr-gpu.toml") and mine.settings == {
        "vlm": "openai:medgemma-27b@http://gpu:8000/v1"}
    assert load_profile("cxr-gpu").source == "built-in"  # without the home: the built-in
    # A broken user file is named when listing.
    _user_profile(tmp_path, "broken", "segmenter = [")
    with pytest.raises(ValueError, match=r"broken\.toml: not valid TOML"):
        list_profiles(tmp_path)


def test_the_profile_sits_under_the_environment_and_the_overrides(tmp_path):
    home = str(tmp_path)
    env = {"MEDLOOP_PROFILE": "cxr-gpu", "MEDLOOP_HOME": home}
    ctx = AgentContext.from_env(env)
    assert (ctx.segmenter, ctx.classifier, ctx.anatomy, ctx.vlm) == (
        "hf:wanglab/medsam-vit-base", "xrv:densenet121-res224-all", "xrv-pspnet",
        "hf:google/medgemma-4b-it")
    # A variable that is set wins over the profile, even when it names medloop's default.
    ctx = AgentContext.from_env({**env, "MEDLOOP_SEGMENTER": "lite-medsam",
                                 "MEDLOOP_VLM": "openai:m@http://127.0.0.1:8000/v1"})
    assert ctx.segmenter == "lite-medsam" and ctx.vlm == "openai:m@http://127.0.0.1:8000/v1"
    assert ctx.classifier == "xrv:densenet121-res224-all"
    # So does an override, None included; and profile= overrides MEDLOOP_PROFILE.
    ctx = AgentContext.from_env(env, classifier=None, device="cpu")
    assert ctx.classifier is None and ctx.device == "cpu" and ctx.anatomy == "xrv-pspnet"
    ctx = AgentContext.from_env(env, profile="offline-cpu")
    assert ctx.profile == "offline-cpu" and ctx.vlm is None and ctx.device == "cpu"
    # A user profile by name, under the home the same call sets.
    _user_profile(tmp_path, "site", 'vlm = "openai:qwen2.5vl:7b@http://127.0.0.1:11434/v1"\n')
    ctx = AgentContext.from_env({"MEDLOOP_PROFILE": "site", "MEDLOOP_HOME": home})
    assert ctx.vision.vlm == "openai:qwen2.5vl:7b@http://127.0.0.1:11434/v1"
    assert ctx.segmenter == "lite-medsam"  # the key it leaves out keeps the default


def test_the_vlm_settings_reach_the_tools(tmp_path):
    ctx = AgentContext.from_env({"MEDLOOP_VLM": "openai:m@http://127.0.0.1:8000/v1",
                                 "MEDLOOP_VLM_API_KEY": "sk-secret"})
    assert ctx.vision.vlm == "openai:m@http://127.0.0.1:8000/v1"
    assert ctx.vision.vlm_api_key == "sk-secret"
    assert "sk-secret" not in repr(ctx) and "sk-secret" not in repr(ctx.vision)
    with pytest.raises(ValueError, match="vlm must be"):
        AgentContext.from_env({"MEDLOOP_VLM": "medgemma"})
    # A bad value in a profile is named like a bad variable.
    bad = tmp_path / "bad.toml"
    bad.write_text('vlm = "medgemma"\n')
    with pytest.raises(ValueError, match="vlm must be"):
        AgentContext.from_env({}, profile=str(bad))
