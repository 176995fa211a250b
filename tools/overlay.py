"""Drawing evidence on an image: boxes, translucent masks, measurement lines and labels.

The UI and the tests use the same function, so what a user sees is what was tested. Colours
come from a fixed palette in the order items are drawn (item by item, masks then boxes then
lines), so an overlay is reproducible. Coordinates are pixels of the display (boxes XYXY).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tools.evidence import Evidence
from tools.image import to_rgb
from tools.store import ImageStore

__all__ = ["MASK_ALPHA", "PALETTE", "draw_evidence", "to_rgb"]

# Distinct, colour-blind-friendly-ish RGB colours (Okabe-Ito without black).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
)
# Opacity of a mask's fill: enough to see the region, little enough to see the anatomy.
MASK_ALPHA = 0.4


def draw_evidence(
    display: np.ndarray,
    evidence_items: Iterable[Evidence],
    store: ImageStore,
    image_id: str | None = None,
) -> np.ndarray:
    """Draw every ok evidence item on ``display``; returns RGB uint8 ``(H, W, 3)``.

    Within an item, mask ``i`` and box ``i`` share a colour (one structure, one colour).

    Masks (from ``store`` by ``mask_keys``) are blended with ``MASK_ALPHA``; boxes are outlined,
    measurement ``line``s drawn, and each with its label. Items that failed, or that belong to
    another image than ``image_id`` (when given), are skipped. A mask whose shape differs from
    the display is skipped rather than stretched: it cannot belong to this image.
    """
    rgb = to_rgb(display).astype(np.float32)
    h, w = rgb.shape[:2]
    items = [e for e in evidence_items
             if e.status == "ok" and (image_id is None or e.image_id in (None, image_id))]
    colour_i = 0
    for ev in items:
        for key in ev.mask_keys:
            colour = PALETTE[colour_i % len(PALETTE)]
            colour_i += 1
            mask = store.get_array(key).astype(bool)
            if mask.shape != (h, w):
                continue
            rgb[mask] = (1 - MASK_ALPHA) * rgb[mask] + MASK_ALPHA * np.array(colour, np.float32)
    im = Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    width = max(1, round(max(h, w) / 400))
    font = _font(max(10, round(max(h, w) / 60)))
    colour_i = 0
    for ev in items:
        for box in ev.boxes:
            colour = PALETTE[colour_i % len(PALETTE)]
            colour_i += 1
            x0, y0, x1, y1 = box.xyxy
            # x1/y1 are exclusive: the outline's last pixel is x1 - 1.
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), outline=colour, width=width)
            if box.label:
                draw.text((x0 + width + 1, y0 + width + 1), box.label, fill=colour, font=font)
        for m in ev.measurements:
            if m.line is None:
                continue
            colour = PALETTE[colour_i % len(PALETTE)]
            colour_i += 1
            x0, y0, x1, y1 = m.line
            draw.line((x0, y0, x1, y1), fill=colour, width=width)
            text = f"{m.name} {m.value:g} {m.unit}"
            draw.text(((x0 + x1) / 2, (y0 + y1) / 2 + width + 1), text, fill=colour, font=font)
    return np.asarray(im, dtype=np.uint8).copy()


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at ``size`` px (scalable since Pillow 10.1), else its bitmap one."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()
