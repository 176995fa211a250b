"""*ingest*: turn the images a turn brings into store ids, and open a new turn.

Paths are loaded once (de-identified metadata only), stored by content id, and dropped from the
state: the checkpoint keeps ids, never paths (a file name can hold a patient's name) or pixels.
A DICOM series folder or a NIfTI file is stored whole as one volume id, and its middle axial,
coronal and sagittal planes are stored as 2D images of their own and listed after it, so the
2D tools can work on them (``ImageStore.put_views``).
A file that cannot be loaded raises its ``IngestError``: that is the user's problem to fix, not
the planner's, so the run stops with the message rather than reasoning around a missing image.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent.state import AgentState
from agent.trace import IngestStep
from tools.image import ImageRef
from tools.ingest import ingest_path
from tools.store import ImageStore


def make_ingest(store: ImageStore) -> Callable[..., Any]:
    """Build the ingest node over ``store``: the one every tool of the graph reads."""

    def ingest(state: AgentState) -> dict[str, Any]:
        refs: list[ImageRef] = []
        for item in state.get("images") or []:
            if item in store:
                refs.append(store.ref(item))
            else:
                refs.extend(ingest_path(store, item)[1])  # a volume's planes follow it
        turn = int(state.get("turn") or 0) + 1
        return {
            "images": [],
            "image_refs": refs,
            "turn": turn,
            "round": 0,
            "proposal": None,
            "feedback": [],
            "answer": None,
            "budget_exhausted": False,
            "trace": [IngestStep(turn=turn, step="ingest", images=[r.id for r in refs])],
        }

    return ingest
