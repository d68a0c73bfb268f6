"""The C accelerator and the pure-Python masking agree (CI runs both paths)."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockws import frames, http
from blockws.exceptions import InvalidHandshake

speedups = pytest.importorskip("blockws._speedups", reason="the C accelerator is not built")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.binary(min_size=4, max_size=4))
def test_c_mask_equals_python_mask(data: bytes, key: bytes) -> None:
    assert speedups.mask(data, key) == frames._mask_python(data, key)
    assert speedups.mask(bytearray(data), key) == frames._mask_python(data, key)
    assert speedups.mask(memoryview(data)[1:], key) == frames._mask_python(data[1:], key)


@pytest.mark.parametrize(
    "size",
    sorted(
        {0, 1, 7, 125, 126, (1 << 20) + 1, (4 << 20) + 3}
        | {edge + d for edge in (frames._TRANSLATE_MIN, frames._CHUNKED_MIN, 3 * frames._CHUNK) for d in (-1, 0, 1, 2)}
    ),
)
def test_c_mask_equals_every_python_strategy(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    for offset in range(4):
        rotated = key[offset:] + key[:offset]  # as apply_mask rotates it
        expected = speedups.mask(data, rotated)
        for masker in (frames._mask_python, frames._mask_int, frames._mask_translate, frames._mask_chunked):
            for buffer in (data, bytearray(data), memoryview(data)):
                assert masker(buffer, rotated) == expected, (masker.__name__, type(buffer), offset)


def test_c_mask_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        speedups.mask(b"abc", b"12345")


def test_environment_variable_forces_pure_python() -> None:
    code = "import blockws.frames as f, blockws.transport as t; print(f.ACCELERATED and t._send_now is not None)"
    env = {**os.environ, "BLOCKWS_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env.pop("BLOCKWS_NO_EXTENSIONS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


@pytest.mark.skipif(not hasattr(speedups, "send_now"), reason="no MSG_DONTWAIT on this platform")
def test_send_now_writes_what_fits_and_reports_errors() -> None:
    """send(fd, data, MSG_DONTWAIT) keeping the GIL: bytes taken, 0 when the
    kernel has no room (never waits), OSError subclasses like socket.send."""
    a, b = socket.socketpair()
    with a, b:
        assert speedups.send_now(a.fileno(), b"hello") == 5
        assert b.recv(10) == b"hello"
        assert speedups.send_now(a.fileno(), memoryview(b"xhello")[1:]) == 5
        assert b.recv(10) == b"hello"
        assert speedups.send_now(a.fileno(), b"") == 0
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        taken = 0
        chunk = os.urandom(8192)
        while True:  # a blocking socket: only a call that never waits ends this loop
            n = speedups.send_now(a.fileno(), chunk)
            if not n:
                break
            taken += n
        assert 4096 <= taken < 10_000_000
        received = bytearray()
        while len(received) < taken:
            received += b.recv(65536)
        assert bytes(received) == (chunk * (taken // len(chunk) + 1))[:taken]
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            speedups.send_now(a.fileno(), b"x")  # no SIGPIPE: the error, as socket.send gives it
    with pytest.raises(OSError) as info:
        speedups.send_now(a.fileno(), b"x")  # closed: fileno() is -1
    assert info.value.errno == errno.EBADF


@given(st.binary(max_size=300), st.binary(min_size=4, max_size=4), st.integers(0, 7))
def test_c_mask_inplace_matches_mask(data, key, start):
    buf = bytearray(b"\xaa" * start + data + b"\xbb")
    speedups.mask_inplace(memoryview(buf)[start : start + len(data)], key)
    assert buf == b"\xaa" * start + frames._mask_python(data, key) + b"\xbb"  # nothing else touched
    view = memoryview(bytearray(data))
    frames.unmask_inplace(view, key, start)  # the offset in the frame turns the key
    assert bytes(view) == frames.apply_mask(data, key, start)


def test_c_mask_inplace_needs_a_writable_buffer_and_a_4_byte_key() -> None:
    with pytest.raises(TypeError):
        speedups.mask_inplace(b"read-only", b"1234")
    with pytest.raises(ValueError):
        speedups.mask_inplace(bytearray(3), b"123")


def test_builder_lends_its_bytes_until_taken() -> None:
    builder = speedups.Builder(10)
    with memoryview(builder) as view:
        view[:5] = b"hello"
        view[5:] = b"world"
        with pytest.raises(BufferError):
            builder.take()  # a view is open: the bytes could still change
    message = builder.take()
    assert message == b"helloworld" and type(message) is bytes
    with pytest.raises(BufferError):
        memoryview(builder)  # handed over: no more writing
    with pytest.raises(ValueError):
        builder.take()
    with pytest.raises(ValueError):
        speedups.Builder(0)  # the empty bytes object is shared: never written


@pytest.mark.skipif(not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="not a free-threaded CPython build")
def test_importing_blockws_leaves_the_gil_off() -> None:
    """On free-threaded CPython (3.13t) the accelerator declares it doesn't need the GIL: an extension
    that doesn't turns the GIL on for the whole process when it loads (with a RuntimeWarning)."""
    code = (
        "import sys; assert not sys._is_gil_enabled(); import blockws, blockws._accel as a; "
        "print(a.Builder is not None and a.mask is not None, sys._is_gil_enabled())"
    )
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHON_GIL", "BLOCKWS_NO_EXTENSIONS")}
    out = subprocess.run([sys.executable, "-W", "error", "-c", code], env=env, capture_output=True, text=True)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.split() == ["True", "False"]  # the accelerator loaded, and the GIL is still off


@pytest.mark.skipif(
    not sysconfig.get_config_var("Py_GIL_DISABLED"), reason="with the GIL, each of the Builder's methods runs alone"
)
def test_a_builder_used_from_several_threads_counts_every_view() -> None:
    """Views opened and closed from four threads at once: afterwards none is open (take() works) and
    an open one is always seen (take() refuses). Without the GIL, a count updated outside the
    Builder's critical section loses some of them (about one round in three, on two cores)."""
    for _ in range(8):
        builder = speedups.Builder(64)
        start = threading.Barrier(4)

        def lend(builder: Any = builder, start: threading.Barrier = start) -> None:
            start.wait()
            for _ in range(100_000):
                memoryview(builder).release()

        threads = [threading.Thread(target=lend) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        with memoryview(builder):
            with pytest.raises(BufferError):
                builder.take()  # one view open: counted, after 400,000 others
        assert len(builder.take()) == 64  # none open: every release counted


# -- the message fast paths: parse_one and send_message give what the Python protocol gives --

_KEY = b"\x9a\x01\xfe\x37"


@st.composite
def frame_bytes(draw: Any) -> tuple[bytes, bool]:
    """One frame, often a simple one, sometimes bent: another opcode, not FIN,
    RSV bits, the wrong masking, a non-minimal length, invalid UTF-8, bytes
    missing or following (the next frame's)."""
    masked = draw(st.booleans())
    opcode = draw(st.sampled_from([0x1, 0x2, 0x1, 0x2, 0x0, 0x9, 0xA, 0x8, 0x3]))
    fin = draw(st.sampled_from([True, True, True, False]))
    rsv = draw(st.sampled_from([0, 0, 0, 0x40, 0x10]))
    if opcode == 0x1 and draw(st.booleans()):
        payload = draw(st.text(max_size=300)).encode("utf-8")
    else:
        payload = draw(st.binary(max_size=300) | st.sampled_from([b"", b"\xff", b"\xc3", b"x" * 126, b"y" * 5000]))
    if opcode >= 0x8:
        payload = payload[:125]
    wire_masked = masked != draw(st.sampled_from([False, False, False, True]))  # sometimes the wrong way
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    bit = 0x80 if wire_masked else 0
    if len(payload) < 126 and not draw(st.sampled_from([False, False, False, True])):
        head += bytes([bit | len(payload)])
    elif draw(st.sampled_from([False, False, False, True])):
        head += bytes([bit | 127]) + len(payload).to_bytes(8, "big")  # a 64-bit length: never the fast path's
    else:
        head += bytes([bit | 126]) + len(payload).to_bytes(2, "big")  # minimal or not
    if wire_masked:
        head += _KEY
        payload = frames._mask_python(payload, _KEY)
    data = head + payload
    cut = draw(st.sampled_from([0, 0, 0, 1, len(payload)]))
    if cut:
        data = data[:-cut]
    if draw(st.sampled_from([False, False, False, True])):
        data += b"\x82\x00"
    return data, masked


def _one_frame(data: bytes) -> bool:
    """``data`` is exactly one frame, nothing before or after it."""
    header = frames.parse_header(data, 0)
    return header is not None and header.size + header.length == len(data)


@settings(max_examples=1000, deadline=None)
@given(frame_bytes(), st.sampled_from([None, 0, 10, 126, 1 << 20]))
def test_parse_one_gives_what_the_protocol_parses(frame: tuple[bytes, bool], max_size: int | None) -> None:
    """parse_one answers only for exactly one whole simple frame, and then
    with the message the Python parser makes of the same bytes; for every
    other input it says None and the Python parser decides."""
    from blockws.exceptions import ProtocolError
    from blockws.protocol import Data, Protocol, Side

    data, masked = frame
    fast = speedups.parse_one(data, masked, -1 if max_size is None else max_size)
    proto = Protocol(Side.SERVER if masked else Side.CLIENT, max_size=max_size)
    try:
        proto.receive_data(data)
        events = [proto.next_event() for _ in range(len(proto.events))]
    except ProtocolError:
        assert fast is None
        return
    # The fast path takes 7- and 16-bit lengths, minimally encoded; a 64-bit
    # one (64 KiB or more, or a non-minimal encoding of less) is the parser's.
    code = data[1] & 0x7F if len(data) >= 2 else 127
    minimal = code < 126 or code == 126 and int.from_bytes(data[2:4], "big") >= 126
    simple = (
        proto.failure is None
        and len(events) == 1
        and type(events[0]) is Data
        and events[0].fin
        and _one_frame(data)
        and data[0] in (0x81, 0x82)
        and minimal
    )
    if simple:
        assert type(fast) is type(events[0].payload) and fast == events[0].payload
    else:
        assert fast is None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=20_000) | st.text(max_size=300).map(str.encode), st.booleans(), st.booleans())
def test_send_message_writes_the_frame_encode_message_makes(payload: bytes, text: bool, masked: bool) -> None:
    key = _KEY if masked else b""
    opcode = 0x1 if text else 0x2
    expected = frames.encode_header(opcode, len(payload), True, 0, key or None) + (
        frames._mask_python(payload, key) if masked else payload
    )
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        got = b""
        rest = speedups.send_message(a.fileno(), payload, text, key)
        if rest is not None:
            a.setblocking(True)
            a.sendall(rest)
        while len(got) < len(expected):
            got += b.recv(65536)
        assert got == expected
    finally:
        a.close()
        b.close()
    with pytest.raises(ValueError):
        speedups.send_message(a.fileno(), payload, text, b"123")


def test_counts_are_added_to_by_the_fast_paths_only_for_messages() -> None:
    counts = speedups.Counts()
    assert (counts.messages, counts.bytes) == (0, 0)
    assert speedups.parse_one(b"\x82\x03abc", False, -1, counts) == b"abc"
    assert speedups.parse_one(b"\x81\x02\xc3\xa9", False, -1, counts) == "\u00e9"  # 2 bytes of UTF-8
    assert speedups.parse_one(b"\x81\x01\xff", False, -1, counts) is None  # invalid UTF-8: not counted
    assert speedups.parse_one(b"\x89\x00", False, -1, counts) is None  # a Ping: not a message
    a, b = socket.socketpair()
    try:
        assert speedups.send_message(a.fileno(), b"x" * 200, False, b"", counts) is None
        assert len(b.recv(1000)) == 204
    finally:
        a.close()
        b.close()
    counts.add(2, 7)  # what the Python paths count
    assert (counts.messages, counts.bytes) == (5, 3 + 2 + 200 + 7)
    with pytest.raises(AttributeError):
        counts.messages = 0  # read-only: only the fast paths and add() count


recv_one = getattr(speedups, "recv_one", None)
needs_recv_one = pytest.mark.skipif(recv_one is None, reason="recv_one is POSIX-only (MSG_DONTWAIT)")


@needs_recv_one
@settings(max_examples=300, deadline=None)
@given(frame_bytes(), st.sampled_from([None, 10, 1 << 20]))
def test_recv_one_reads_once_and_answers_as_parse_one(frame: tuple[bytes, bool], max_size: int | None) -> None:
    """What one read brought, as parse_one judges it; else those bytes, untouched, for the parser."""
    data, masked = frame
    limit = -1 if max_size is None else max_size
    a, b = socket.socketpair()
    try:
        b.sendall(data)
        got = recv_one(a.fileno(), masked, limit)
        expected = speedups.parse_one(data, masked, limit)
        if expected is None:
            assert got == (data,)  # a unix socketpair delivers one send in one read
        else:
            assert type(got) is type(expected) and got == expected
    finally:
        a.close()
        b.close()


@needs_recv_one
def test_recv_one_at_the_edges() -> None:
    counts = speedups.Counts()
    a, b = socket.socketpair()
    try:
        # A read that fills recv_one's buffer (16 KiB) is never a message, even a whole one: more may follow.
        big = bytes([0x82, 126]) + (16384 - 4).to_bytes(2, "big") + b"z" * (16384 - 4)
        b.sendall(big)
        assert recv_one(a.fileno(), False, -1, counts) == (big,)
        small = bytes([0x82, 126]) + (16383 - 4).to_bytes(2, "big") + b"z" * (16383 - 4)
        b.sendall(small)
        assert recv_one(a.fileno(), False, -1, counts) == small[4:]
        assert (counts.messages, counts.bytes) == (1, 16383 - 4)  # only what it returned as a message
        b.close()
        assert recv_one(a.fileno(), False, -1, counts) == (b"",)  # EOF
        fd = a.fileno()
        a.close()
        with pytest.raises(OSError) as info:
            recv_one(fd, False, -1)  # the errors socket.recv() raises, errno and all
        assert info.value.errno == errno.EBADF
    finally:
        a.close()
        b.close()
    with pytest.raises(TypeError):
        recv_one("3", False, -1)


@needs_recv_one
@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")
def test_recv_one_runs_signal_handlers_while_it_waits() -> None:
    """EINTR (PEP 475): the handler runs, then the read goes on; a handler that raises ends it."""
    a, b = socket.socketpair()
    calls: list[int] = []

    def handler(signum: int, frame: Any) -> None:
        calls.append(signum)
        if len(calls) == 2:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGUSR1, handler)
    main = threading.get_ident()

    def interrupt_then_send() -> None:
        time.sleep(0.2)
        signal.pthread_kill(main, signal.SIGUSR1)  # the wait goes on after the handler
        time.sleep(0.2)
        b.sendall(b"\x82\x02hi")

    try:
        thread = threading.Thread(target=interrupt_then_send)
        thread.start()
        assert recv_one(a.fileno(), False, -1) == b"hi"
        thread.join()
        assert calls == [signal.SIGUSR1]
        threading.Timer(0.2, signal.pthread_kill, (main, signal.SIGUSR1)).start()
        with pytest.raises(KeyboardInterrupt):
            recv_one(a.fileno(), False, -1)
        assert calls == [signal.SIGUSR1, signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, old)
        a.close()
        b.close()


# -- the head splitter: split_head gives what http.py's Python parser gives, or None --

_HEAD_PIECES = [
    b"GET /chat HTTP/1.1",
    b"HTTP/1.1 101 Switching Protocols",
    b"Host",
    b"sec-WebSocket-Key",
    b"X-A",
    b"!#$%&'*+-.^_`|~",
    b":",
    b": ",
    b" ",
    b"\t",
    b"\r\n",
    b"\n",
    b"\r",
    b"value",
    b"a, b",
    b"\x00",
    b"\x08",
    b"\x1f",
    b"\x7f",
    b"\x85",
    b"\xa0",
    b"\xe9",
    b"(",
    b"=",
]


@st.composite
def http_heads(draw: Any) -> bytes:
    """A head, often well formed (CRLF or LF, blanks around values, repeated
    names), sometimes anything made of the pieces that matter to the grammar."""
    if draw(st.booleans()):
        return b"".join(draw(st.lists(st.sampled_from(_HEAD_PIECES), max_size=40)))
    end = draw(st.sampled_from([b"\r\n", b"\n"]))
    blank = st.sampled_from([b"", b"", b" ", b"\t", b" \t "])
    name = st.sampled_from(
        [b"Host", b"host", b"Upgrade", b"X-A", b"x-a", b"Sec-WebSocket-Protocol", b"X A", b"(x)", b""]
    )
    value = st.sampled_from(
        [b"", b"x", b"a, b", b"w\x85z", b"caf\xe9", b"a\tb", b'("q")', b"\xa0", b"a\x7fb", b"\x00", b"x\ry", b"\x1f"]
    )
    lines = [draw(st.sampled_from([b"GET / HTTP/1.1", b"HTTP/1.0 200 OK", b"X"]))]
    for _ in range(draw(st.integers(0, 6))):
        lines.append(draw(name) + draw(blank) + b":" + draw(blank) + draw(value) + draw(blank))
    return draw(st.sampled_from([b"", end])) + end.join(lines) + end + end


def _split(split: Any, head: bytes, max_line: int, max_headers: int) -> Any:
    try:
        start, headers = split(head, max_line, max_headers)
    except InvalidHandshake as exc:
        return str(exc)
    return start, headers.items(), list(headers._index.items())


@settings(max_examples=800, deadline=None)
@given(http_heads(), st.sampled_from([1, 12, 30, 8192]), st.sampled_from([0, 1, 3, 128]))
def test_split_head_gives_what_the_python_parser_gives(head: bytes, max_line: int, max_headers: int) -> None:
    expected = _split(http._split_head_python, head, max_line, max_headers)
    # Through the parser that uses the accelerator: the same headers, or the same error.
    assert _split(http._split_head, head, max_line, max_headers) == expected
    split = speedups.split_head(head, max_line, max_headers)
    if split is not None:
        assert isinstance(expected, tuple)
        assert (split[0], split[1], list(split[2].items())) == expected
    else:
        # Declined: only what the Python parser refuses, or a start line with
        # a CR that doesn't end it (which it leaves to the request line's parser).
        assert isinstance(expected, str) or b"\r" in head.replace(b"\r\n", b""), expected


def test_split_head_takes_a_browsers_request() -> None:
    head = (
        b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate\r\nsec-websocket-extensions: x-foo \t\r\n\r\n"
    )
    start, pairs, index = speedups.split_head(head, 8192, 128)
    assert start == "GET /chat HTTP/1.1"
    assert pairs[2] == ("Connection", "keep-alive, Upgrade")
    assert index["sec-websocket-extensions"] == ["permessage-deflate", "x-foo"]
    assert speedups.split_head(bytearray(head), 8192, 128) is None  # bytes only: the Python parser takes the rest
