"""The frame codec of RFC 6455 section 5: headers, masking, Close payloads.

Pure functions over bytes; no I/O, and no state but a cache of the
pure-Python masking's translation tables, filled on first use (two threads
may build the same table at once: the same bytes, one kept; a list item
store is atomic with or without the GIL). The incremental parser that
feeds on a byte stream lives in :mod:`blockws.protocol`, which calls
:func:`parse_header` here. :class:`Opcode` and :class:`CloseCode` are
defined in :mod:`blockws.codes`; importing them from here still works.
"""

from __future__ import annotations

import struct

from . import _accel
from .codes import CloseCode, Opcode, may_be_sent
from .exceptions import ProtocolError

__all__ = [
    "Opcode",
    "CloseCode",
    "FrameHeader",
    "encode_header",
    "pack_short_header",
    "parse_header",
    "apply_mask",
    "unmask_inplace",
    "encode_close",
    "parse_close",
    "check_close_code",
]

_KNOWN_OPCODES = frozenset(int(op) for op in Opcode)

MAX_CONTROL_PAYLOAD = 125

#: A header of two bytes (no extended length, no key): ``pack_short_header(b0, b1)``.
pack_short_header = struct.Struct("!BB").pack
_pack_medium = struct.Struct("!BBH").pack
_pack_large = struct.Struct("!BBQ").pack
_unpack_medium = struct.Struct("!H").unpack_from
_unpack_large = struct.Struct("!Q").unpack_from


class FrameHeader:
    """A parsed frame header; ``size`` is how many bytes the header took."""

    __slots__ = ("fin", "rsv", "opcode", "length", "mask", "size")

    def __init__(self, fin: bool, rsv: int, opcode: int, length: int, mask: bytes | None, size: int) -> None:
        self.fin = fin
        self.rsv = rsv
        self.opcode = opcode
        self.length = length
        self.mask = mask
        self.size = size

    def __repr__(self) -> str:
        return (
            f"FrameHeader(fin={self.fin}, rsv={self.rsv:#x}, opcode={self.opcode}, "
            f"length={self.length}, mask={self.mask!r})"
        )


def encode_header(opcode: int, length: int, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """Return the header of a frame carrying ``length`` payload bytes.

    Args:
        opcode: the frame's opcode.
        length: the payload length.
        fin: whether this is the last frame of its message.
        rsv: RSV1-3 as the bits 0x40, 0x20, 0x10 of the first byte.
        mask: the 4-byte masking key (client to server frames), or None.
    """
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask is not None else 0
    if length < 126:
        head = pack_short_header(b0, mbit | length)
    elif length < 0x10000:
        head = _pack_medium(b0, mbit | 126, length)
    else:
        head = _pack_large(b0, mbit | 127, length)
    return head + mask if mask is not None else head


def parse_header(data: bytes | bytearray, pos: int) -> FrameHeader | None:
    """Parse the frame header starting at ``data[pos]``.

    Returns None when ``data`` does not yet hold the whole header.

    Raises:
        ProtocolError: the header is invalid (unknown opcode, fragmented or
            oversized control frame, 64-bit length with the top bit set).
    """
    avail = len(data) - pos
    if avail < 2:
        return None
    b0 = data[pos]
    b1 = data[pos + 1]
    opcode = b0 & 0x0F
    length = b1 & 0x7F
    size = 2
    if length == 126:
        if avail < 4:
            return None
        (length,) = _unpack_medium(data, pos + 2)
        size = 4
    elif length == 127:
        if avail < 10:
            return None
        (length,) = _unpack_large(data, pos + 2)
        if length >> 63:
            raise ProtocolError("frame length has its most significant bit set")
        size = 10
    mask = None
    if b1 & 0x80:
        if avail < size + 4:
            return None
        mask = bytes(data[pos + size : pos + size + 4])
        size += 4
    fin = bool(b0 & 0x80)
    if opcode not in _KNOWN_OPCODES:
        raise ProtocolError(f"unknown opcode {opcode:#x}")
    if opcode >= 8:
        if not fin:
            raise ProtocolError(f"fragmented control frame (opcode {opcode:#x})")
        if length > MAX_CONTROL_PAYLOAD:
            raise ProtocolError(f"control frame of {length} bytes exceeds {MAX_CONTROL_PAYLOAD} bytes")
    return FrameHeader(fin, b0 & 0x70, opcode, length, mask, size)


# Pure-Python masking (no C accelerator). Python has no vectorised XOR on
# bytes; each strategy below is a few C-level passes over the payload, and
# which few is cheapest depends on the size (measured with
# bench/mask_python.py; CPython 3.11, figures in its docstring):
#
# * below _TRANSLATE_MIN: XOR as one big integer. Converting bytes to and
#   from an int is a per-byte loop in C (about 1.3 GB/s each way), but the
#   call overhead is the least of the three, which is what counts when small.
# * up to _CHUNKED_MIN: four strided slices, each XORed with one key byte
#   through a 256-byte ``bytes.translate`` table. Strided slicing goes out
#   of the CPU cache past about 64 KiB, and then it is the slowest.
# * above: big-integer XOR in _CHUNK pieces, which stay in cache, joined once.
_TRANSLATE_MIN = 2048
_CHUNKED_MIN = 128 * 1024
_CHUNK = 32 * 1024  # a multiple of 4, so every piece starts at key byte 0

# Bound once: looking ``int.from_bytes`` up at each call costs a quarter of
# the time of masking a 64-byte message.
_from_bytes = int.from_bytes
# key_int * _SPREAD repeats the 32-bit key _CHUNK // 4 times (no carries: one
# key per 32-bit lane), far cheaper than converting the repeated key's bytes.
_SPREAD = _from_bytes(b"\x01\x00\x00\x00" * (_CHUNK // 4), "little")

_XOR_TABLES: list[bytes | None] = [None] * 256


def _xor_table(k: int) -> bytes:
    table = _XOR_TABLES[k]
    if table is None:
        table = _XOR_TABLES[k] = bytes(i ^ k for i in range(256))
    return table


def _mask_int(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """The payload XOR the key as one big integer (the repeated key sliced to its length)."""
    n = len(data)
    if not n:
        return b""
    return (_from_bytes(data, "little") ^ _from_bytes((key * ((n >> 2) + 1))[:n], "little")).to_bytes(n, "little")


def _mask_translate(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """Every 4th byte shares a key byte: XOR each of the four strided slices through a table."""
    out = bytearray(data)
    for i in range(4):
        out[i::4] = out[i::4].translate(_xor_table(key[i]))
    return bytes(out)


def _mask_chunked(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """Big-integer XOR of _CHUNK pieces: in cache, with the repeated key converted once."""
    n = len(data)
    size = _CHUNK
    key_int = _from_bytes(key, "little") * _SPREAD
    view = memoryview(data)
    # A list of pieces and one join: at most twice the payload alive at once,
    # against three copies and more for the whole-payload big integers.
    parts = [
        (_from_bytes(view[p : p + size], "little") ^ key_int).to_bytes(size, "little")
        for p in range(0, n - size + 1, size)
    ]
    tail = n % size
    if tail:
        parts.append(_mask_int(view[n - tail :], key))
    return b"".join(parts)


def _mask_python(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    n = len(data)
    if n < _TRANSLATE_MIN:
        # _mask_int inlined: the call would cost 10 % on a small message.
        if not n:
            return b""
        return (_from_bytes(data, "little") ^ _from_bytes((key * ((n >> 2) + 1))[:n], "little")).to_bytes(n, "little")
    if n < _CHUNKED_MIN:
        return _mask_translate(data, key)
    return _mask_chunked(data, key)


_mask = _accel.mask or _mask_python

ACCELERATED = _mask is not _mask_python
#: ``mask(data, key)``: XOR with the key from the payload's first byte (the C accelerator when built).
mask = _mask


def apply_mask(data: bytes | bytearray | memoryview, key: bytes, offset: int = 0) -> bytes:
    """Mask or unmask ``data`` with the 4-byte ``key``.

    ``offset`` is the position of ``data`` inside the frame's payload, so a
    payload can be unmasked piece by piece as it arrives.
    """
    shift = offset & 3
    if shift:
        key = key[shift:] + key[:shift]
    return _mask(data, key)


def unmask_inplace(data: memoryview, key: bytes, offset: int = 0) -> None:
    """:func:`apply_mask` in place, for a writable ``data``."""
    shift = offset & 3
    if shift:
        key = key[shift:] + key[:shift]
    if _accel.mask_inplace is not None:
        _accel.mask_inplace(data, key)
    else:
        data[:] = _mask(data, key)


def encode_close(code: int | None, reason: str = "") -> bytes:
    """Return the payload of a Close frame (empty when ``code`` is None)."""
    if code is None:
        if reason:
            raise ValueError("a close reason needs a close code")
        return b""
    check_close_code(code)
    payload = struct.pack("!H", code) + reason.encode("utf-8")
    if len(payload) > MAX_CONTROL_PAYLOAD:
        raise ValueError(f"close reason is {len(payload) - 2} bytes long; the limit is 123 bytes of UTF-8")
    return payload


def check_close_code(code: int) -> None:
    """Raise ProtocolError unless ``code`` may appear in a Close frame."""
    if not may_be_sent(code):
        raise ProtocolError(f"invalid close code {code}")


def parse_close(payload: bytes) -> tuple[int, str]:
    """Parse a Close payload into ``(code, reason)``.

    An empty payload gives ``(1005, "")``: the peer sent no code.

    Raises:
        ProtocolError: a one-byte payload or an invalid code (1002), or a
            reason that is not UTF-8 (1007).
    """
    if not payload:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise ProtocolError("close frame with a one-byte payload")
    (code,) = _unpack_medium(payload, 0)
    check_close_code(code)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("close reason is not valid UTF-8", CloseCode.INVALID_DATA) from exc
    return code, reason
