"""permessage-deflate: negotiation, codecs, bombs, and interop with websockets."""

from __future__ import annotations

import os
import select
import socket
import threading
import time
import tracemalloc
import zlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

import blockws
from blockws import deflate
from blockws.deflate import Compressor, Decompressor, DeflateParams, client_accept, client_offer, server_accept
from blockws.exceptions import InvalidHandshake, PayloadTooBig, ProtocolError
from blockws.frames import Opcode, apply_mask, encode_header
from blockws.protocol import Data, Protocol, Side

from .helpers import RecvErrors

# -- negotiation -------------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "response", "params"),
    [
        ("permessage-deflate", "permessage-deflate", DeflateParams()),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
            DeflateParams(),
        ),
        (
            "permessage-deflate; client_max_window_bits=10",
            "permessage-deflate; client_max_window_bits=10",
            DeflateParams(client_max_window_bits=10),
        ),
        (
            "permessage-deflate; server_max_window_bits=9; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=9",
            DeflateParams(server_no_context_takeover=True, server_max_window_bits=9),
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
            DeflateParams(client_no_context_takeover=True),
        ),
        # Asked for, server_max_window_bits is answered even at its default (RFC 7692 7.1.2.1).
        (
            "permessage-deflate; server_max_window_bits=15",
            "permessage-deflate; server_max_window_bits=15",
            DeflateParams(),
        ),
        (
            "permessage-deflate; server_max_window_bits=15; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=15",
            DeflateParams(),
        ),
        # Invalid offers are declined, the next one is taken.
        ("permessage-deflate; foo, permessage-deflate", "permessage-deflate", DeflateParams()),
        ("permessage-deflate; server_max_window_bits=7, permessage-deflate", "permessage-deflate", DeflateParams()),
        ("permessage-deflate; server_max_window_bits", None, None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None, None),
        ("permessage-deflate; server_max_window_bits=09", None, None),
        ("x-other", None, None),
        ("bad;=", None, None),
    ],
)
def test_server_accept(offer, response, params):
    result = server_accept([offer])
    if response is None:
        assert result is None
    else:
        assert result == (response, params)


def test_server_options():
    header, params = server_accept(["permessage-deflate; client_max_window_bits"], client_max_window_bits=12) or ("", 0)
    assert header == "permessage-deflate; client_max_window_bits=12"
    assert server_accept(["permessage-deflate"], client_max_window_bits=12) is None  # can't limit the client
    header, params = server_accept(["permessage-deflate"], server_no_context_takeover=True) or ("", 0)
    assert header == "permessage-deflate; server_no_context_takeover"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        ("x-other", "did not offer"),
        ("permessage-deflate, permessage-deflate", "did not offer"),
        ("permessage-deflate; foo", "unknown"),
        ("permessage-deflate; server_no_context_takeover; server_no_context_takeover", "duplicate"),
        ("permessage-deflate; server_max_window_bits=16", "8 to 15"),
        ("permessage-deflate; server_max_window_bits", "8 to 15"),
        ("permessage-deflate; client_no_context_takeover=1", "takes no value"),
    ],
)
def test_client_accept_refusals(response, message):
    with pytest.raises(InvalidHandshake, match=message):
        client_accept([response], client_offer())


def test_client_accept():
    assert client_accept([], client_offer()) is None
    assert client_accept(["permessage-deflate; client_max_window_bits=9"], client_offer()) == DeflateParams(
        client_max_window_bits=9
    )
    offer = client_offer(server_max_window_bits=10, client_max_window_bits=11, server_no_context_takeover=True)
    assert offer == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=11"
    )
    with pytest.raises(InvalidHandshake, match="ignored"):
        client_accept(["permessage-deflate; server_max_window_bits=10"], offer)
    with pytest.raises(InvalidHandshake, match="exceeds"):
        client_accept(["permessage-deflate; server_no_context_takeover; server_max_window_bits=12"], offer)
    accepted = client_accept(
        ["permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9"], offer
    )
    assert accepted == DeflateParams(True, False, 10, 9)
    with pytest.raises(InvalidHandshake, match="did not offer"):
        client_accept(["permessage-deflate; client_max_window_bits=9"], "permessage-deflate")


# -- codecs --------------------------------------------------------------------

all_params = st.builds(
    DeflateParams,
    st.booleans(),
    st.booleans(),
    st.integers(8, 15),
    st.integers(8, 15),
)


@settings(max_examples=60, deadline=None)
@given(all_params, st.lists(st.binary(max_size=5000) | st.text(max_size=2000).map(str.encode), max_size=6), st.data())
def test_round_trips_any_params_fragments_and_splits(params, messages, data):
    for is_client in (True, False):
        compressor = Compressor(params, is_client, blockws.PerMessageDeflate(min_size=0))
        decompressor = Decompressor(params, not is_client, max_size=None)
        for message in messages:
            cuts = sorted(data.draw(st.lists(st.integers(0, len(message)), max_size=3)))
            bounds = list(zip([0, *cuts], [*cuts, len(message)]))
            wire = b"".join(compressor.compress(message[a:b], i == len(bounds) - 1) for i, (a, b) in enumerate(bounds))
            splits = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=3)))
            pieces = [wire[a:b] for a, b in zip([0, *splits], [*splits, len(wire)])]
            out = b"".join(decompressor.decompress(p, i == len(pieces) - 1) for i, p in enumerate(pieces))
            assert out == message


def test_interop_with_plain_zlib_like_peers():
    text = b'{"id": 1, "name": "blockws", "tags": ["a", "b"]}' * 20
    # A peer's compressor: raw deflate, sync flush, trailer stripped.
    peer = zlib.compressobj(6, zlib.DEFLATED, -15)
    wire = (peer.compress(text) + peer.flush(zlib.Z_SYNC_FLUSH))[:-4]
    assert Decompressor(DeflateParams(), True, None).decompress(wire, True) == text
    ours = Compressor(DeflateParams(), True).compress(text, True)
    assert zlib.decompressobj(-15).decompress(ours + b"\x00\x00\xff\xff") == text


def test_context_takeover_shrinks_repeats_and_no_takeover_resets():
    message = os.urandom(500).hex().encode()
    takeover = Compressor(DeflateParams(), False)
    first, second = takeover.compress(message, True), takeover.compress(message, True)
    assert len(second) < len(first) / 4  # the second refers back to the first
    fresh = Compressor(DeflateParams(server_no_context_takeover=True), False)
    assert len(fresh.compress(message, True)) == len(fresh.compress(message, True))


def deflate_bomb(size: int) -> bytes:
    """``size`` zero bytes (a whole number of MiB) deflated as one message.

    Deflating a GiB takes seconds, but once the window holds only zeros
    every further MiB deflates to the same block: it is made once and
    repeated (still a valid stream: its back-references reach only zeros).
    """
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    first = bomb.compress(chunk) + bomb.flush(zlib.Z_SYNC_FLUSH)
    then = bomb.compress(chunk) + bomb.flush(zlib.Z_SYNC_FLUSH)
    return (first + then * ((size >> 20) - 1))[:-4]


@pytest.mark.slow
def test_decompression_bomb_is_stopped_with_bounded_memory():
    payload = deflate_bomb(1 << 30)
    assert len(payload) < 1100 * 1024  # about 1 MiB of deflate for 1 GiB of zeros
    decompressor = Decompressor(DeflateParams(), True, max_size=1 << 20)
    tracemalloc.start()
    start = time.monotonic()
    try:
        with pytest.raises(PayloadTooBig, match="max_size=1048576"):
            for i in range(0, len(payload), 1024):
                decompressor.decompress(payload[i : i + 1024], False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    assert time.monotonic() - start < 1


def test_corrupt_data_is_1007():
    with pytest.raises(ProtocolError) as info:
        Decompressor(DeflateParams(), True, None).decompress(b"\xff\xff\xff\xff", True)
    assert info.value.close_code == 1007


# RFC 7692 section 7.2.3.3: "Hello" in a BFINAL block, then one 0x00 byte.
HELLO_BFINAL = bytes.fromhex("f348cdc9c9070000")


def test_data_after_the_end_of_the_deflate_stream_is_1007_at_once():
    """Junk after a BFINAL block fails at its first byte instead of piling up uncounted."""
    decompressor = Decompressor(DeflateParams(), False, max_size=1 << 20)
    assert decompressor.decompress(HELLO_BFINAL[:-1], False) == b"Hello"
    with pytest.raises(ProtocolError, match="after the end of the deflate stream") as info:
        for _ in range(64):  # 64 MiB if nothing stopped it
            decompressor.decompress(os.urandom(1 << 20), False)
    assert info.value.close_code == 1007
    # The same junk at the end of the message, or right after the end in one piece.
    for pieces in ([HELLO_BFINAL + b"junk"], [HELLO_BFINAL, b"\x00"], [HELLO_BFINAL + b"\x00\x00\xff\xff"]):
        fresh = Decompressor(DeflateParams(), False, max_size=None)
        with pytest.raises(ProtocolError, match="after the end") as info:
            for piece in pieces[:-1]:
                fresh.decompress(piece, False)
            fresh.decompress(pieces[-1], True)
        assert info.value.close_code == 1007


@pytest.mark.parametrize("pieces", [[HELLO_BFINAL], [HELLO_BFINAL[:-1], HELLO_BFINAL[-1:]], [HELLO_BFINAL[:-1], b""]])
def test_a_message_ended_with_bfinal_is_read_and_the_next_one_too(pieces):
    """RFC 7692 section 7.2.3.3 allows a BFINAL block; the stream after it starts afresh."""
    decompressor = Decompressor(DeflateParams(), False, max_size=1 << 20)
    for _ in range(3):
        out = b"".join(decompressor.decompress(piece, False) for piece in pieces[:-1])
        assert out + decompressor.decompress(pieces[-1], True) == b"Hello"
    compressor = Compressor(DeflateParams(), True)
    assert decompressor.decompress(compressor.compress(b"after BFINAL", True), True) == b"after BFINAL"


def test_empty_deflate_blocks_count_against_max_size():
    """Blocks that inflate to nothing can't make a message endless: the compressed size is bounded too."""
    decompressor = Decompressor(DeflateParams(), False, max_size=1 << 16)
    empty_blocks = b"\x00\x00\x00\xff\xff" * 1000
    with pytest.raises(PayloadTooBig, match=r"compressed message of more than 196608 bytes exceeds max_size=65536"):
        for _ in range(1000):  # 5 MB if nothing stopped it
            assert decompressor.decompress(empty_blocks, False) == b""
    # A message that only just fits, and incompressible data at the limit.
    for data in (bytes(1 << 16), os.urandom(1 << 16)):
        fresh = Decompressor(DeflateParams(), False, max_size=1 << 16)
        assert fresh.decompress(Compressor(DeflateParams(), True).compress(data, True), True) == data


# -- in the protocol -----------------------------------------------------------


def pair() -> tuple[Protocol, Protocol]:
    return Protocol(Side.CLIENT, deflate=DeflateParams()), Protocol(Side.SERVER, deflate=DeflateParams())


def test_protocol_rsv1_rules():
    client, server = pair()
    header, body = client.encode_data(b"x" * 1000, False, False)
    assert header[0] & 0x40  # first frame compressed
    header2, body2 = client.encode_data(b"y" * 1000, False, True)
    assert not header2[0] & 0x40  # continuation: no RSV1
    server.receive_data(header + body + header2 + body2)
    pieces = []
    while (event := server.next_event()) is not None:
        assert isinstance(event, Data)
        pieces.append(event.payload)
    assert b"".join(pieces) == b"x" * 1000 + b"y" * 1000
    # Small messages go uncompressed.
    header, _ = client.encode_data(b"small", False, True)
    assert not header[0] & 0x40
    # RSV1 on a control frame or a continuation: 1002.
    for bad in (b"\xc9\x80abcd", b"\x02\x80abcd\xc0\x80abcd"):
        _, fresh = pair()
        fresh.receive_data(bad)
        with pytest.raises(ProtocolError, match="RSV1"):
            while fresh.next_event() is not None:
                pass
    # Without deflate, RSV1 is an error.
    plain = Protocol(Side.SERVER)
    plain.receive_data(b"\xc1\x80abcd")
    with pytest.raises(ProtocolError, match="reserved bits"):
        plain.next_event()


def test_incompressible_binary_is_sent_plain_for_a_while():
    client, _ = pair()
    first, _ = client.encode_data(os.urandom(2000), False, True)
    assert first[0] & 0x40
    second, _ = client.encode_data(os.urandom(2000), False, True)
    assert not second[0] & 0x40
    text, _ = client.encode_data(b"text still compressed " * 20, True, True)
    assert text[0] & 0x40
    # skip_incompressible=False: every binary message is compressed.
    always = Protocol(
        Side.CLIENT, deflate=DeflateParams(), compression=blockws.PerMessageDeflate(skip_incompressible=False)
    )
    for _ in range(3):
        header, _ = always.encode_data(os.urandom(2000), False, True)
        assert header[0] & 0x40


# -- over sockets, with the websockets package -------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"server_no_context_takeover": True},
        {"client_no_context_takeover": True},
        {"server_max_window_bits": 9},
        {"server_max_window_bits": 12, "client_max_window_bits": 10},
        {"client_max_window_bits": 8},
        {"client_max_window_bits": 11, "require_client_max_window_bits": True},
        {
            "server_no_context_takeover": True,
            "client_no_context_takeover": True,
            "server_max_window_bits": 10,
            "client_max_window_bits": 9,
        },
    ],
)
def test_blockws_client_with_websockets_server_parameters(options):
    """Each parameter combination the websockets server can impose."""
    from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

    server = ws_serve(
        lambda ws: [ws.send(m) for m in ws], "127.0.0.1", 0, extensions=[ServerPerMessageDeflateFactory(**options)]
    )
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with blockws.connect(f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", timeout=5) as ws:
            agreed = ws.extensions[0]
            for name, value in options.items():
                if name != "require_client_max_window_bits":
                    assert (name if value is True else f"{name}={value}") in agreed
            text = "".join(f'{{"id": {i}, "name": "user{i}", "active": true}}' for i in range(100))
            for message in [text, text, b"\x00" * 100_000, os.urandom(5000), "é" * 3000, "small"] * 2:
                ws.sendall(message)
                assert ws.recv() == message
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize(
    ("settings_", "expected"),
    [
        (blockws.PerMessageDeflate(server_no_context_takeover=True), "server_no_context_takeover"),
        (blockws.PerMessageDeflate(client_no_context_takeover=True), "client_no_context_takeover"),
        (blockws.PerMessageDeflate(server_max_window_bits=10), "server_max_window_bits=10"),
        (blockws.PerMessageDeflate(client_max_window_bits=9), "client_max_window_bits=9"),
    ],
)
def test_blockws_client_settings_reach_websockets_server(settings_, expected):
    """What a blockws client asks for, a websockets server grants, and both sides keep to it."""
    server = ws_serve(lambda ws: [ws.send(m) for m in ws], "127.0.0.1", 0, compression="deflate")
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        with blockws.connect(url, timeout=5, compression=settings_) as ws:
            assert expected in ws.extensions[0]
            for message in ['{"a": 1}' * 300, '{"a": 1}' * 300, os.urandom(2000)]:
                ws.sendall(message)
                assert ws.recv() == message
    finally:
        server.shutdown()
        thread.join(5)


def _deflate_handshake(sock: socket.socket) -> bytes:
    """A raw client's handshake offering permessage-deflate; returns what was read (the head, maybe more)."""
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101") and b"permessage-deflate" in head
    return head


def _read_close(sock: socket.socket, reply: bytes) -> bytes:
    """Read on until ``reply`` holds the server's first frame (its Close), or EOF."""
    while len(reply) < 4 or len(reply) < 2 + (reply[1] & 0x7F):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def _wait_for(errors: list[Any]) -> None:
    """The server lingers until our EOF before its recv() raises: give it 5 s."""
    for _ in range(250):
        if errors:
            break
        time.sleep(0.02)


def test_compressed_bomb_over_sockets_closes_with_1009_in_bounded_memory(run_server):
    """A 64 KiB frame that would inflate to 64 MiB stops at max_size with 1009."""
    handler = RecvErrors()
    errors = handler.errors

    server = run_server(handler, max_size=1 << 16)
    payload = deflate_bomb(64 << 20)
    key = os.urandom(4)
    frame = encode_header(Opcode.BINARY, len(payload), True, 0x40, key) + apply_mask(payload, key)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with sock:
        head = _deflate_handshake(sock)
        tracemalloc.start()
        try:
            sock.sendall(frame)
            reply = head.split(b"\r\n\r\n", 1)[1]
            reply = _read_close(sock, reply)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    _wait_for(errors)
    assert reply[0] == 0x88 and int.from_bytes(reply[2:4], "big") == 1009
    assert b"max_size=65536" in reply
    assert errors and errors[0].code == 1009
    assert peak < 4 << 20  # the frame is 64 KiB on the wire; nothing near 64 MiB is held


def test_junk_after_the_deflate_stream_over_sockets_closes_with_1007_in_bounded_memory(run_server):
    """A BFINAL first frame, then continuation frames of junk: 1007 at once, nothing piled up."""
    handler = RecvErrors()
    errors = handler.errors
    server = run_server(handler, max_size=1 << 20)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    with sock:
        head = _deflate_handshake(sock)
        reply = head.split(b"\r\n\r\n", 1)[1]
        key = os.urandom(4)
        junk = os.urandom(64 << 10)
        frames = [encode_header(Opcode.BINARY, len(HELLO_BFINAL), False, 0x40, key) + apply_mask(HELLO_BFINAL, key)]
        frames += [encode_header(Opcode.CONT, len(junk), False, 0, key) + apply_mask(junk, key)] * 256
        sent = 0
        tracemalloc.start()
        try:
            for frame in frames:  # 16 MiB of junk against max_size 1 MiB, until the server's Close
                if select.select([sock], [], [], 0)[0]:
                    break
                try:
                    sock.sendall(frame)
                except OSError:  # the server is gone: its Close is waiting in our buffer
                    break
                sent += 1
            reply = _read_close(sock, reply)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    _wait_for(errors)
    assert reply[0] == 0x88 and int.from_bytes(reply[2:4], "big") == 1007, reply[:80]
    assert b"after the end of the deflate stream" in reply
    assert errors and errors[0].code == 1007
    assert sent < 64  # well before 4 MiB of junk, whatever the kernel buffers took
    assert peak < 4 << 20


def test_compression_settings_are_checked():
    assert deflate.settings("deflate") == blockws.PerMessageDeflate()
    assert deflate.settings(None) is None
    with pytest.raises(ValueError, match="unsupported compression 'gzip'"):
        deflate.settings("gzip")
    with pytest.raises(ValueError, match="client_max_window_bits must be 8 to 15, not 16"):
        blockws.PerMessageDeflate(client_max_window_bits=16)
    with pytest.raises(ValueError, match="level must be 0 to 9"):
        blockws.PerMessageDeflate(level=10)
    offer = blockws.PerMessageDeflate(server_no_context_takeover=True, server_max_window_bits=10).offer()
    assert offer == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=10; client_max_window_bits"
    )
    accepted = blockws.PerMessageDeflate(client_max_window_bits=9).accept(["permessage-deflate"])
    assert accepted is None  # the offer doesn't let us limit the client's window


def test_min_size_and_level_settings_over_sockets(run_server):
    seen: list[int] = []

    def handler(ws: blockws.WebSocket) -> None:
        ws.trace = lambda direction, header, payload: seen.append(header.rsv) if direction == "<" else None
        ws.sendall("tracing")  # the keepalive thread may read before trace is set: wait for it
        for message in ws:
            ws.sendall(message)

    server = run_server(handler)
    settings_ = blockws.PerMessageDeflate(min_size=1000, level=9)
    with blockws.connect(server.url, timeout=5, compression=settings_) as ws:
        assert ws.recv() == "tracing"
        for message in ["x" * 999, "x" * 1000]:
            ws.sendall(message)
            assert ws.recv() == message
    assert seen[:2] == [0, 0x40]  # under min_size: plain; at it: compressed


def test_blockws_client_with_websockets_server_compressed():
    got: list[Any] = []

    def handler(ws: Any) -> None:
        got.append(ws.request.headers.get("Sec-WebSocket-Extensions"))
        for message in ws:
            ws.send(message)

    server = ws_serve(handler, "127.0.0.1", 0, compression="deflate")
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with blockws.connect(f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", timeout=5) as ws:
            assert ws.extensions and ws.extensions[0].startswith("permessage-deflate")
            for message in ['{"a": 1}' * 200, b"\x00" * 100_000, os.urandom(5000), "é" * 3000, "small"]:
                ws.sendall(message)
                assert ws.recv() == message
            ws.send("part one " * 50, fin=False)
            ws.sendall("part two " * 50)
            assert ws.recv() == "part one " * 50 + "part two " * 50
    finally:
        server.shutdown()
        thread.join(5)
    assert got == ["permessage-deflate; client_max_window_bits"]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"server_max_window_bits": 10},
        {"client_max_window_bits": 9},
        {"server_no_context_takeover": True, "client_no_context_takeover": True},
        {"server_max_window_bits": 15},
        {"server_max_window_bits": 15, "client_max_window_bits": 15},
    ],
)
def test_websockets_client_with_blockws_server_compressed(run_server, options):
    from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

    server = run_server()
    factory = ClientPerMessageDeflateFactory(**options)
    with ws_connect(server.url, compression=None, extensions=[factory]) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions", "").startswith("permessage-deflate")
        for message in ['{"a": 1}' * 200, b"\x01" * 70_000, "x" * 3, os.urandom(3000)] * 3:
            ws.send(message)
            assert ws.recv(timeout=5) == message


def test_blockws_client_asking_for_server_max_window_bits_15_gets_an_answer(run_server):
    """Both sides of blockws: the parameter asked for comes back, even at its default."""
    server = run_server()
    settings_ = blockws.PerMessageDeflate(server_max_window_bits=15)
    with blockws.connect(server.url, timeout=5, compression=settings_) as ws:
        assert "server_max_window_bits=15" in ws.extensions[0]
        for message in ['{"a": 1}' * 300, '{"a": 1}' * 300, os.urandom(2000)]:
            ws.sendall(message)
            assert ws.recv() == message


@pytest.mark.slow
def test_partial_send_counts_uncompressed_input(run_server):
    received: list[Any] = []
    reading = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        reading.wait(10)
        received.extend(ws)

    server = run_server(handler, max_size=None)
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = blockws.connect(server.url, sock=sock, timeout=0.1)
    text = "".join(f"line {i}: {os.urandom(8).hex()}\n" for i in range(100_000))
    sent = 0
    while sent < len(text):
        try:
            n = ws.send(text[sent:])
        except TimeoutError:
            reading.set()
            continue
        assert 0 < n <= len(text) - sent
        sent += n
    reading.set()  # if no send timed out (the server's keepalive read it all meanwhile)
    ws.close()
    server.stop()
    assert received == [text]


def test_default_min_size_is_exported():
    assert deflate.DEFAULT_MIN_SIZE == 128
