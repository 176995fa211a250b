"""Image ingest.

Files in, by format: ``loader`` (``load_image``, the one entry point) hands each file to
``dicom`` (one DICOM Part 10 file; its spacing and whitelisted metadata in ``dicom_meta``),
``series`` (a folder of DICOM slices as one volume), ``nifti`` or ``raster`` (PNG / JPEG).
Beside them: ``windowing`` (CT presets, the file's VOI LUT, percentile windows), ``values`` (the
coercers every reader uses on untrusted DICOM values), ``guard`` (the hostile-input checks and
the isolated decoder child), ``deid`` and ``burned_in`` (de-identification of files and of
pixels) and ``fuzz`` (the harness that checks the guards). Modules import each other's public
names only; planes of volumes are cut by the kernel's ``tools.planes``.

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
    # Imported here, not at the top: importing any ``tools.ingest`` module runs this file, and
    # the decoder child, which imports ``tools.ingest.guard`` alone, must start light.
    from tools.ingest.loader import load_image
    from tools.planes import is_volume

    img = load_image(path)
    ref = store.put(img)
    refs = [ref]
    if is_volume(img):
        refs.extend(store.put_views(ref.id))
    return img, refs
