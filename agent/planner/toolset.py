"""The default tool set: everything from ``tools/`` and ``retrievers/`` that runs here."""

from __future__ import annotations

from langchain_core.tools import BaseTool

from tools.vision.basic import basic_tools
from tools.ingest.burned_in import burned_in_tools
from tools.vision.lesions import lesion_tools
from tools.models.registry import VisionConfig
from tools.vision.segment import vision_tools
from tools.store import ImageStore


def default_tools(store: ImageStore, device: str = "auto") -> list[BaseTool]:
    """The tools offered to the planner when the context names none.

    ``device`` is ``AgentContext.device``; ``auto`` leaves the choice to ``MEDLOOP_DEVICE``
    (else CUDA when present).
    """
    tools = [*basic_tools(store), *burned_in_tools(store), *lesion_tools(store),
             *vision_tools(store, config=VisionConfig.from_env(device))]
    return [*tools, *case_library_tools(store, taken={t.name for t in tools})]


def case_library_tools(store: ImageStore, taken: set[str]) -> list[BaseTool]:
    """The case-library tools: ``similar_cases``, ``report_lookup`` and the kNN ``classify``.

    The kNN ``classify`` is left out when a configured model already provides one. All run
    over ``$MEDLOOP_LIBRARY`` or the demo library, which opens (or is built, the first time)
    on the first call, not here.
    """
    from retrievers.knn_classify import knn_classify_tools
    from retrievers.similar import default_library, retrieval_tools

    library = default_library(store.root.parent)  # the store lives in the medloop home
    extra = retrieval_tools(store, library)
    if "classify" not in taken:
        extra += knn_classify_tools(store, library)
    return extra
