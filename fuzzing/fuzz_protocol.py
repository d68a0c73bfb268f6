"""Coverage-guided fuzzing of the frame parser and protocol state machine.

    python fuzzing/fuzz_protocol.py -max_total_time=600 [corpus_dir]

Arbitrary bytes fed to a Protocol (as client or server, in random splits)
may only raise ProtocolError (through next_event) — never anything else.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from blockws.exceptions import ProtocolError
    from blockws.protocol import Data, Protocol, Side


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    side = Side.CLIENT if fdp.ConsumeBool() else Side.SERVER
    max_size = fdp.ConsumeIntInRange(0, 5000) if fdp.ConsumeBool() else None
    proto = Protocol(side, max_size=max_size)
    while fdp.remaining_bytes():
        chunk = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 300))
        proto.receive_data(chunk)
        try:
            while (event := proto.next_event()) is not None:
                if isinstance(event, Data) and event.text:
                    assert isinstance(event.payload, str)
        except ProtocolError as exc:
            assert exc.close_code in (1002, 1007, 1009), exc
            assert proto.data_to_send(), "a failure must queue a Close"
            return


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
