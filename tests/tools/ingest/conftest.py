"""Fixtures shared by the ingest tests."""

from __future__ import annotations

import pytest

from tests.tools.ingest.helpers import sample
from tools.image import LoadedImage
from tools.ingest.loader import load_image


@pytest.fixture(scope="session")
def chest() -> LoadedImage:
    """RG1_UNCI: CR chest PA, MONOCHROME1, 15-bit (loaded once: 1955x1841 px)."""
    return load_image(sample("RG1_UNCI.dcm"))
