"""The sans-I/O protocol: two Protocol objects wired back to back, no sockets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from blockws.deflate import DeflateParams, PerMessageDeflate
from blockws.exceptions import PayloadTooBig, ProtocolError
from blockws.frames import Opcode, encode_header, parse_header
from blockws.protocol import Close, Data, Protocol, Side, State, random_keys


def frames_of(proto: Protocol, payload: bytes, text: bool, fin: bool = True) -> bytes:
    header, body = proto.encode_data(payload, text, fin)
    return header + body


def take(proto: Protocol, parts: list[Any] | None = None) -> list[Any]:
    """Drain events; messages are joined from their pieces (``parts`` keeps
    the pieces of an unfinished message between calls)."""
    out: list[Any] = []
    if parts is None:
        parts = []
    while True:
        event = proto.next_event()
        if event is None:
            return out
        if isinstance(event, Data):
            parts.append(event.payload)
            if event.fin:
                out.append(("" if event.text else b"").join(parts))
                parts.clear()
        else:
            out.append(event)


def client_to_server(data: bytes, **options: Any) -> Protocol:
    server = Protocol(Side.SERVER, **options)
    server.receive_data(data)
    return server


def masked(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    key = b"\x01\x02\x03\x04"
    return encode_header(opcode, len(payload), fin, rsv, key) + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def test_text_and_binary_messages():
    client = Protocol(Side.CLIENT)
    wire = frames_of(client, "héllo".encode(), True) + frames_of(client, b"\x00\xff", False)
    assert take(client_to_server(wire)) == ["héllo", b"\x00\xff"]


def test_fragmented_message_and_interleaved_ping():
    client = Protocol(Side.CLIENT)
    wire = frames_of(client, b"one ", True, False)
    wire += client.encode_control(Opcode.PING, b"ping!")
    wire += frames_of(client, b"two", True, True)
    server = client_to_server(wire)
    assert take(server) == ["one two"]
    pong = server.data_to_send()
    assert pong == [encode_header(Opcode.PONG, 5) + b"ping!"]
    client.receive_data(b"".join(pong))
    assert list(client.pongs) == [b"ping!"]


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (masked(Opcode.CONT, b"x"), "continuation frame without a message"),
        (masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.TEXT, b"b"), "new data frame inside a fragmented"),
        (masked(Opcode.TEXT, b"a", rsv=0x40), "reserved bits"),
        (encode_header(Opcode.TEXT, 1) + b"a", "client frame is not masked"),
    ],
)
def test_protocol_errors_fail_with_1002(wire, message):
    server = client_to_server(wire)
    with pytest.raises(ProtocolError, match=message) as info:
        take(server)
    assert info.value.close_code == 1002
    assert server.state is State.CLOSING
    (close,) = server.data_to_send()
    assert close[:1] == b"\x88" and close[2:4] == b"\x03\xea"


def test_server_frames_must_not_be_masked():
    client = Protocol(Side.CLIENT)
    client.receive_data(masked(Opcode.TEXT, b"x"))
    with pytest.raises(ProtocolError, match="server frame is masked"):
        client.next_event()


def test_error_raised_after_earlier_messages():
    wire = masked(Opcode.TEXT, b"first") + masked(Opcode.BINARY, b"second") + masked(0x3, b"")
    server = client_to_server(wire)
    assert take_until_error(server) == ["first", b"second"]


def take_until_error(proto: Protocol) -> list[Any]:
    out: list[Any] = []
    with pytest.raises(ProtocolError):
        while True:
            event = proto.next_event()
            assert event is not None
            out.append(event.payload)  # type: ignore[union-attr]
    return out


def test_utf8_fails_fast_in_first_fragment():
    server = client_to_server(masked(Opcode.TEXT, b"ok \xff", fin=False))
    with pytest.raises(ProtocolError, match="invalid UTF-8") as info:
        take(server)
    assert info.value.close_code == 1007


def test_utf8_fails_fast_inside_a_frame_still_arriving():
    server = Protocol(Side.SERVER)
    frame = masked(Opcode.TEXT, b"\xce\xba\xed\xa0\x80 and much more text to come")
    server.receive_data(frame[:12])  # header and the invalid bytes only
    with pytest.raises(ProtocolError) as info:
        take(server)
    assert info.value.close_code == 1007


def test_character_split_across_fragments_is_fine_truncated_is_not():
    euro = "€".encode()
    wire = masked(Opcode.TEXT, euro[:1], fin=False) + masked(Opcode.CONT, euro[1:])
    assert take(client_to_server(wire)) == ["€"]
    with pytest.raises(ProtocolError) as info:
        take(client_to_server(masked(Opcode.TEXT, euro[:2])))
    assert info.value.close_code == 1007


def test_max_size_names_the_limit():
    with pytest.raises(PayloadTooBig, match="frame of 2000 bytes exceeds max_size=1000") as info:
        take(client_to_server(masked(Opcode.BINARY, b"x" * 2000), max_size=1000))
    assert info.value.close_code == 1009
    wire = masked(Opcode.BINARY, b"x" * 600, fin=False) + masked(Opcode.CONT, b"x" * 600)
    with pytest.raises(PayloadTooBig, match="message of 1200 bytes exceeds max_size=1000"):
        take(client_to_server(wire, max_size=1000))
    assert take(client_to_server(masked(Opcode.BINARY, b"x" * 2000), max_size=None)) == [b"x" * 2000]


def test_closing_handshake_initiated_by_client():
    client, server = Protocol(Side.CLIENT), Protocol(Side.SERVER)
    client.send_close(1000, "bye")
    assert client.state is State.CLOSING
    server.receive_data(b"".join(client.data_to_send()))
    (event,) = take(server)
    assert isinstance(event, Close) and (event.code, event.reason) == (1000, "bye")
    assert server.state is State.CLOSING  # the peer's half is done; ours is open
    server.send_close(1000)
    assert server.state is State.CLOSED
    client.receive_data(b"".join(server.data_to_send()))
    assert [type(e) for e in take(client)] == [Close]
    assert client.state is State.CLOSED
    client.send_close()  # once only
    assert client.data_to_send() == []


def test_close_without_code_and_data_after_close_ignored():
    server = client_to_server(masked(Opcode.CLOSE, b"") + masked(Opcode.TEXT, b"ignored"))
    (event,) = take(server)
    assert (event.code, event.reason) == (1005, "")
    server.send_close(None)
    assert server.data_to_send() == [b"\x88\x00"]


def test_invalid_close_payloads():
    for payload, code in [(b"\x03", 1002), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007)]:
        with pytest.raises(ProtocolError) as info:
            take(client_to_server(masked(Opcode.CLOSE, payload)))
        assert info.value.close_code == code


def test_eof():
    server = Protocol(Side.SERVER)
    server.receive_eof()
    assert server.eof and server.state is State.CLOSED
    server.receive_data(masked(Opcode.TEXT, b"late"))
    assert server.next_event() is None


def test_control_payload_limit_on_send():
    with pytest.raises(ValueError):
        Protocol(Side.SERVER).encode_control(Opcode.PING, b"x" * 126)


def test_trace_sees_both_directions():
    seen: list[Any] = []
    client = Protocol(Side.CLIENT)
    client.trace = lambda direction, header, preview: seen.append((direction, header.opcode, preview))
    wire = frames_of(client, b"hi", False)
    server = Protocol(Side.SERVER)
    server.trace = client.trace
    server.receive_data(wire)
    assert seen == [(">", Opcode.BINARY, b"hi"), ("<", Opcode.BINARY, b"hi")]


messages = st.lists(st.one_of(st.text(max_size=300), st.binary(max_size=3000)), max_size=8)


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(messages, st.data())
def test_any_split_of_the_stream_delivers_every_message_once(msgs, data):
    client = Protocol(Side.CLIENT)
    wire = b""
    for m in msgs:
        text = isinstance(m, str)
        payload = m.encode() if text else m
        # Random fragmentation into frames.
        cuts = sorted(data.draw(st.lists(st.integers(0, len(payload)), max_size=3)))
        pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)])]
        for i, piece in enumerate(pieces):
            wire += frames_of(client, piece, text, i == len(pieces) - 1)
    server = Protocol(Side.SERVER, max_size=None)
    splits = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=10)))
    got: list[Any] = []
    parts: list[Any] = []
    for a, b in zip([0, *splits], [*splits, len(wire)]):
        server.receive_data(wire[a:b])
        got.extend(take(server, parts))
    assert got == msgs


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.sampled_from([Side.CLIENT, Side.SERVER]))
def test_arbitrary_bytes_only_raise_protocol_errors(data, side):
    proto = Protocol(side, max_size=1000)
    proto.receive_data(data)
    try:
        take(proto)
    except ProtocolError as exc:
        assert exc.close_code in (1002, 1007, 1009)


def test_max_fragments_bounds_empty_fragments():
    wire = masked(Opcode.BINARY, b"", fin=False) + masked(Opcode.CONT, b"", fin=False) * 20
    server = client_to_server(wire, max_fragments=10)
    with pytest.raises(PayloadTooBig, match="more than 10 frames exceeds max_fragments=10") as info:
        take(server)
    assert info.value.close_code == 1009
    # Empty pieces don't pile up as events either.
    server = client_to_server(masked(Opcode.BINARY, b"", fin=False) + masked(Opcode.CONT, b"", fin=False) * 5)
    assert len(server.events) == 0


class ProtocolPair(RuleBasedStateMachine):
    """Random interleavings of data, fragments, pings and Close from both sides.

    Bytes travel through two in-flight buffers and are delivered in random
    amounts. Invariants: messages arrive exactly once and in order, states
    only move forward, and nothing but the documented errors is raised.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ends = {"client": Protocol(Side.CLIENT, max_size=None), "server": Protocol(Side.SERVER, max_size=None)}
        self.wire = {"client": b"", "server": b""}  # bytes sent by each side, not yet delivered
        self.sent: dict[str, list[Any]] = {"client": [], "server": []}
        self.got: dict[str, list[Any]] = {"client": [], "server": []}
        self.parts: dict[str, list[Any]] = {"client": [], "server": []}
        self.states = {"client": State.OPEN, "server": State.OPEN}
        self.open: dict[str, Any] = {"client": None, "server": None}  # a message sent in part

    def _out(self, side: str) -> None:
        self.wire[side] += b"".join(self.ends[side].data_to_send())

    @rule(side=st.sampled_from(["client", "server"]), message=st.text(max_size=50) | st.binary(max_size=200),
          cuts=st.lists(st.integers(0, 200), max_size=3))  # fmt: skip
    def send_message(self, side: str, message: Any, cuts: list[int]) -> None:
        """Start a message: its first fragments go now, the rest later (see continue_message)."""
        proto = self.ends[side]
        if proto.close_sent is not None or self.open[side] is not None:
            return
        text = isinstance(message, str)
        payload = message.encode() if text else message
        points = sorted({0, len(payload), *(c % (len(payload) + 1) for c in cuts)})
        self.open[side] = (message, text, [payload[a:b] for a, b in zip(points, points[1:])] or [b""])
        self.continue_message(side, 1)

    @rule(side=st.sampled_from(["client", "server"]), count=st.integers(1, 3))
    def continue_message(self, side: str, count: int) -> None:
        """More fragments of the open message; pings and Close may come between them."""
        proto = self.ends[side]
        if self.open[side] is None or proto.close_sent is not None:
            return
        message, text, pieces = self.open[side]
        self._out(side)  # pongs queued earlier go first
        for _ in range(min(count, len(pieces))):
            piece = pieces.pop(0)
            header, body = proto.encode_data(piece, text, not pieces)
            self.wire[side] += header + body
        if not pieces:
            self.sent[side].append(message)
            self.open[side] = None

    @rule(side=st.sampled_from(["client", "server"]), payload=st.binary(max_size=125))
    def ping(self, side: str, payload: bytes) -> None:
        if self.ends[side].close_sent is None:
            self._out(side)
            self.wire[side] += self.ends[side].encode_control(Opcode.PING, payload)

    @rule(side=st.sampled_from(["client", "server"]), code=st.sampled_from([1000, 1001, 3000, 4999]))
    def close(self, side: str, code: int) -> None:
        self.ends[side].send_close(code, "bye")
        self._out(side)

    @rule(side=st.sampled_from(["client", "server"]), amount=st.integers(1, 500))
    def deliver(self, side: str, amount: int) -> None:
        peer = "server" if side == "client" else "client"
        chunk, self.wire[side] = self.wire[side][:amount], self.wire[side][amount:]
        receiver = self.ends[peer]
        receiver.receive_data(chunk)
        while (event := receiver.next_event()) is not None:  # a ProtocolError here fails the test
            if isinstance(event, Data):
                self.parts[peer].append(event.payload)
                if event.fin:
                    self.got[peer].append(("" if event.text else b"").join(self.parts[peer]))
                    self.parts[peer].clear()
        self._out(peer)  # pongs

    def teardown(self) -> None:
        """Deliver everything in flight: every message finished before a Close arrives, once."""
        for _ in range(1000):
            if not (self.wire["client"] or self.wire["server"]):
                break
            for side in ("client", "server"):
                if self.wire[side]:
                    self.deliver(side, 500)
        for side, peer in (("client", "server"), ("server", "client")):
            assert self.got[peer] == self.sent[side]

    @invariant()
    def delivered_in_order_exactly_once(self) -> None:
        for side, peer in (("client", "server"), ("server", "client")):
            assert self.got[peer] == self.sent[side][: len(self.got[peer])]

    @invariant()
    def states_only_move_forward(self) -> None:
        for side, proto in self.ends.items():
            assert proto.state >= self.states[side]
            self.states[side] = proto.state


TestProtocolPair = pytest.mark.slow(ProtocolPair.TestCase)
TestProtocolPair.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


def test_pongs_held_are_bounded_and_the_latest_ping_is_answered():
    """Ten pings in one read get ten pongs (Autobahn 2.10); a flood that our
    output can't keep up with keeps a bounded number, the last answering the
    latest ping."""
    server = client_to_server(b"".join(masked(Opcode.PING, b"%d" % i) for i in range(10)))
    assert [frame[2:] for frame in server.data_to_send()] == [b"%d" % i for i in range(10)]
    server = client_to_server(b"".join(masked(Opcode.PING, b"%d" % i) for i in range(1000)))
    pongs = [frame[2:] for frame in server.data_to_send()]
    assert len(pongs) == 16 and pongs[-1] == b"999" and pongs[:15] == [b"%d" % i for i in range(15)]


def test_pongs_taken_within_room_leave_the_rest_bounded():
    """A bounded buffer takes the protocol's frames only while it has room,
    one frame past it at most (it took all 16 pongs and went 2 KiB past
    write_limit); what stays keeps its cap, the newest ping answered last."""
    server = client_to_server(b"".join(masked(Opcode.PING, b"%03d" % i) for i in range(16)))
    first = server.data_to_send(room=1)
    assert [frame[2:] for frame in first] == [b"000"]
    assert sum(map(len, server.data_to_send(room=6))) == 10  # 5 + 5: the frame that crosses the bound goes
    server.receive_data(b"".join(masked(Opcode.PING, b"%03d" % i) for i in range(16, 40)))
    rest = [frame[2:] for frame in server.data_to_send()]
    # 13 left, 3 more fit under the cap of 16, then the newest replaces the last.
    assert rest == [b"%03d" % i for i in range(3, 18)] + [b"039"]
    assert server.data_to_send() == []


# -- the fast paths give what the general paths give ---------------------------
# Protocol takes shortcuts for the common case: _parse() reads a whole small
# unfragmented data frame, or a Ping or Pong, in one step; encode_message()
# frames a small message without encode_data(). Each shortcut must be invisible: same
# events, same errors, same bytes. A trace callback turns the parser's
# shortcut off, so a traced Protocol is the general path to compare with.


def payloads(longest: int) -> st.SearchStrategy[bytes | str]:
    """Text or bytes of any length up to ``longest``, the edges of the 7-bit length often."""
    lengths = st.one_of(st.sampled_from([0, 1, 125, 126]), st.integers(0, longest))
    return lengths.flatmap(
        lambda n: st.one_of(st.binary(min_size=n, max_size=n), st.text(min_size=n, max_size=n))
    )


# Payload lengths of the frames the parser is fed: around the 7-bit limit
# often; empty ones rarely, as they test little.
FRAME_LENGTHS = st.one_of(st.sampled_from([1, 125, 126]), st.integers(0, 140))


@st.composite
def wire_frames(draw: Any, masked: bool) -> tuple[bytes, int]:
    """A frame and its payload's length: mostly what the fast path takes, sometimes anything but."""

    # Each oddity on its own now and then: an error ends the stream, so
    # frames that break several rules at once would test little.
    def now_and_then(usual: Any, *odd: Any) -> Any:
        return draw(st.sampled_from([usual] * (2 * len(odd) + 2) + list(odd)))

    opcode = now_and_then(draw(st.sampled_from([0x1, 0x2])), 0x0, 0x3, 0x8, 0x9, 0xA)
    fin = now_and_then(True, False)
    rsv = now_and_then(0, 0x40, 0x10)
    masked = now_and_then(masked, not masked)
    n = draw(FRAME_LENGTHS)
    if opcode == 0x1:
        text = draw(st.text(min_size=min(n, 1), max_size=n)).encode()[:n].decode(errors="ignore").encode()
        payload = now_and_then(text, text[: n - 1] + b"\xff" if n else text)
    else:
        payload = draw(st.binary(min_size=n, max_size=n))
    key = draw(st.binary(min_size=4, max_size=4)) if masked else None
    if key is not None:
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return encode_header(opcode, len(payload), fin, rsv, key) + payload, len(payload)


def received(proto: Protocol, chunks: list[bytes]) -> tuple[Any, ...]:
    """Everything observable after feeding ``chunks``: events, error, pongs, state, replies."""
    outcome: list[Any] = []
    for chunk in chunks:
        proto.receive_data(chunk)
        while True:
            try:
                event = proto.next_event()
            except ProtocolError as exc:
                outcome.append((type(exc), exc.close_code, str(exc)))
                break
            if event is None:
                break
            if isinstance(event, Data):
                outcome.append(("data", event.payload, event.text, event.fin))
            else:
                outcome.append(("close", event.code, event.reason))
    replies: bytes | int = b"".join(proto.data_to_send())
    if proto.side is Side.CLIENT:
        replies = len(replies)  # masked with random keys
    return tuple(outcome), tuple(proto.pongs), proto.state, replies


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([Side.SERVER, Side.CLIENT]), st.booleans(), st.data())
def test_parser_fast_path_agrees_with_the_general_path(side, deflate, data):
    frames = data.draw(st.lists(wire_frames(masked=side is Side.SERVER), min_size=1, max_size=8))
    wire = b"".join(frame for frame, _ in frames) + data.draw(st.binary(max_size=3))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=3)))
    chunks = [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)])]
    # No max_size, or one right at a frame's length or one below.
    _, length = data.draw(st.sampled_from(frames))
    max_size = data.draw(st.sampled_from([None, None, length, max(0, length - 1)]))
    params = DeflateParams() if deflate else None
    for pieces in [wire], chunks:
        fast = Protocol(side, max_size=max_size, deflate=params)
        general = Protocol(side, max_size=max_size, deflate=params)
        general.trace = lambda direction, header, preview: None
        assert received(fast, pieces) == received(general, pieces)


def one_frame(frame: bytes) -> tuple[Any, ...]:
    """A frame's header fields and unmasked payload (the masking key is random)."""
    header = parse_header(frame, 0)
    assert header is not None and header.size + header.length == len(frame)
    payload = frame[header.size :]
    if header.mask is not None:
        payload = bytes(b ^ header.mask[i % 4] for i, b in enumerate(payload))
    return header.fin, header.rsv, header.opcode, header.mask is not None, payload


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from([Side.CLIENT, Side.SERVER]),
    st.sampled_from([None, 0, 16, 128, 1000]),
    st.lists(st.tuples(payloads(300), st.booleans()), max_size=6),
)
def test_encode_message_equals_encode_data(side, deflate_min_size, messages):
    """encode_message() frames like encode_data(fin=True), compressor state included."""
    options: dict[str, Any] = {}
    if deflate_min_size is not None:
        options = {"deflate": DeflateParams(), "compression": PerMessageDeflate(min_size=deflate_min_size)}
    shortcut = Protocol(side, **options)
    general = Protocol(side, **options)
    for message, after_a_fragment in messages:
        text = isinstance(message, str)
        payload = message.encode() if text else message
        if after_a_fragment:  # a message left open: encode_message() must not cut in
            assert one_frame(frames_of(shortcut, b"open", text, False)) == one_frame(
                frames_of(general, b"open", text, False)
            )
        frame = shortcut.encode_message(payload, text)
        expected = frames_of(general, payload, text)
        assert one_frame(frame) == one_frame(expected)
        if side is Side.SERVER:
            assert frame == expected
        assert shortcut.sending_message is general.sending_message is False


# -- payload read into place by the I/O layer (recv_into's seam) -------------------------


def place_or_feed(proto: Protocol, wire: bytes, chunks: list[int]) -> tuple[list[Any], int]:
    """Play the I/O layer of recv_into: while the protocol offers payload to place, copy it
    from ``wire`` into the message being built; otherwise feed it the next chunk. Returns
    the messages and Close events, in order, and how many bytes were placed."""
    out: list[Any] = []
    message = bytearray()
    text: bool | None = None
    placed = 0
    pos = 0
    sizes = iter(chunks)

    def drain() -> None:
        nonlocal text
        while (event := proto.next_event()) is not None:
            if isinstance(event, Close):
                out.append(event)
                continue
            text = event.text
            message.extend(event.payload.encode() if event.text else event.payload)  # type: ignore[union-attr]
            if event.fin:
                out.append(message.decode() if text else bytes(message))
                message.clear()

    while pos < len(wire):
        drain()
        want = proto.payload_to_place()
        size = next(sizes, 1 << 20)
        if want:
            n = min(want, size, len(wire) - pos)
            start = len(message)
            message.extend(wire[pos : pos + n])
            pos += n
            placed += n
            assert (announced := proto.announced_size) is not None and announced[0] >= len(message)
            with memoryview(message) as view:
                done = proto.payload_placed(n, view[start:])  # unmasked there, if masked
            if done:
                assert announced[1] and announced[0] == len(message)
                out.append(bytes(message))
                message.clear()
        else:
            proto.receive_data(wire[pos : pos + size])
            pos += size
    drain()
    return out, placed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.binary(max_size=3000), st.text(max_size=300)),
            st.lists(st.integers(0, 3000), max_size=4),
        ),
        max_size=6,
    ),
    st.lists(st.integers(1, 5000), max_size=40),
    st.booleans(),
    st.sampled_from([Side.SERVER, Side.CLIENT]),
)
def test_placed_payload_gives_the_same_messages(messages, chunks, pings, sender_side):
    """Reading payload into place where the protocol offers it, and feeding the rest,
    gives the same messages as feeding everything (masked ones unmasked in place);
    pings between fragments answered."""
    sender = Protocol(sender_side)
    wire = b""
    expected: list[Any] = []
    sent_pings = 0
    for message, cuts in messages:
        text = isinstance(message, str)
        payload = message.encode() if text else message
        bounds = sorted({min(c, len(payload)) for c in cuts})
        pieces = [payload[a:b] for a, b in zip([0, *bounds], [*bounds, len(payload)])]
        for i, piece in enumerate(pieces):
            wire += frames_of(sender, piece, text, i == len(pieces) - 1)
            if pings:
                wire += sender.encode_control(Opcode.PING, b"p%d" % i)
                sent_pings += 1
        expected.append(message)
    sender.send_close()
    wire += b"".join(sender.data_to_send())
    receiver = Protocol(Side.CLIENT if sender_side is Side.SERVER else Side.SERVER, max_size=None)
    out, placed = place_or_feed(receiver, wire, chunks)
    assert out[:-1] == expected
    assert isinstance(out[-1], Close) and out[-1].code == 1000
    assert len(receiver.data_to_send()) == min(sent_pings, 16)  # every ping answered (the latest 16 kept)


def test_payload_to_place_only_where_nothing_is_to_be_done():
    server = Protocol(Side.SERVER)
    client = Protocol(Side.CLIENT)
    head, body = server.encode_data(b"x" * 1000, False, True)
    client.receive_data(head)
    assert client.payload_to_place() == 1000
    assert client.announced_size == (1000, True)
    assert not client.payload_placed(400)
    assert client.payload_to_place() == 600
    client.receive_data(body[400:500])  # fed as usual instead: a piece
    assert client.payload_to_place() == 0  # an event waits: nothing may pass it
    assert take(client) == []  # (the message is unfinished: its piece is kept here)
    assert client.payload_to_place() == 500
    assert client.payload_placed(500)  # the end of the message
    assert client.payload_to_place() == 0 and client.announced_size is None
    with pytest.raises(ValueError):
        client.payload_placed(1)
    # Text is decoded here, so it is never offered; nor is a masked frame to a server.
    head, _ = server.encode_data(b"hello", True, True)
    client.receive_data(head)
    assert client.payload_to_place() == 0 and client.announced_size == (5, True)
    # A masked frame (to a server) is offered: its bytes are unmasked where they were placed.
    masked_head, masked_body = Protocol(Side.CLIENT).encode_data(b"abcdef", False, True)
    receiver = Protocol(Side.SERVER)
    receiver.receive_data(masked_head)
    assert receiver.payload_to_place() == 6
    with pytest.raises(ValueError):
        receiver.payload_placed(2)  # where they are must be said, to unmask them
    placed = bytearray(masked_body)
    assert not receiver.payload_placed(1, memoryview(placed)[:1])
    assert receiver.payload_placed(5, memoryview(placed)[1:])  # the key goes on from where it was
    assert placed == b"abcdef"


def test_announced_size_grows_with_fragments_and_knows_the_last():
    server = Protocol(Side.SERVER)
    client = Protocol(Side.CLIENT)
    client.receive_data(frames_of(server, b"a" * 10, False, False))
    assert take(client) == [] and client.announced_size == (10, False)
    head, _ = server.encode_data(b"b" * 20, False, True)
    client.receive_data(head)
    assert client.announced_size == (30, True)
    assert client.payload_placed(20)
    deflating = Protocol(Side.CLIENT, deflate=DeflateParams())
    sender = Protocol(Side.SERVER, deflate=DeflateParams(), compression=PerMessageDeflate(min_size=0))
    head, body = sender.encode_data(b"z" * 1000, False, True)
    deflating.receive_data(head + body[:1])
    assert deflating.announced_size is None and deflating.payload_to_place() == 0


def test_payload_placed_respects_max_size():
    """max_size is checked on the header, before any payload is offered."""
    server = Protocol(Side.SERVER)
    client = Protocol(Side.CLIENT, max_size=100)
    head, _ = server.encode_data(b"x" * 101, False, True)
    client.receive_data(head)
    assert client.payload_to_place() == 0
    with pytest.raises(PayloadTooBig):
        client.next_event()


def test_a_message_dropped_part_way_is_dropped_to_its_end():
    """close() drops the messages in flight: the frames of a message that
    began before were delivered afterwards, and a reader between its pieces
    took its tail for a whole message. Later messages are delivered."""
    server = client_to_server(masked(Opcode.TEXT, b"head \xc3", fin=False))  # a character cut in two
    server.drop_events()
    server.receive_data(masked(Opcode.CONT, b"\xa9 middle ", fin=False) + masked(Opcode.CONT, b"tail \xc3"))
    server.receive_data(masked(Opcode.BINARY, b"next") + masked(Opcode.TEXT, b"\xc3\xa9"))
    assert take(server) == [b"next", "\u00e9"]


def test_random_keys_are_four_bytes_each_and_go_on_past_one_fetch() -> None:
    keys = random_keys()
    drawn = [next(keys) for _ in range(1000)]  # ~31 fetches of 32
    assert {len(key) for key in drawn} == {4}
    assert len(set(drawn)) > 990  # 4 random bytes: a repeat in 1,000 is rare, not many
    other = random_keys()
    assert [next(other) for _ in range(8)] != drawn[:8]  # each pool draws its own
