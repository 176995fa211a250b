"""Re-windowing a CT image: the same Hounsfield units shown through a named reading window.

A CT is stored with one display: the file's own window, else its percentile range. Lung detail
is invisible in a soft-tissue window and bone detail in a lung window, and every tool that
looks at the display (``segment``, ``find``, ``detect_lesions``, ``read_text``...) sees only
what that window shows. ``rewindow`` maps the displayed frame's HU through a preset of
``tools.ingest.windowing.WINDOW_PRESETS`` (centre / width in HU: lung, mediastinum, bone, brain,
abdomen); the ``window`` tool stores the result as a new image whose id the planner can pass to
any other tool. Its pixels are the original HU, unchanged, so measurements on it (HU
statistics, areas in mm) are those of the original; only the display differs.

Refused (``ToolInputError``, so the planner can pick another tool): an image whose pixels are
not HU (``meta["units"] != "HU"``: radiographs, MR, photos), where a HU window means nothing.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from tools.base import ImageArgs
from tools.domain import Domain
from tools.errors import OutsideDomain, ToolInputError
from tools.evidence import PIXELS, Evidence, Measurement
from tools.image import LoadedImage
from tools.ingest.windowing import WINDOW_PRESETS, window
from tools.spec import ToolSpec
from tools.store import ImageStore
from tools.vision.basic import displayed_frame

__all__ = ["TOOLS", "WindowArgs", "Windowed", "rewindow", "window_evidence"]


@dataclass
class _WindowedImage(LoadedImage):
    """A ``LoadedImage`` whose id covers its window as well as its pixels.

    The store names an image by its pixels; a re-windowed CT keeps the original's pixels, so
    without this it would get the original's id and the store would keep the old display.
    """

    center_hu: float = 0.0
    width_hu: float = 0.0

    def content_id(self) -> str:
        """``img-`` + 12 hex digits of the pixels' id and the window (centre/width, HU)."""
        key = f"{super().content_id()}|window {self.center_hu:g}/{self.width_hu:g} HU"
        return "img-" + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Windowed:
    """A CT image shown through a reading window.

    Attributes:
        image: the re-windowed image: the original's pixels (HU) and spacing, ``display``
            uint8 ``(H, W)`` of the displayed frame through the window.
        preset: the preset's name, e.g. ``"lung"``.
        center_hu: window centre in HU.
        width_hu: window width in HU; ``center_hu - width_hu / 2`` and below show black,
            ``center_hu + width_hu / 2`` and above white.
    """

    image: LoadedImage
    preset: str
    center_hu: float
    width_hu: float


def rewindow(img: LoadedImage, preset: str) -> Windowed:
    """``img`` with its displayed frame shown through the window ``preset``.

    Args:
        img: a CT image or volume in HU (``meta["units"] == "HU"``); a volume keeps all its
            slices and shows its middle one, as loaded.
        preset: a name from ``WINDOW_PRESETS`` (case and spaces ignored).

    Raises:
        OutsideDomain: the pixels are not HU (no other arguments mend that).
        ToolInputError: the preset is unknown.
    """
    if img.meta.get("units") != "HU":
        modality = img.meta.get("modality") or "unknown modality"
        raise OutsideDomain(f"this image ({modality}) is not in Hounsfield units: a CT window "
                            "applies only to CT images", "its pixels are not in Hounsfield units")
    key = preset.strip().lower()
    if key not in WINDOW_PRESETS:
        raise ToolInputError(f"unknown window preset {preset!r}; use one of "
                             f"{', '.join(WINDOW_PRESETS)}")
    center, width = WINDOW_PRESETS[key]
    display = window(displayed_frame(img), (center, width))  # uint8 (H, W)
    meta = {**img.meta, "window": key, "window_center": center, "window_width": width}
    note = (f"shown in the {key} window (centre {center:g} HU, width {width:g} HU); "
            "pixels are the original HU")
    shown = _WindowedImage(pixels=img.pixels, display=display, spacing_mm=img.spacing_mm,
                           spacing_source=img.spacing_source, meta=meta,
                           source_format=img.source_format, notes=[*img.notes, note],
                           center_hu=center, width_hu=width)
    return Windowed(image=shown, preset=key, center_hu=center, width_hu=width)


def window_evidence(w: Windowed, image_id: str, new_id: str, elapsed_s: float = 0.0) -> Evidence:
    """Evidence naming the new image's id and the window (centre / width, HU) applied."""
    lo, hi = w.center_hu - w.width_hu / 2, w.center_hu + w.width_hu / 2
    summary = (f"{w.preset} window applied to {image_id}: centre {w.center_hu:g} HU, width "
               f"{w.width_hu:g} HU ({lo:g} HU and below black, {hi:g} HU and above white). "
               f"The re-windowed image is {new_id}; pass it to other tools to look at it in this "
               "window (its HU values are unchanged).")
    return Evidence(
        tool="window", image_id=image_id, summary=summary, score=1.0,
        measurements=[Measurement(name="window_center", value=w.center_hu, unit="HU"),
                      Measurement(name="window_width", value=w.width_hu, unit="HU")],
        new_image_ids=[new_id],
        data={"observes": PIXELS, "window_image_id": new_id, "preset": w.preset,
              "center_hu": w.center_hu, "width_hu": w.width_hu},
        elapsed_s=elapsed_s,
    )


class WindowArgs(ImageArgs):
    """Arguments of ``window``."""

    preset: str = Field(description="the reading window: 'lung', 'mediastinum', 'bone', "
                                    "'brain' or 'abdomen'")


_WINDOW = (
    "Re-window a CT image with a reading preset (lung, mediastinum, bone, brain, abdomen): "
    "stores the image shown through that window as a new image id to use with other tools. "
    "CT only (Hounsfield units); the HU values are unchanged."
)


def _windower(store: ImageStore) -> Callable[[WindowArgs], Evidence]:
    def window_tool(args: WindowArgs) -> Evidence:
        t0 = time.perf_counter()
        w = rewindow(store.get(args.image_id), args.preset)
        ref = store.put(w.image)
        return window_evidence(w, args.image_id, ref.id, time.perf_counter() - t0)

    return window_tool


TOOLS = (
    ToolSpec(
        name="window", description=_WINDOW, args=WindowArgs,
        build=lambda deps: _windower(deps.store),
        examples=("Show this CT in the lung window.",
                  "Use a bone window on this scan.",
                  "Re-window the image for soft tissue in the mediastinum.",
                  "Can I see this head CT in a brain window?"),
        domain=Domain(
            validated_on="CT in Hounsfield units (other images' pixels are not in Hounsfield "
                         "units)",
            modalities=frozenset({"CT"}),
            outside="refuse", unknown="run",
            why="a HU window means nothing on other modalities: refused so the planner picks "
                "another tool; without a modality the tool's own check (pixels in HU, "
                "meta['units']) decides"),
    ),
)
"""``window``: no model, a linear HU -> grey map."""

