"""Differential fuzzing of the C fast path for whole small messages against the Python parser.

    python fuzzing/fuzz_parse_one.py -max_total_time=600 [corpus_dir]

``_speedups.parse_one(data, masked, max_size)`` must return a message only
when ``data`` is exactly one whole simple frame, and then the message the
Python parser makes of the same bytes; for every other input None (the
Python parser decides). Half the inputs are frames built from fuzzed
fields (so that the simple ones come up often), half are raw bytes.
Needs the C accelerator.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from blockws import _speedups, frames
    from blockws.exceptions import ProtocolError
    from blockws.frames import _mask_python
    from blockws.protocol import Data, Protocol, Side


def _one_frame(data: bytes) -> bool:
    """``data`` is exactly one frame, nothing before or after it."""
    header = frames.parse_header(data, 0)
    return header is not None and header.size + header.length == len(data)


def _frame(fdp: atheris.FuzzedDataProvider, masked: bool) -> bytes:
    """A frame from fuzzed fields: mostly well-formed, sometimes bent."""
    if fdp.ConsumeIntInRange(0, 7) == 0:
        b0 = fdp.ConsumeIntInRange(0, 255)  # any opcode, FIN and RSV bits
    else:
        b0 = 0x80 | fdp.PickValueInList([1, 2, 0, 9])
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
    wire_masked = masked if fdp.ConsumeIntInRange(0, 7) else not masked
    bit = 0x80 if wire_masked else 0
    if len(payload) < 126 and fdp.ConsumeIntInRange(0, 7):
        head = bytes([b0, bit | len(payload)])
    else:
        head = bytes([b0, bit | 126]) + len(payload).to_bytes(2, "big")
    if wire_masked:
        key = fdp.ConsumeBytes(4).ljust(4, b"\0")
        head += key
        payload = _mask_python(payload, key)
    return head + payload + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3) // 3 * 4)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    masked = fdp.ConsumeBool()
    max_size = fdp.ConsumeIntInRange(0, 300) if fdp.ConsumeBool() else None
    wire = _frame(fdp, masked) if fdp.ConsumeBool() else fdp.ConsumeBytes(fdp.remaining_bytes())
    counts = _speedups.Counts()
    fast = _speedups.parse_one(wire, masked, -1 if max_size is None else max_size, counts)
    proto = Protocol(Side.SERVER if masked else Side.CLIENT, max_size=max_size)
    try:
        proto.receive_data(wire)
        events = [proto.next_event() for _ in range(len(proto.events))]
    except ProtocolError:
        assert fast is None, (wire, fast)
        return
    # The fast path takes 7- and 16-bit lengths, minimally encoded; a 64-bit
    # one (64 KiB or more, or a non-minimal encoding of less) is the parser's.
    code = wire[1] & 0x7F if len(wire) >= 2 else 127
    minimal = code < 126 or code == 126 and int.from_bytes(wire[2:4], "big") >= 126
    simple = (
        proto.failure is None
        and len(events) == 1
        and type(events[0]) is Data
        and events[0].fin
        and _one_frame(wire)
        and wire[0] in (0x81, 0x82)
        and minimal
    )
    if simple:
        assert type(fast) is type(events[0].payload) and fast == events[0].payload, (wire, fast, events)
        assert counts.messages == 1
    else:
        assert fast is None and counts.messages == 0, (wire, fast, events)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
