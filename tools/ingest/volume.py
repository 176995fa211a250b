"""The old home of the volume loaders, planes and CT windows; kept so existing imports work.

New code imports from where each lives now: DICOM series folders from ``tools.ingest.series``,
NIfTI from ``tools.ingest.nifti``, CT windows (``window``, ``WINDOW_PRESETS``) from
``tools.ingest.windowing``, and volumes' planes (``is_volume``, ``volume_plane``,
``view_planes``, ``orthogonal_views``, ``PLANES``) from the kernel module ``tools.planes``.
"""

from __future__ import annotations

from tools.ingest.nifti import MAX_NIFTI_BYTES, load_nifti
from tools.ingest.series import MAX_SERIES_FILES, load_series
from tools.ingest.windowing import WINDOW_PRESETS, window
from tools.planes import PLANES, is_volume, orthogonal_views, view_planes, volume_plane

__all__ = [
    "MAX_NIFTI_BYTES",
    "MAX_SERIES_FILES",
    "PLANES",
    "WINDOW_PRESETS",
    "is_volume",
    "load_nifti",
    "load_series",
    "orthogonal_views",
    "view_planes",
    "volume_plane",
    "window",
]
