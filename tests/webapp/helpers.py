"""Shared by the web app's tests (and bench/app_latency.py): a test image and a scripted planner."""

from __future__ import annotations

import itertools
import re

import numpy as np
from PIL import Image

from agent import AgentContext
from tests.fakes import ScriptedChatModel, ai, call, final
from tools.vision.basic import basic_tools
from webapp.sessions import Runner


def png(path, value=200):
    """A 64x64 grey PNG with a bright 32x32 square at (16, 16)-(48, 48)."""
    arr = np.zeros((64, 64), np.uint8)
    arr[16:48, 16:48] = value
    Image.fromarray(arr).save(path)
    return path


def planner():
    """Measures a region and a distance on the image it is shown, then answers citing both."""

    def step(messages):
        system = str(messages[0].content)
        image_id = re.search(r"img-[0-9a-f]{12}", system)
        if image_id and "E2 (" not in system:
            return ai(call("region_stats", image_id=image_id[0], box=[16, 16, 48, 48]),
                      call("measure_distance", image_id=image_id[0], points=[16, 32, 48, 32]))
        if image_id:
            return final("A bright square, 32 px wide.", [("square measured", ["E1", "E2"])], 0.8)
        return final("No image was given.", [], 0.2)

    return ScriptedChatModel.of(itertools.repeat(step))


def runner(tmp_path, store, model=None, checkpoint="memory", **kw):
    """The app's runner over ``store`` with the basic tools and the scripted ``planner``."""
    ctx = AgentContext(llm=model or planner(), tools=basic_tools(store), home=tmp_path,
                       checkpoint=checkpoint, **kw)
    ctx._store = store
    return Runner(ctx)


def bare_context(tmp_path, store):
    """A context with no tools and no checkpoints, over ``store`` (renderers and uploads)."""
    ctx = AgentContext(llm=ScriptedChatModel.of([]), tools=[], home=tmp_path, checkpoint=None)
    ctx._store = store
    return ctx
