"""tools.ingest.values: malformed DICOM values become None / defaults, never exceptions."""

from __future__ import annotations

import math

import pydicom
import pytest
from pydicom.multival import MultiValue
from pydicom.valuerep import IS, DSfloat

from tests.tools.ingest.helpers import sample
from tools.ingest.values import (
    as_float,
    as_floats,
    as_int,
    as_list,
    cs_code,
    exact_floats,
    first_item,
    float_or,
    one_line,
    positive_pair,
    raw_preview,
)


def test_numbers_from_real_elements() -> None:
    ds = pydicom.dcmread(sample("CT_small.dcm"), stop_before_pixels=True)
    assert as_int(ds.Rows) == 128 and as_int(IS("12")) == 12
    assert as_floats(ds.PixelSpacing) == pytest.approx([0.661468, 0.661468])
    assert positive_pair(ds.PixelSpacing) == pytest.approx((0.661468, 0.661468))
    assert exact_floats(ds.ImageOrientationPatient, 6) == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert exact_floats(ds.ImageOrientationPatient, 3) is None
    assert float_or(ds.RescaleIntercept, 0.0) == -1024.0
    assert as_float(DSfloat("2.5")) == 2.5


@pytest.mark.parametrize("bad", [None, "", "1A", "nan", "inf", object()])
def test_malformed_numbers_are_none(bad: object) -> None:
    assert as_float(bad) is None and as_floats(bad) == []
    assert float_or(bad, 1.0) == 1.0
    assert positive_pair(bad) is None and exact_floats(bad, 1) is None
    if bad not in ("nan", "inf"):
        assert as_int(bad) is None


def test_multi_values() -> None:
    two = MultiValue(DSfloat, ["40", "400"])
    assert as_list(two) == [40.0, 400.0] and as_float(two) == 40.0
    assert float_or(two, 1.0) == 1.0  # a single-valued attribute written twice is malformed
    assert as_floats(["1", "x"]) == []  # one bad value spoils the element
    assert positive_pair(["0", "0.5"]) is None and positive_pair(["0.2", "0.3"]) == (0.2, 0.3)
    assert as_list("AB") == ["AB"] and as_list(b"\x00") == [b"\x00"] and as_list(None) == []


def test_code_strings_refuse_free_text() -> None:
    assert cs_code("CHEST ") == "CHEST"
    assert cs_code(["ORIGINAL", "PRIMARY"]) == ["ORIGINAL", "PRIMARY"]
    assert cs_code("Doe^Jane") is None  # a name in a code field
    assert cs_code("A" * 17) is None and cs_code("") is None and cs_code(None) is None


def test_sequences_previews_and_messages() -> None:
    assert first_item([]) is None and first_item(None) is None and first_item([3, 4]) == 3
    assert raw_preview(["0.000", "0.000", "9", "9"]) == "(0.000, 0.000, 9)"
    assert raw_preview("x" * 40) == "(" + "x" * 12 + ")"
    assert one_line(ValueError("bad\n  value\tthere")) == "bad value there"
    assert one_line(ValueError()) == "ValueError"
    long = one_line(ValueError("y" * 500))
    assert len(long) == 200 and long.endswith("...")
    assert not math.isnan(float_or("3", math.nan))
