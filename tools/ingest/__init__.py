"""Image ingest: files in (DICOM, raster, NIfTI, series folders), the hostile-input guard,
de-identification and burned-in text, and the fuzz harness that checks them.

Everything that turns bytes from outside into a stored, de-identified image lives here; the
expert tools in ``tools.vision`` only ever see stored images. ``ingest_path`` is the one way a
path becomes store ids, used by the graph's *ingest* node and by the app's uploads alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tools.image import ImageRef, LoadedImage
    from tools.store import ImageStore

__all__ = ["ingest_path"]


def ingest_path(store: ImageStore, path: str | Path) -> tuple[LoadedImage, list[ImageRef]]:
    """Load, de-identify and store one file or series folder; the image and its store refs.

    The first ref is the image itself. A volume (DICOM series, NIfTI) is stored whole and
    followed by its middle axial, coronal and sagittal planes as 2D images of their own
    (``ImageStore.put_views``), so the 2D tools can work on it. Raises the loader's
    ``IngestError`` subclasses for a file that cannot be loaded.
    """
    from tools.ingest.loader import load_image  # pydicom/Pillow only when a path comes in
    from tools.ingest.volume import is_volume

    img = load_image(path)
    ref = store.put(img)
    refs = [ref]
    if is_volume(img):
        refs.extend(store.put_views(ref.id))
    return img, refs
