"""Coverage-guided fuzzing of the permessage-deflate decoder and negotiation.

    python fuzzing/fuzz_deflate.py -max_total_time=600 [corpus_dir]

Arbitrary compressed payloads may only raise ProtocolError (1007) or
PayloadTooBig, and never inflate past max_size; arbitrary offers and
responses may only be declined or raise InvalidHandshake.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from blockws.deflate import Decompressor, DeflateParams, client_accept, client_offer, server_accept
    from blockws.exceptions import InvalidHandshake, PayloadTooBig, ProtocolError

MAX = 64 * 1024


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    header = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 200))
    server_accept([header])
    try:
        client_accept([header], client_offer())
    except InvalidHandshake:
        pass
    params = DeflateParams(
        fdp.ConsumeBool(), fdp.ConsumeBool(), fdp.ConsumeIntInRange(8, 15), fdp.ConsumeIntInRange(8, 15)
    )
    decompressor = Decompressor(params, fdp.ConsumeBool(), MAX)
    try:
        while fdp.remaining_bytes():
            piece = fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 500))
            out = decompressor.decompress(piece, fdp.ConsumeBool())
            assert len(out) <= MAX
    except PayloadTooBig:
        pass
    except ProtocolError as exc:
        assert exc.close_code == 1007


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
