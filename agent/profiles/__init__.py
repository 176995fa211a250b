"""Profiles: a consistent set of experts for one setting, named once.

A profile is a small TOML file giving defaults for the vision settings of ``AgentContext``;
``AgentContext.from_env`` lays it under the ``MEDLOOP_*`` variables and the explicit options,
so anything set explicitly still wins. Chosen with ``MEDLOOP_PROFILE`` (or ``profile=``): a
name, or the path of a TOML file.

Built in (the ``*.toml`` files beside this module):

* ``offline-cpu``: the packaged defaults (LiteMedSAM, lungs-finder, the case library's
  classifier, no VLM) on the CPU: nothing to download.
* ``cxr-gpu``: chest radiographs on a GPU: the torchxrayvision DenseNet classifier and PSPNet
  anatomy, MedSAM in transformers format, MedGemma as the VLM.

A profile of one's own is a file like these, e.g. ``~/.cache/medloop/profiles/mine.toml``
(then ``MEDLOOP_PROFILE=mine``; a file there with a built-in name replaces the built-in) or
anywhere (``MEDLOOP_PROFILE=/path/mine.toml``)::

    description = "my CT setup"
    segmenter = "hf:/models/medsam-vit-base"   # any key left out keeps medloop's default
    vlm = "openai:medgemma-27b@http://gpu-box:8000/v1"
    device = "cuda"

Keys: ``segmenter``, ``detector``, ``classifier``, ``anatomy``, ``vlm``, ``device``,
``gpu_mem`` (the values ``AgentContext`` takes) and ``description``; ``""`` means none for
``classifier``, ``anatomy``, ``vlm`` and ``gpu_mem`` (no limit).
``medloop models`` shows what each profile's models need and whether they are here;
``medloop models pull NAME`` fetches the missing ones (``agent.profiles.weights``).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = ["MODEL_KEYS", "PROFILE_KEYS", "Profile", "builtin_names", "list_profiles",
           "load_profile", "parse_profile"]

PROFILE_KEYS = ("segmenter", "detector", "classifier", "anatomy", "vlm", "device", "gpu_mem")
"""The ``AgentContext`` settings a profile may give, in the order they are shown."""

MODEL_KEYS = PROFILE_KEYS[:5]
"""The keys that name a model (the others say where and in how much memory they run)."""

# The keys whose "" means none; the others always name something.
_MAY_BE_NONE = ("classifier", "anatomy", "vlm", "gpu_mem")
_USER_DIR = "profiles"  # under the medloop home


@dataclass(frozen=True)
class Profile:
    """One parsed profile.

    Attributes:
        name: its name (the file's stem).
        description: one line on what it is for.
        settings: ``AgentContext`` field -> value for the keys the file gives (None: none).
        source: ``built-in`` or the file's path.
    """

    name: str
    description: str = ""
    settings: Mapping[str, str | None] = field(default_factory=dict)
    source: str = "built-in"


def parse_profile(text: str, name: str, source: str = "built-in") -> Profile:
    """The profile in TOML ``text``; ValueError naming ``source`` and the problem."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"profile {source}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - {*PROFILE_KEYS, "description"})
    if unknown:
        raise ValueError(f"profile {source}: unknown key(s) {', '.join(unknown)}; a profile "
                         f"may set {', '.join(PROFILE_KEYS)} and description")
    settings: dict[str, str | None] = {}
    for key in PROFILE_KEYS:
        if key not in data:
            continue
        value = data[key]
        if not isinstance(value, str):
            raise ValueError(f"profile {source}: {key} must be a string (\"\" for none), "
                             f"not {value!r}")
        if not value.strip() and key not in _MAY_BE_NONE:
            raise ValueError(f"profile {source}: {key} cannot be empty (leave the key out for "
                             "medloop's default)")
        settings[key] = value.strip() or None
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"profile {source}: description must be a string")
    return Profile(name=name, description=description.strip(), settings=settings,
                   source=source)


def builtin_names() -> list[str]:
    """The names of the profiles shipped with medloop, sorted."""
    folder = resources.files(__name__)
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def _builtin(name: str) -> Profile:
    text = resources.files(__name__).joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return parse_profile(text, name)


def _from_file(path: Path) -> Profile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"profile file {path} cannot be read ({exc.strerror or exc})") from None
    return parse_profile(text, path.stem, str(path))


def _is_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref or "\\" in ref or ref.startswith(("~", "."))


def load_profile(ref: str, home: Path | None = None) -> Profile:
    """The profile ``ref`` names: a TOML path, a file ``HOME/profiles/REF.toml``, a built-in.

    Raises:
        ValueError: no such file or name (the message lists the known names), or a file that
            is not a valid profile.
    """
    ref = ref.strip()
    if _is_path(ref):
        path = Path(ref).expanduser()
        if not path.is_file():
            raise ValueError(f"profile file {path} not found")
        return _from_file(path)
    if home is not None and (home / _USER_DIR / f"{ref}.toml").is_file():
        return _from_file(home / _USER_DIR / f"{ref}.toml")
    if ref in builtin_names():
        return _builtin(ref)
    known = [p.name for p in list_profiles(home)]
    raise ValueError(f"unknown profile {ref!r}: use one of {', '.join(known)} or the path of "
                     "a profile TOML file (the README's Profiles section shows the format)")


def list_profiles(home: Path | None = None) -> list[Profile]:
    """The built-in profiles, then the user's (``HOME/profiles/*.toml``).

    A user's file replaces a built-in of the same name; a broken one raises ValueError naming it.
    """
    found = {name: _builtin(name) for name in builtin_names()}
    folder = home / _USER_DIR if home is not None else None
    if folder is not None and folder.is_dir():
        for path in sorted(folder.glob("*.toml")):
            found[path.stem] = _from_file(path)
    return list(found.values())
