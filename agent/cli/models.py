"""``medloop models``: the models as configured, each profile's models, and ``pull``.

* ``medloop models`` — the configured models (``MEDLOOP_SEGMENTER`` and friends, or
  ``MEDLOOP_PROFILE``): where each comes from, its licence, size, device, whether it is
  available offline; then, per profile (``agent.profiles``), which of its models are present,
  which are missing and how to get them. ``--json`` gives the configured rows.
* ``medloop models --profile NAME`` — one profile's models (``--json``: as a document).
* ``medloop models pull NAME`` — downloads the profile's missing hub and TorchXRayVision
  weights; without a network it fails within seconds, naming what is missing (exit 1).

Nothing is loaded, and nothing but ``pull`` touches the network.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from agent.cli.options import BadInput, context, emit_json
from agent.planner.toolset import tool_models
from agent.profiles import Profile, list_profiles, load_profile
from agent.profiles.weights import GATED_NOTE, Weights, pull, weights_of

__all__ = ["add_parser", "cmd_models", "cmd_pull"]

PULL_TIMEOUT_S = 3.0
"""How long each server gets to answer before ``pull`` calls the network absent."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``models`` (and ``models pull``) to ``sub`` (an argparse subparsers object)."""
    mod = sub.add_parser("models", help="list the models (licence, size, device, offline) and "
                                        "each profile's; `models pull PROFILE` fetches weights")
    mod.add_argument("--json", action="store_true")
    mod.add_argument("--profile", metavar="NAME",
                     help="show only this profile's models (a name or a TOML path)")
    mod.set_defaults(func=cmd_models)
    actions = mod.add_subparsers(dest="models_command", metavar="{pull}")
    p = actions.add_parser("pull", help="download a profile's missing weights")
    p.add_argument("profile", metavar="PROFILE", help="a profile name or a TOML path")
    p.add_argument("--timeout", type=float, default=PULL_TIMEOUT_S, metavar="S",
                   help=f"seconds each server gets to answer first (default {PULL_TIMEOUT_S:g})")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pull)
    return mod


def _profile(ref: str) -> Profile:
    try:
        return load_profile(ref, context({}, checkpoint=None).home_dir)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc


def _weights_lines(items: list[Weights]) -> list[str]:
    lines = []
    for w in items:
        if w.present is None:
            state = f"elsewhere ({w.how})"
        elif w.present:
            state = f"present ({w.where})"
        else:
            state = f"MISSING: {w.how}"
        lines.append(f"  {w.setting} {w.value}: {state}")
    return lines


def _profile_text(profile: Profile, items: list[Weights]) -> str:
    device = profile.settings.get("device") or "auto"
    head = (f"{profile.name}: {profile.description or '(no description)'} "
            f"[{profile.source}; device {device}]")
    missing = [w for w in items if w.present is False]
    if not missing:
        tail = "  all present"
    elif any(w.pullable for w in missing):
        tail = f"  {len(missing)} missing: medloop models pull {profile.name}"
    else:
        tail = f"  {len(missing)} missing"
    return "\n".join([head, *_weights_lines(items), tail])


def _profile_doc(profile: Profile, items: list[Weights]) -> dict[str, Any]:
    return {"name": profile.name, "description": profile.description, "source": profile.source,
            "settings": dict(profile.settings), "models": [w.as_dict() for w in items]}


def cmd_models(args: argparse.Namespace) -> int:
    """Print every default and configured model, none loaded, then each profile's models."""
    if args.profile:
        profile = _profile(args.profile)
        items = weights_of(profile)
        if args.json:
            emit_json(_profile_doc(profile, items))
        else:
            sys.stdout.write(_profile_text(profile, items) + "\n")
        return 0
    ctx = context({}, checkpoint=None)
    rows = tool_models(ctx)  # from the tools' own declarations
    if args.json:
        emit_json([r.as_dict() for r in rows])
        return 0
    if ctx.profile:
        sys.stdout.write(f"profile: {ctx.profile}\n")
    for r in rows:
        size = f"{r.size_mb:.1f} MB" if r.size_mb is not None else "size unknown"
        where = "offline" if r.offline else "NOT available offline"
        tag = "default" if r.default else "configured"
        sys.stdout.write(f"{r.name} ({tag}): {r.task}\n  {r.source}; {r.licence}; {size}; "
                         f"{r.device}; {where}{'; loaded' if r.loaded else ''}; {r.note}\n")
    try:
        profiles = list_profiles(ctx.home_dir)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    sys.stdout.write("\nProfiles (MEDLOOP_PROFILE=NAME or a TOML file; "
                     "`medloop models pull NAME` fetches what is missing):\n")
    for profile in profiles:
        sys.stdout.write(_profile_text(profile, weights_of(profile)) + "\n")
    sys.stdout.write(GATED_NOTE + "\n")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    """Download ``args.profile``'s missing weights; 1 when any could not be fetched."""
    if args.timeout <= 0:
        raise BadInput("--timeout must be a positive number of seconds")
    profile = _profile(args.profile)
    items = weights_of(profile)

    def progress(msg: str) -> None:
        sys.stderr.write(f"medloop: {msg}\n")

    results = pull(items, timeout_s=args.timeout, progress=progress)
    failed = [r for r in results if not r.ok]
    if args.json:
        emit_json({"profile": profile.name, "ok": not failed,
                   "results": [r.as_dict() for r in results]})
    else:
        for r in results:
            mark = "ok" if r.ok else "FAILED"
            sys.stdout.write(f"{r.weights.setting} {r.weights.value}: {mark}: {r.message}\n")
    if failed:
        names = ", ".join(f"{r.weights.value} ({r.weights.setting})" for r in failed)
        sys.stderr.write(f"medloop: profile {profile.name}: {len(failed)} model(s) missing and "
                         f"not fetched: {names}\n")
        return 1
    return 0
