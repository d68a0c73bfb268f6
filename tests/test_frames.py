"""The frame codec: headers, masking, close payloads."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockws import frames
from blockws.exceptions import ProtocolError
from blockws.frames import Opcode, apply_mask, encode_close, encode_header, parse_close, parse_header


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(list(Opcode)),
    st.one_of(st.integers(0, 125), st.integers(126, 65535), st.integers(65536, 2**63 - 1)),
    st.booleans(),
    st.sampled_from([0, 0x40, 0x20, 0x10, 0x70]),
    st.one_of(st.none(), st.binary(min_size=4, max_size=4)),
)
def test_header_round_trip(opcode, length, fin, rsv, mask):
    if opcode >= 8:
        fin, length = True, length % 126
    header = encode_header(opcode, length, fin, rsv, mask)
    expected_size = 2 + (0 if length < 126 else 2 if length < 65536 else 8) + (4 if mask else 0)
    assert len(header) == expected_size
    parsed = parse_header(b"junk" + header + b"payload", 4)
    assert parsed is not None
    assert (parsed.fin, parsed.rsv, parsed.opcode, parsed.length, parsed.mask, parsed.size) == (
        fin,
        rsv,
        opcode,
        length,
        mask,
        expected_size,
    )
    # Every strict prefix is "incomplete", never an error.
    for cut in range(len(header)):
        assert parse_header(header[:cut], 0) is None
    assert "FrameHeader(" in repr(parsed)


def test_header_errors():
    with pytest.raises(ProtocolError, match="unknown opcode 0x3"):
        parse_header(b"\x83\x00", 0)
    with pytest.raises(ProtocolError, match="fragmented control frame"):
        parse_header(b"\x09\x00", 0)
    with pytest.raises(ProtocolError, match="control frame of 126 bytes"):
        parse_header(b"\x89\x7e\x00\x7e", 0)
    with pytest.raises(ProtocolError, match="most significant bit"):
        parse_header(b"\x82\x7f\x80" + b"\x00" * 7, 0)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000), st.binary(min_size=4, max_size=4), st.lists(st.integers(0, 3000), max_size=5))
def test_masking_piecewise_equals_whole(data, key, cuts):
    whole = apply_mask(data, key)
    assert apply_mask(whole, key) == data
    assert whole == bytes(b ^ key[i % 4] for i, b in enumerate(data))
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    pieces = [apply_mask(data[a:b], key, a) for a, b in zip(points, points[1:])]
    assert b"".join(pieces) == whole


def test_python_mask_matches_accelerated_or_itself():
    data, key = os.urandom(1001), os.urandom(4)
    assert frames._mask_python(data, key) == frames._mask(data, key)
    assert frames._mask_python(b"", key) == b""


def reference_mask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """Trivially correct: byte i of the payload, at ``offset`` in its frame, XOR key byte (i + offset) % 4."""
    return bytes(b ^ key[(i + offset) % 4] for i, b in enumerate(data))


# Every pure-Python strategy, not only the one _mask_python picks for a size.
PYTHON_MASKERS = [frames._mask_python, frames._mask_int, frames._mask_translate, frames._mask_chunked]
BUFFER_TYPES = [bytes, bytearray, memoryview]


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=600),
    st.binary(min_size=4, max_size=4),
    st.integers(0, 3),
    st.sampled_from(BUFFER_TYPES),
    st.sampled_from(PYTHON_MASKERS),
)
def test_python_masking_equals_reference(data, key, offset, buffer_type, masker):
    expected = reference_mask(data, key, offset)
    rotated = key[offset:] + key[:offset]  # what apply_mask does with an offset
    result = masker(buffer_type(data), rotated)
    assert type(result) is bytes
    assert result == expected
    assert apply_mask(buffer_type(data), key, offset) == expected


def boundary_sizes() -> list[int]:
    """Sizes either side of every threshold and piece boundary of the pure-Python masking, and large ones."""
    edges = [
        frames._TRANSLATE_MIN,
        frames._CHUNKED_MIN,
        frames._CHUNK,
        2 * frames._CHUNK,
        frames._CHUNKED_MIN + frames._CHUNK,
    ]
    sizes = {0, 1, 2, 3, 4, 5, 7, 8, 125, 126, 127, 1024, 65535, 65536, 65537, (1 << 20) + 3}
    sizes.update(edge + d for edge in edges for d in (-1, 0, 1, 2))  # every length mod 4 at each edge
    return sorted(sizes)


@pytest.mark.parametrize("size", boundary_sizes())
def test_python_masking_boundary_and_large_sizes(size):
    data = os.urandom(size)
    key = os.urandom(4)
    for offset in range(4):
        expected = reference_mask(data, key, offset)
        rotated = key[offset:] + key[:offset]
        for buffer_type in BUFFER_TYPES:
            for masker in PYTHON_MASKERS:
                assert masker(buffer_type(data), rotated) == expected, (masker.__name__, buffer_type, offset)
            assert apply_mask(buffer_type(data), key, offset) == expected


def test_python_masking_of_a_slice_of_a_memoryview():
    # The receive path unmasks slices; a memoryview that does not start at 0 of its buffer too.
    data = os.urandom(frames._CHUNKED_MIN + 5)
    key = os.urandom(4)
    view = memoryview(bytearray(b"xyz" + data))[3:]
    for masker in PYTHON_MASKERS:
        assert masker(view, key) == reference_mask(data, key)


@pytest.mark.parametrize("code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999])
def test_valid_close_codes(code):
    assert parse_close(encode_close(code, "bye")) == (code, "bye")


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_codes(code):
    with pytest.raises(ProtocolError, match=f"invalid close code {code}"):
        parse_close(code.to_bytes(2, "big"))
    with pytest.raises(ProtocolError):
        encode_close(code)


def test_close_payload_rules():
    assert parse_close(b"") == (1005, "")
    assert encode_close(None) == b""
    with pytest.raises(ValueError):
        encode_close(None, "reason without code")
    with pytest.raises(ProtocolError, match="one-byte"):
        parse_close(b"\x03")
    with pytest.raises(ProtocolError) as info:
        parse_close(b"\x03\xe8\xff\xfe")
    assert info.value.close_code == 1007
    with pytest.raises(ValueError, match="123 bytes"):
        encode_close(1000, "x" * 124)
    assert parse_close(encode_close(1000, "é" * 61)) == (1000, "é" * 61)
