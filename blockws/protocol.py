"""The sans-I/O WebSocket state machine: bytes in, events out; calls in, bytes out.

Theory of operation
-------------------
:class:`Protocol` never touches a socket. The I/O layer feeds it what it
read (:meth:`Protocol.receive_data`, :meth:`Protocol.receive_eof`), takes
events (message pieces and the peer's Close) with :meth:`Protocol.next_event`
and pong payloads from :attr:`Protocol.pongs`, frames outgoing data with
:meth:`Protocol.encode_data` and friends, and writes whatever
:meth:`Protocol.data_to_send` returns.

Received data frames are streamed: a frame's payload is unmasked, validated
(UTF-8 for text, fail fast) and handed out as :class:`Data` pieces as soon as
it arrives, so a large message is never copied around in a growing buffer.
Only frame headers and control frames (at most 139 bytes) are buffered. The
parser is a base class's (:class:`blockws.parsing.Parser`), and so are the
encoders (:class:`blockws.encoding.Encoder`); this module keeps the states,
control frames and the ending record.
What the queued events hold is counted where they are queued and taken
(:attr:`Protocol.queued`, :attr:`Protocol.ends`), for readers in other
threads; the counts of what came in never go down, so they are also the
connection's received messages and bytes (:meth:`Protocol.received`).

The peer's Close ends the peer's half of the stream, like a FIN in TCP: it is
reported when the application takes it (after every message before it), and
our own Close is sent when the application closes or shuts down its half —
until then it may still send, as it may after ``recv()`` returned ``b""`` on
a socket — or when the I/O layer calls :meth:`Protocol.answer_close` for an
application that doesn't read (the keepalive's grace). After a protocol error the Close that fails the
connection is queued when the application reaches the error, so messages
that came before it are still delivered. Pings are answered at once, so a
peer's ping gets its pong even while messages wait to be read.

States (the only place they change is this module; the connection's
:attr:`~blockws.WebSocket.state` is this one)::

    OPEN --send_close()--> CLOSING --the peer's Close received--> CLOSED
    OPEN --the peer's Close received--> CLOSING --send_close() or answer_close()--> CLOSED
    OPEN --protocol error reached (our Close queued)--> CLOSING
    any --receive_eof(), lose(), fail() or transport_closed()--> CLOSED

How the connection ended is recorded here, once: the peer's Close
(:attr:`Protocol.close_rcvd`), ours (:attr:`Protocol.close_sent`), or
:attr:`Protocol.lost` when it ended without the peer's Close (lost, 1006,
also when the socket is closed before the peer answered our Close; or
failed by us); :meth:`Protocol.closed_error` decides whether that was a
clean end.

Locks
-----
The protocol is sans-I/O but not single-threaded: the I/O layer's reader
(holding its reader lock) parses into it while a sender (holding the send
lock) frames with it. Each side's own state is under its own lock; what
both sides change is under the protocol's queue lock (``Protocol._lock``,
a leaf: nothing else is taken under it, but the ``trace`` callback of our
Close): :attr:`Protocol.outgoing` with the pong count and position (the
reader queues pongs, the send-lock holder takes them with
:meth:`Protocol.data_to_send`), the decision to queue our Close (the reader
after a protocol error, a sender for ``close()``: one Close, and no pong
after it), and how the connection ended (``close_sent``, ``close_rcvd``,
``lost``, ``finished``, ``output_ended``, ``state``), so that the first
cause wins and ``state`` ends CLOSED once both Closes are seen. None of it
is on a data message's path. Those fields are read without it (one
attribute each, as flags). A client's masking keys come from two pools,
one per side (:func:`random_keys` is not thread-safe: two threads could
draw the same key): the sender's, and the reader's for its pongs and its
Close after a protocol error.
"""

from __future__ import annotations

import enum
import itertools
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Union

from .codes import ABNORMAL_CLOSURE, NO_STATUS_RCVD, OP_CLOSE, OP_PING, OP_PONG, CloseCode, is_clean_close
from .deflate import Compressor, Decompressor, DeflateParams, PerMessageDeflate
from .encoding import Encoder
from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, ProtocolError
from .frames import FrameHeader, encode_close, parse_close
from .parsing import TRACE_PREVIEW, Data, Parser

__all__ = ["Side", "State", "Protocol", "Data", "Close", "Event", "DEFAULT_MAX_SIZE", "RandomKeys", "random_keys"]

DEFAULT_MAX_SIZE = 2**20
# Pongs the protocol holds while the connection can't write them (each one
# answers a ping; Autobahn's 2.10 sends 10 in a row and wants every answer).
_MAX_QUEUED_PONGS = 16
DEFAULT_MAX_FRAGMENTS = 100_000


class Side(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class State(enum.IntEnum):
    """Connection state, as in the WebSocket API (``readyState``)."""

    CONNECTING = 0
    OPEN = 1
    CLOSING = 2
    CLOSED = 3


# As codes.py's OP_* (see there): the members as globals, for the per-connection paths.
_CLIENT = Side.CLIENT
_OPEN, _CLOSING, _CLOSED = State.OPEN, State.CLOSING, State.CLOSED


class Close:
    """A Close frame (the peer's or ours), or why the connection was lost:
    ``code`` is 1005 when the frame carried none."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        # A plain int, never a CloseCode member: close_code is printed and
        # logged, and str() of an IntEnum member says "CloseCode.X" before
        # Python 3.11.
        self.code = int(code)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Close({self.code}, {self.reason!r})"


Event = Union[Data, Close]


#: 4-byte random values (masking keys, ping payloads), taken with ``next()``.
RandomKeys = Iterator[bytes]

# Keys fetched at once: a system call per 32 keys is ~15 ns a key, and a
# connection holds ~1.6 KiB of them (as bytes objects) in each of its pools.
_KEYS_PER_DRAW = 32
_split_keys = struct.Struct("4s" * _KEYS_PER_DRAW).unpack


def _draw_keys() -> tuple[bytes, ...]:
    return _split_keys(os.urandom(4 * _KEYS_PER_DRAW))


def random_keys() -> RandomKeys:
    """4-byte random values from the OS's CSPRNG, fetched 32 at a time.

    An iterator whose every step runs in C (a chain over the tuples each
    fetch splits into), not a method of ours: a Python call costs ~600-1,000
    instructions on 3.11, and a client draws a key for every frame it sends
    and the keepalive two for every ping. For one thread at a time (its
    user's lock): two threads drawing at once may get the same value.
    """
    return itertools.chain.from_iterable(iter(_draw_keys, None))


class Protocol(Encoder, Parser):
    """One WebSocket connection's protocol state, without I/O.

    Args:
        side: whether we are the client (we mask) or the server.
        max_size: the largest message accepted, in bytes (None: no limit).
            A larger one fails the connection with 1009.
        max_fragments: the most frames one message may come in (None: no
            limit); more fail the connection with 1009.
        deflate: the negotiated permessage-deflate parameters, if any.
        compression: how we compress what we send when ``deflate`` was
            negotiated (default: ``PerMessageDeflate()``).
    """

    # Slots, not a __dict__: a protocol has more attributes than CPython's
    # shared-key instance dicts hold (30), and every recv() and send() reads
    # some (LOAD_ATTR_SLOT instead of a dict lookup; methods specialise too).
    # Its bases declare none: two bases with slots can't be combined.
    __slots__ = (
        "close_rcvd",
        "close_sent",
        "data_in",
        "data_out",
        "deflate",
        "ends_in",
        "ends_out",
        "eof",
        "events",
        "failure",
        "finished",
        "in_message",
        "input_ended",
        "leftover",
        "lost",
        "mask_keys",
        "max_fragments",
        "max_size",
        "outgoing",
        "output_ended",
        "plain_below",
        "pongs",
        "remaining",
        "sending_message",
        "side",
        "state",
        "text_extra",
        "trace",
        "_client",
        "_close_answer_due",
        "_compressor",
        "_decoder",
        "_decoding",
        "_decompressor",
        "_discard",
        "_dropping",
        "_frame_fin",
        "_frame_mask",
        "_frame_offset",
        "_last_pong_at",
        "_lock",
        "_msg_compressed",
        "_msg_frames",
        "_msg_size",
        "_msg_text",
        "_out_compressed",
        "_pongs_queued",
        "_reader_keys",
        "_skip_binary",
    )

    def __init__(
        self,
        side: Side,
        *,
        max_size: int | None = DEFAULT_MAX_SIZE,
        max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
        deflate: DeflateParams | None = None,
        compression: PerMessageDeflate | None = None,
    ) -> None:
        self.side = side
        self._client = side is _CLIENT
        self.max_size = max_size
        self.state = _OPEN
        self.events: deque[Event] = deque()
        # What the queued events hold, counted where events are queued and
        # taken (here and by the I/O layer that pops them itself), so that
        # other threads may ask without walking the deque (see queued and
        # ends). What came in only grows: the payload length of every Data
        # event (characters for text) and the Data events that end a
        # message; what went out (data_out, ends_out) grows as events are taken (a Close, queued,
        # counts as -1 until taken; put_back() takes back). The counts in
        # are also Server.stats()'s, at no cost per message: text's UTF-8
        # bytes beyond its characters are added up apart, only when there
        # are any (text_extra).
        self.data_in = 0
        self.ends_in = 0
        self.text_extra = 0
        self.data_out = 0
        self.ends_out = 0
        # Pongs don't wait in line behind messages: whoever pings looks here.
        self.pongs: deque[bytes] = deque()
        self.close_sent: Close | None = None
        self.close_rcvd: Close | None = None
        self.failure: ProtocolError | None = None
        self.eof = False
        # Nothing more will be read: the peer's Close, EOF or a protocol
        # error was seen, or the connection is lost or closed. (Kept, not
        # computed: every recv() reads it; set where those are, never unset.)
        self.input_ended = False
        # The connection ended without the peer's Close: lost (1006), failed
        # by us (1002, 1007, 1009, 1011...) or aborted. The first cause wins.
        self.lost: Close | None = None
        # The I/O layer closed the socket: nothing more either way.
        self.finished = False
        # Nothing more may be sent: our Close is queued, or the connection
        # is lost or closed. (Kept, not computed: every send reads it.)
        self.output_ended = False
        # The queue lock (see the module's "Locks"): outgoing, the pong
        # count and position, the decision to send our Close, and the
        # ending record (close_sent, close_rcvd, lost, state).
        self._lock = threading.Lock()
        #: Frames the protocol queued itself (pongs, our Close), taken by
        #: :meth:`data_to_send`; the I/O layer reads it (no call on the hot
        #: path) but never changes it.
        self.outgoing: list[bytes] = []
        # Pongs in _out, and where the last one is (past the bound, a newer replaces it).
        self._pongs_queued = 0
        self._last_pong_at = 0
        #: Masking keys: the send-lock holder's (read by the outbox's fast
        #: path, under that lock), and the reader's own (its pongs, the
        #: Close after a protocol error), so that the two never draw from
        #: one pool at once (the same key twice). None on the server side.
        self.mask_keys = random_keys() if side is _CLIENT else None
        self._reader_keys = random_keys() if side is _CLIENT else None
        #: Receiving: the leftover of the last read (a partial header or a
        #: partial control frame; read-only outside, see at_rest()), and the
        #: data frame being streamed.
        self.leftover = b""
        #: Payload bytes of the data frame being received still to come
        #: (read-only outside: a hint for the size of the next read).
        self.remaining = 0
        self._frame_fin = True
        self._frame_mask: bytes | None = None
        self._frame_offset = 0
        #: A data message is being received (read-only outside, see at_rest()).
        self.in_message = False
        self._msg_text = False
        self._msg_size = 0
        self.max_fragments = max_fragments
        self._msg_frames = 0
        self._decoder = None  # made for the first fragmented text message
        self._decoding = False
        self._discard = False
        # The rest of the message being received is dropped (drop_events).
        self._dropping = False
        # permessage-deflate, when negotiated: RSV1 marks compressed messages.
        client = side is _CLIENT
        self.deflate = deflate
        self._compressor = Compressor(deflate, client, compression or PerMessageDeflate()) if deflate else None
        #: A whole message shorter than this may go as one plain frame, not
        #: compressed (see plain_key()): 64 KiB, or the compressor's min_size.
        self.plain_below = 0x10000 if self._compressor is None else min(self._compressor.min_size, 0x10000)
        self._decompressor = Decompressor(deflate, client, max_size) if deflate else None
        self._msg_compressed = False
        self._out_compressed = False
        # Binary data that didn't shrink: skip compressing binary for a while.
        self._skip_binary = 0
        # Sending: whether a message was started and not finished.
        self.sending_message = False
        # answer_close() was called while our message was open: our Close
        # goes right after that message's last frame.
        self._close_answer_due = False
        #: Called for every frame sent (">") and received ("<") with its
        #: header and the first bytes of its (unmasked) payload: for teaching
        #: and debugging (``python -m blockws --trace``).
        self.trace: Callable[[str, FrameHeader, bytes], None] | None = None

    # -- receiving (the parser is the base class's, blockws.parsing) -------

    def receive_eof(self) -> None:
        """The peer closed its side of the TCP connection."""
        self.eof = True
        self.input_ended = True
        self._discard = True
        self.state = _CLOSED

    # -- how the connection ended -------------------------------------------

    def lose(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "connection lost") -> None:
        """The connection ended without the closing handshake (lost, aborted): note why.

        The first cause is kept; after the peer's Close nothing is lost.
        """
        with self._lock:
            if self.lost is None and self.close_rcvd is None:
                self.lost = Close(code, reason)
                self.state = _CLOSED
                self.output_ended = self.input_ended = True

    def fail(self, exc: ProtocolError) -> None:
        """We fail the connection because the peer broke the protocol (our Close is queued)."""
        with self._lock:
            self.lost = Close(exc.close_code, str(exc))
            self.state = _CLOSED
            self.output_ended = self.input_ended = True

    def transport_closed(self, reason: str = "closed before the peer's Close") -> None:
        """The I/O layer closed the socket; without the peer's Close, that is a loss.

        RFC 6455 section 7.1.5: a connection closed without receiving a
        Close has code 1006, even when we sent ours and gave up waiting.
        """
        self.lose(ABNORMAL_CLOSURE, reason)
        with self._lock:
            self.finished = True
            self.state = _CLOSED
            self.output_ended = self.input_ended = True

    @property
    def close_code(self) -> int | None:
        """The peer's close code; else the code of the loss or of our failure; None while open."""
        if self.close_rcvd is not None:
            return self.close_rcvd.code
        return None if self.lost is None else self.lost.code

    @property
    def close_reason(self) -> str | None:
        if self.close_rcvd is not None:
            return self.close_rcvd.reason
        return None if self.lost is None else self.lost.reason

    def closed_error(self) -> ConnectionClosed:
        """The exception for using a connection that ended: ``ConnectionClosedOK``
        when both Close frames (those there are) say the end was normal."""
        sent = self.close_sent
        code = self.close_code
        if code is None:
            code = sent.code if sent is not None else ABNORMAL_CLOSURE
        clean = self.lost is None and is_clean_close(code) and (sent is None or is_clean_close(sent.code))
        cls = ConnectionClosedOK if clean else ConnectionClosedError
        return cls(code, self.close_reason or "")

    def _trace_sent(
        self, opcode: int, fin: bool, payload: bytes | bytearray | memoryview, key: bytes | None, rsv: int = 0
    ) -> None:
        assert self.trace is not None
        size = 2 + (0 if len(payload) < 126 else 2 if len(payload) < 65536 else 8) + (4 if key else 0)
        self.trace(">", FrameHeader(fin, rsv, opcode, len(payload), key, size), bytes(payload[:TRACE_PREVIEW]))

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self.close_sent is None:
                pong = self._encode_control(OP_PONG, payload, self._reader_keys)
                # The send-lock holder may be taking outgoing meanwhile, or
                # queueing our Close (no pong may follow it).
                with self._lock:
                    if self.close_sent is not None:
                        pass
                    elif self._pongs_queued < _MAX_QUEUED_PONGS:
                        self._pongs_queued += 1
                        self._last_pong_at = len(self.outgoing)
                        self.outgoing.append(pong)
                    else:
                        # So many pongs wait that our output must be stuck: answer
                        # only the latest ping (RFC 6455 section 5.5.3), or a peer
                        # that pings and never reads grows this for ever.
                        self.outgoing[self._last_pong_at] = pong
        elif opcode == OP_PONG:
            self.pongs.append(payload)
        else:
            code, reason = parse_close(payload)
            with self._lock:
                self.close_rcvd = Close(code, reason)
                self.input_ended = True
                if self.state is not _CLOSED:
                    self.state = _CLOSED if self.close_sent is not None else _CLOSING
            self.events.append(self.close_rcvd)
            self.data_out -= 1  # held until taken, but no data came in
            self.ends_out -= 1
            # Nothing may follow a Close; whatever does is ignored.
            self._discard = True

    def answer_close(self) -> None:
        """Answer the peer's Close with ours, echoing its code (RFC 6455 section 5.5.1).

        At once, or, while an outgoing message is open, right after its last
        frame (section 5.5.1 lets the current message finish): that frame's
        body from :meth:`encode_data` then carries our Close behind it.
        Nothing happens before the peer's Close or after ours.
        """
        if self.close_rcvd is None or self.close_sent is not None:
            return
        if self.sending_message:
            self._close_answer_due = True
        else:
            self._answer_close()

    def _answer_close(self) -> None:
        rcvd = self.close_rcvd
        assert rcvd is not None
        self._close_answer_due = False
        self.send_close(None if rcvd.code == NO_STATUS_RCVD else rcvd.code)

    # -- the application's side of receiving ---------------------------------

    def next_event(self) -> Event | None:
        """Take the next event, or None when more data is needed.

        Reaching a protocol error (after every event parsed before it) queues
        the Close that fails the connection and raises it.

        Raises:
            ProtocolError: the peer broke the protocol (raised once).
        """
        events = self.events
        if events:
            event = events.popleft()
            self.taken(event)
            return event
        failure = self.failure
        if failure is not None:
            self.failure = None
            # The reader's keys: a sender may be masking a frame now.
            self._send_close(failure.close_code, str(failure)[:120], self._reader_keys)
            raise failure
        return None

    def taken(self, event: Event) -> None:
        """Count out an event taken from :attr:`events` (by :meth:`next_event`,
        or by the I/O layer that pops one itself)."""
        if type(event) is Data:
            self.data_out += len(event.payload)
            self.ends_out += event.fin
        else:
            self.data_out += 1
            self.ends_out += 1

    def put_back(self, event: Event) -> None:
        """Queue a taken event again, first (it wasn't used after all)."""
        self.events.appendleft(event)
        if type(event) is Data:
            self.data_out -= len(event.payload)
            self.ends_out -= event.fin
        else:
            self.data_out -= 1
            self.ends_out -= 1

    def drop_events(self) -> None:
        """Forget the queued events (the application closed: messages in flight are discarded).

        A message that has begun is dropped to its end: its later frames
        aren't delivered either, or they would look like a whole message
        to a reader (another thread's recv() between its pieces).
        """
        self.events.clear()
        self.data_out = self.data_in
        self.ends_out = self.ends_in
        self._dropping = self.in_message

    @property
    def queued(self) -> int:
        """The length of the queued payloads (characters for text), plus one for a Close."""
        return self.data_in - self.data_out

    @property
    def ends(self) -> int:
        """The queued events that end a message or the stream (a Data with ``fin``, a Close)."""
        return self.ends_in - self.ends_out

    def received(self) -> tuple[int, int]:
        """Data messages received so far, and their payload bytes (after
        decompression; text as UTF-8), counted as they are parsed (or read
        into place), whether or not the application took them yet."""
        return self.ends_in, self.data_in + self.text_extra

    @property
    def buffered(self) -> int:
        """Bytes received and not yet parsed (part of a header or of a control frame)."""
        return len(self.leftover)

    # -- sending (the encoders are the base class's, blockws.encoding) ----------

    def send_close(self, code: int | None = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Queue our Close frame (once); no data may be sent after it. Hold the send lock."""
        self._send_close(code, reason, self.mask_keys)

    def _send_close(self, code: int | None, reason: str, keys: RandomKeys | None) -> None:
        # Under the queue lock: the reader (after a protocol error) and the
        # send-lock holder (close(), answer_close()) may both get here: one
        # Close, and no pong queued after it.
        payload = encode_close(code, reason)
        with self._lock:
            if self.close_sent is not None:
                return
            self.close_sent = Close(NO_STATUS_RCVD if code is None else code, reason)
            self.output_ended = True
            self.outgoing.append(self._encode_control(OP_CLOSE, payload, keys))
            if self.state is not _CLOSED:
                self.state = _CLOSED if self.close_rcvd is not None else _CLOSING
