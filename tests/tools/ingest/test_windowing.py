"""tools.ingest.windowing: CT window presets, on arrays and on a real CT series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.tools.ingest.helpers import write_series
from tools.errors import ToolInputError
from tools.ingest.loader import load_image
from tools.ingest.windowing import WINDOW_PRESETS, percentile_window, window


@pytest.mark.parametrize("name", sorted(WINDOW_PRESETS))
def test_window_presets_map_their_range(name: str) -> None:
    center, width = WINDOW_PRESETS[name]
    hu = np.array([center - width / 2 - 100, center - width / 2, center, center + width / 2,
                   center + width / 2 + 100])
    out = window(hu, name)
    assert out.dtype == np.uint8
    assert list(out[[0, 1, 3, 4]]) == [0, 0, 255, 255]
    assert 127 <= out[2] <= 128


def test_lung_window_values_and_pairs() -> None:
    out = window(np.array([[-1350.0, -600.0, 150.0, 3000.0, np.nan]]), "lung")
    assert out.tolist() == [[0, 128, 255, 255, 0]]
    assert window(np.array([-125.0, 225.0]), "Mediastinum").tolist() == [0, 255]
    assert window(np.array([0.0, 80.0]), "brain").tolist() == [0, 255]
    assert window(np.array([-500.0, 1300.0]), "bone").tolist() == [0, 255]
    assert window(np.array([-160.0, 240.0]), "abdomen").tolist() == [0, 255]
    np.testing.assert_array_equal(window(np.array([-600.0, 150.0]), (-600, 1500)),
                                  window(np.array([-600.0, 150.0]), "lung"))
    with pytest.raises(ToolInputError, match="unknown window preset"):
        window(np.zeros(3), "liver")
    with pytest.raises(ToolInputError, match="positive"):
        window(np.zeros(3), (40, 0))


def test_window_on_a_real_ct_series(tmp_path: Path) -> None:
    write_series(tmp_path / "ct", [0.0, 5.0, 10.0])
    vol = load_image(tmp_path / "ct").pixels
    lung = window(vol, "lung")
    assert lung.shape == vol.shape
    assert (lung[vol <= -1350] == 0).all() and (lung[vol >= 150] == 255).all()


# ---------------------------------------------------------------------------------------------
# The percentile fallback, and the old import path
# ---------------------------------------------------------------------------------------------
def test_percentile_window_ignores_outliers_and_nan() -> None:
    values = np.linspace(0.0, 100.0, 10_000).reshape(100, 100)
    values[0, 0], values[0, 1], values[0, 2] = 1e6, -1e6, np.nan  # metal, padding, a NaN
    out = percentile_window(values)
    assert out.dtype == np.uint8 and out.shape == values.shape
    assert out[0, 0] == 255 and out[0, 1] == 0 and out[0, 2] == 0
    assert 120 <= out[50, 0] <= 135  # the middle of the range stays mid-grey
    assert (percentile_window(np.full((4, 4), 7.0)) == 0).all()  # constant: all black
    assert (percentile_window(np.full((4, 4), np.nan)) == 0).all()


def test_window_still_importable_from_the_old_module() -> None:
    import tools.ingest.volume as old

    assert old.window is window and old.WINDOW_PRESETS is WINDOW_PRESETS
