"""The streaming multipart reader: parts to files whatever the chunking, limits as bytes come."""

from __future__ import annotations

import io

import pytest

from tools.pacs.errors import PacsError, PacsTimeoutError, StudyTooLargeError
from tools.pacs.multipart import boundary_of, split_parts
from tools.pacs.study import FetchBudget

B = b"b0und4ry-xyz"


def body(*parts: bytes, headers: bytes = b"Content-Type: application/dicom\r\n") -> bytes:
    out = b"preamble text\r\n"
    for p in parts:
        out += b"--" + B + b"\r\n" + headers + b"\r\n" + p + b"\r\n"
    return out + b"--" + B + b"--\r\nepilogue"


def chunks(data: bytes, n: int) -> list[bytes]:
    return [data[i:i + n] for i in range(0, len(data), n)]


def budget(**kw) -> FetchBudget:
    return FetchBudget(**{"max_instances": 100, "max_bytes": 10**9, "timeout_s": 60.0,
                          "where": "pacs:80", **kw})


class Sink:
    def __init__(self):
        self.files: list[io.BytesIO] = []
        self.closed: list[bytes] = []

    def open(self):
        sink = self

        class F(io.BytesIO):
            def close(self):
                sink.closed.append(self.getvalue())
                super().close()

        f = F()
        self.files.append(f)
        return f


# Part contents that look like delimiters without being one, binary zeros, CRLFs at the ends.
PARTS = [b"\x00" * 300 + b"DICM" + bytes(range(256)), b"--" + B[:-1] + b"\r\n--not-it",
         b"\r\n", b"x" * 5000 + b"\r\n-"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_every_part_arrives_whole_whatever_the_chunk_size(size):
    sink = Sink()
    n = split_parts(chunks(body(*PARTS), size), B, sink.open, budget())
    assert n == len(PARTS) and sink.closed == PARTS


def test_a_part_without_headers_and_an_empty_part():
    sink = Sink()
    assert split_parts([body(b"", b"abc", headers=b"")], B, sink.open, budget()) == 2
    assert sink.closed == [b"", b"abc"]


def test_the_byte_limit_stops_the_stream_and_closes_the_open_file():
    sink = Sink()
    with pytest.raises(StudyTooLargeError, match="larger than 1000 bytes"):
        split_parts(chunks(body(b"y" * 5000), 100), B, sink.open, budget(max_bytes=1000))
    assert len(sink.files) == 1 and sink.files[0].closed


def test_the_instance_limit_counts_parts():
    with pytest.raises(StudyTooLargeError, match="more than 2 instances"):
        split_parts([body(b"a", b"b", b"c")], B, Sink().open, budget(max_instances=2))


def test_the_deadline_is_checked_as_bytes_arrive():
    b = budget(timeout_s=1.0)
    b.started -= 5  # the fetch began 5 s ago
    with pytest.raises(PacsTimeoutError, match="longer than 1 s"):
        split_parts([body(b"a")], B, Sink().open, b)


def test_a_body_cut_inside_a_part_is_an_error():
    data = body(b"z" * 1000)
    with pytest.raises(PacsError, match="ended in the middle of a part"):
        split_parts([data[:500]], B, Sink().open, budget())


def test_headers_that_never_end_are_refused():
    data = b"--" + B + b"\r\n" + b"X-Junk: " + b"j" * 40_000
    with pytest.raises(PacsError, match="headers never end"):
        split_parts(chunks(data, 1000), B, Sink().open, budget())


def test_no_parts_at_all_is_zero():
    assert split_parts([b"--" + B + b"--\r\n"], B, Sink().open, budget()) == 0


@pytest.mark.parametrize("header,expected", [
    ('multipart/related; type="application/dicom"; boundary=abc-123', b"abc-123"),
    ('multipart/related; boundary="q u o t e d"; type="application/dicom"', b"q u o t e d"),
    ("Multipart/Related;Boundary=XyZ", b"XyZ"),
])
def test_boundary_of(header, expected):
    assert boundary_of(header) == expected


@pytest.mark.parametrize("header,needle", [
    ("application/json", "answered application/json, not multipart"),
    ("", "no content type"),
    ("multipart/related; type=x", "without a boundary"),
])
def test_not_multipart_is_named(header, needle):
    with pytest.raises(PacsError, match=needle):
        boundary_of(header)
