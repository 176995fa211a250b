"""Make ``import torchvision`` work with the CPU torch wheel.

The only torchvision built for torch 2.13.0 is a CUDA build. With the CPU torch its compiled
ops do not load, and importing it dies with ``operator torchvision::nms does not exist`` because
its fake-tensor registrations for ``nms``/``qnms`` assume the ops exist. That breaks timm,
open_clip and transformers model classes. ``ensure_torchvision()`` registers those two operator
schemas with ``torch.library`` and gives ``nms`` a pure-torch CPU implementation, then imports
torchvision. Where the compiled ops load (a GPU machine), it only imports torchvision.

Other compiled ops (``roi_align``, ``deform_conv2d``...) stay unavailable on such a CPU install;
torchvision raises its own clear error if one is called. ``torchvision.io`` is not usable
either: decode images with Pillow.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

_LOCK = threading.Lock()
_LIB: Any = None  # the torch.library.Library must stay alive for the schemas to stay defined


def nms_reference(boxes: Any, scores: Any, iou_threshold: float) -> Any:
    """Greedy non-maximum suppression; boxes ``(N, 4)`` XYXY, scores ``(N,)``.

    Returns the indices kept, highest score first, as torchvision's ``nms`` does.
    """
    import torch

    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    x0, y0, x1, y1 = boxes.unbind(1)
    areas = (x1 - x0).clamp(min=0) * (y1 - y0).clamp(min=0)
    order = scores.argsort(descending=True)
    keep: list[int] = []
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    for idx in order.tolist():
        if suppressed[idx]:
            continue
        keep.append(idx)
        xx0 = torch.maximum(x0[idx], x0)
        yy0 = torch.maximum(y0[idx], y0)
        xx1 = torch.minimum(x1[idx], x1)
        yy1 = torch.minimum(y1[idx], y1)
        inter = (xx1 - xx0).clamp(min=0) * (yy1 - yy0).clamp(min=0)
        iou = inter / (areas[idx] + areas - inter).clamp(min=1e-12)
        suppressed |= iou > iou_threshold
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def _register_missing_ops() -> None:
    global _LIB
    import torch

    if _LIB is not None:
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.impl("nms", nms_reference, "CompositeExplicitAutograd")
    lib.impl("qnms", nms_reference, "CompositeExplicitAutograd")
    _LIB = lib


def ensure_torchvision() -> Any:
    """Import torchvision, patching in the missing op schemas on a CPU-only install."""
    with _LOCK:
        try:
            import torchvision

            return torchvision
        except RuntimeError as exc:
            if "torchvision::" not in str(exc):
                raise
        # Drop the half-imported modules and try again with the schemas defined.
        for name in list(sys.modules):
            if name == "torchvision" or name.startswith("torchvision."):
                del sys.modules[name]
        _register_missing_ops()
        import torchvision
        import torchvision.extension

        # torchvision.ops.nms checks that the compiled library loaded; ours stands in for it.
        torchvision.extension._has_ops = lambda: True
        return torchvision
