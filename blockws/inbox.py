"""The receiving half's own state: the reader lock, reading into the protocol, the messages received.

The twin of :mod:`blockws.outbox`. One thread at a time holds the reader
lock (:attr:`Inbox.lock`): the application in ``recv()``, ``recv_into()``,
``recv_fragments()`` or ``ping()``, the closing handshake, or the keepalive
thread reading what arrived while the application is busy. Whoever holds it
reads from the transport with a deadline and feeds the protocol
(:meth:`Inbox.read`); the events the protocol queues wait there, in order,
for the application, and what they hold is counted where they are queued
and taken, so that :meth:`Inbox.held` and :meth:`Inbox.pending` are O(1)
from any thread. A message that comes in pieces is put together in an
:class:`~blockws.assembly.Assembly`, which also keeps what a call that timed
out had received, and which ``recv_fragments()`` iterator owns the message.

Pongs found by any reader wake the threads waiting in
:meth:`WebSocket.ping <blockws.WebSocket.ping>`; a reader that lets go wakes
the keepalive if it stepped aside meanwhile (:attr:`Inbox.link`).

Locks
-----
The reader lock (:attr:`Inbox.lock`) guards everything received: the
protocol's parser and the events it queued (with their counts ``queued``
and ``ends``, and the pongs found), the :class:`~blockws.assembly.Assembly`,
the transport's reads, and here ``calls``, ``last_received`` and
``close_taken`` (``calls`` is counted once the lock is held: two threads'
``+= 1`` would lose one). Read without it, by design: :meth:`Inbox.held`
and :meth:`Inbox.pending` (sums of counters, each read whole: a value a
moment old, which backpressure and ``select()`` loops tolerate), and the
keepalive's samples (``last_received``, ``calls``, ``close_taken``: one
writer, a stale value only delays a ping or a grace by one look).
A reader may take the send lock (to answer pings) and the protocol's queue
lock; never the other way round. The hot path, a whole message already
parsed, takes the reader lock only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Union

from . import _accel
from .assembly import ABANDONED, Assembly
from .exceptions import ConnectionClosed, ConnectionClosedError, ProtocolError
from .link import NOBODY, Waker
from .outbox import EXPIRED, Outbox
from .pings import Ping, Pings
from .placing import BUILD_FROM, Placing, writable
from .protocol import Close, Data, Protocol
from .transport import LARGE_READ_SIZE, READ_SIZE, Transport
from .utils import Deadline

__all__ = ["Inbox"]

Message = Union[str, bytes]

_FOREVER = Deadline(None)
# Reads one non-blocking call may make while the kernel has data: enough to
# take a large message already there, bounded against a flood.
_NONBLOCKING_READS = 16


class Inbox(Placing):
    """What a connection has received and the application hasn't taken yet, and who reads next.

    Args:
        lose: called when the socket fails; returns the error to raise (the
            connection is lost).
        fail: called when the peer broke the protocol, holding the reader
            lock; ends the connection and returns the error to raise.
        timeout_error: the error for an operation that ran out of time
            (``BlockingIOError`` in non-blocking mode).
    """

    __slots__ = (
        "lock",
        "link",
        "timeout",
        "calls",
        "close_taken",
        "last_received",
        "assembly",
        "_transport",
        "_proto",
        "_out",
        "_pings",
        "_whole",
        "_masked",
        "_max_size",
        "_whole_counts",
        "_lose",
        "_fail",
        "_timeout_error",
    )

    def __init__(
        self,
        transport: Transport,
        protocol: Protocol,
        outbox: Outbox,
        pings: Pings,
        lose: Callable[[BaseException | None], ConnectionClosedError],
        fail: Callable[[ProtocolError], ConnectionClosedError],
        timeout_error: Callable[[str], OSError],
    ) -> None:
        #: The reader lock: whoever holds it reads and feeds the protocol.
        self.lock = threading.Lock()
        #: Told when the reader lets go, if it asked (set by the connection).
        self.link: Waker = NOBODY
        #: The connection's timeout, for recv() (kept by ``settimeout()``;
        #: 0: non-blocking mode).
        self.timeout: float | None = None
        #: How often the application called ``recv()`` (or its siblings).
        self.calls = 0
        #: The application took the peer's Close (``recv()`` returned None):
        #: the keepalive answers a Close only for one that stopped reading.
        self.close_taken = False
        #: When something last arrived (``time.monotonic()``).
        self.last_received = time.monotonic()
        self.assembly = Assembly()
        self._transport = transport
        self._proto = protocol
        self._out = outbox
        self._pings = pings
        self._lose = lose
        self._fail = fail
        self._timeout_error = timeout_error
        # Blocking reads of whole small messages in one step (see recv):
        # a plain socket in blocking mode, with the C accelerator.
        self._whole: Callable[[int, bool, int, Any], Message | tuple[bytes]] | None = (
            None if transport.nonblocking or _accel.Counts is None else _accel.recv_one
        )
        self._masked = not protocol._client
        self._max_size = -1 if protocol.max_size is None else protocol.max_size
        # Messages recv() took whole from recv_one (the parser never saw them), and
        # their payload bytes: counted by recv_one itself.
        self._whole_counts: Any = None if self._whole is None else _accel.Counts()  # type: ignore[misc]

    def unwire(
        self,
        lose: Callable[[BaseException | None], ConnectionClosedError],
        fail: Callable[[ProtocolError], ConnectionClosedError],
    ) -> None:
        """The connection is finished: new callbacks that don't lead back to it, no link."""
        self._lose = lose
        self._fail = fail
        self.link = NOBODY

    # -- what is held ----------------------------------------------------------

    def held(self) -> int:
        """Every byte read from the kernel and not yet returned by ``recv()`` (for backpressure)."""
        proto = self._proto
        # (proto.buffered and proto.queued written out: the keepalive asks twice per ping)
        total = len(proto.leftover) + self.assembly.size + proto.data_in - proto.data_out
        if proto.failure is not None:
            total += 1
        transport = self._transport
        if transport.tls:  # (else buffered() is 0: a call fewer, twice per keepalive ping)
            total += transport.buffered()
        return total

    def pending(self) -> int:
        """What :meth:`WebSocket.pending <blockws.WebSocket.pending>` says: :meth:`held`
        when ``recv()`` can return without the kernel, else what TLS holds."""
        proto = self._proto
        if proto.ends or proto.failure is not None:
            return self.held()
        return self._transport.buffered()

    def counts(self) -> tuple[int, int]:
        """Data messages received, and their payload bytes (after decompression, text as UTF-8).

        Counted by the parser as they arrive, where their length is known,
        with the counts that keep track of what is queued: no work of its
        own per message; those :meth:`recv` took whole from ``recv_one``, here. A
        message still queued (or dropped by ``close()``) counts.
        """
        messages, size = self._proto.received()
        counts = self._whole_counts
        if counts is not None:
            messages += counts.messages
            size += counts.bytes
        return messages, size

    # -- the reader lock ---------------------------------------------------------

    def acquire(self, deadline: Deadline) -> None:
        if not self.lock.acquire(True, deadline.lock_timeout()):
            raise self._timeout_error("recv")

    def release(self) -> None:
        """Let go of the reader lock; wake whoever waits for a reader to leave."""
        self.lock.release()
        if self._pings.waiting or self.link.wanted:
            self._wake_waiters()

    def _wake_waiters(self) -> None:
        """After the reader lock was let go: wake whoever waited for the reader to leave."""
        if self._pings.waiting:
            self._pings.wake_waiters()  # they may have to read for themselves now
        link = self.link
        if link.wanted:
            # The keepalive thread stepped aside while we were reading.
            link.wanted = False
            wake = link.wake
            if wake is not None:
                wake()

    @property
    def busy(self) -> bool:
        """A thread holds the reader lock."""
        return self.lock.locked()

    def claim(self, below: int) -> bool:
        """Take the reader lock without waiting, if fewer than ``below`` bytes are held.

        For the keepalive: then :meth:`take_arrived`.
        """
        return self.held() < below and self.lock.acquire(False)

    def take_arrived(self) -> None:
        """Read what has arrived, without waiting, and let go of the reader lock (:meth:`claim`).

        Pings get their pongs, pongs and the peer's Close are noted;
        messages stay queued, in order, for the application.
        """
        try:
            self.read(EXPIRED)
        except (TimeoutError, BlockingIOError, ConnectionClosed):
            pass
        finally:
            self.release()

    # -- reading -----------------------------------------------------------------

    def read(self, deadline: Deadline, into: memoryview | None = None) -> int:
        """Read once and feed the protocol; hold the reader lock.

        With ``into`` (at most :meth:`Protocol.payload_to_place
        <blockws.protocol.Protocol.payload_to_place>` bytes), read payload
        straight into it instead and return how many bytes came (0 at EOF);
        the caller tells the protocol (``payload_placed``).

        The deadline holds even while data keeps arriving (a peer that floods
        pings never lets the socket go quiet): past it no further read is
        made, except that a non-blocking call may go on while the kernel has
        data, a few reads at most. The shared :data:`~blockws.outbox.EXPIRED`
        is one read of what the kernel has (the keepalive's), not counted.
        """
        proto = self._proto
        if proto.eof:
            return 0
        if deadline.when is not None and deadline is not EXPIRED:
            if deadline.reads and deadline.expired() and (self.timeout != 0 or deadline.reads >= _NONBLOCKING_READS):
                raise self._timeout_error("recv")
            deadline.reads += 1
        try:
            if self._out.buf:
                self._out.flush_while_waiting(deadline)
            if into is not None:
                n = self._transport.recv_into(into, deadline)
            else:
                size = proto.remaining
                if size <= READ_SIZE:
                    size = READ_SIZE
                elif size > LARGE_READ_SIZE:
                    size = LARGE_READ_SIZE
                data = self._transport.recv_some(size, deadline)
        except TimeoutError:
            raise self._timeout_error("recv") from None
        except OSError as exc:
            raise self._lose(exc) from exc
        self.last_received = time.monotonic()
        if into is not None:
            if not n:
                proto.receive_eof()
            return n
        self._feed(data)
        return 0

    def _feed(self, data: bytes) -> None:
        """Give the protocol what was read (b"": the peer's EOF); note pongs, send pings' answers."""
        proto = self._proto
        if data:
            proto.receive_data(data)
        else:
            proto.receive_eof()
        if proto.pongs:
            self._pings.answered(proto.pongs)
        if proto.outgoing:
            self._out.flush_when_free(EXPIRED)  # answer pings now, or the sender does

    def next_event(self, deadline: Deadline) -> Data | None:
        """The next data piece, reading as needed; None once the peer closed; hold the reader lock."""
        proto = self._proto
        while True:
            try:
                event = proto.next_event()
            except ProtocolError as exc:
                raise self._fail(exc) from exc
            if event is None:
                if proto.close_rcvd is not None:
                    return None  # the end of the peer's stream, every time
                if proto.eof or proto.finished or proto.lost is not None:
                    raise self._lose(None)
                self.read(deadline)
                continue
            if type(event) is Data:
                return event
            assert type(event) is Close
            self.close_taken = True
            return None

    # -- receiving messages --------------------------------------------------------

    def _enter(self, timeout: float | None) -> Deadline:
        """Take the reader lock for a call with ``timeout`` and count the call; its deadline.

        Counted under the lock: two readers' increments both count.
        """
        if timeout is None:
            deadline = _FOREVER
            self.lock.acquire()
        else:
            deadline = Deadline(timeout)
            self.acquire(deadline)
        self.calls += 1
        return deadline

    def recv(self) -> Message | None:
        """:meth:`WebSocket.recv <blockws.WebSocket.recv>`, with the connection's timeout (:attr:`timeout`)."""
        # _enter() and release(), written out: calls fewer on the hot path.
        timeout = self.timeout
        if timeout is None:
            deadline = _FOREVER
            self.lock.acquire()
            whole = self._whole
        else:
            deadline = Deadline(timeout)
            self.acquire(deadline)
            whole = None  # (recv_one waits for ever)
        self.calls += 1
        try:
            proto = self._proto
            assembly = self.assembly
            if (
                whole is not None
                and not proto.events
                and not proto.input_ended
                and not assembly.parts
                and assembly.reader is None
                and not self._out.buf
                # proto.at_rest(), written out: a call fewer per message.
                and not proto.in_message
                and not proto.leftover
                and proto.trace is None
            ):
                # The common case, blocking, nothing received yet: one read,
                # and the message when it came whole in it, as one simple frame
                # (_accel.recv_one); else the protocol takes the bytes read.
                try:
                    # fileno() each time, as socket.recv() reads it: -1 once closed.
                    got = whole(self._transport.sock.fileno(), self._masked, self._max_size, self._whole_counts)
                except OSError as exc:
                    raise self._lose(exc) from exc
                self.last_received = time.monotonic()
                if type(got) is not tuple:
                    return got  # type: ignore[return-value]  # the message
                self._feed(got[0])
            return self._receive(deadline)
        finally:
            self.lock.release()
            if self._pings.waiting or self.link.wanted:
                self._wake_waiters()

    def _receive(self, deadline: Deadline) -> Message | None:
        """recv()'s general case: the next message, read and put together as needed; hold the reader lock."""
        assembly = self.assembly
        if assembly.reader is not None:
            self._skip_abandoned(deadline)
        parts = assembly.parts
        proto = self._proto
        events = proto.events
        while True:
            if events:
                if not parts:
                    first = events[0]
                    if type(first) is Data and first.fin:
                        # A whole message is already parsed (one read brought several).
                        events.popleft()
                        payload = first.payload
                        proto.data_out += len(payload)
                        proto.ends_out += 1
                        return payload
            elif not proto.input_ended:
                if proto.remaining >= BUILD_FROM:
                    size = self._size_to_build()
                    if size:
                        return self._receive_built(size, deadline)
                self.read(deadline)  # nothing parsed yet and nothing ended: read
                continue
            event = self.next_event(deadline)
            if event is None:
                return None
            if event.fin:
                return assembly.complete(event.payload)
            assembly.add(event.payload)

    def recv_into(self, buffer: Any, nbytes: int, timeout: float | None) -> tuple[int, bool] | None:
        """:meth:`WebSocket.recv_into <blockws.WebSocket.recv_into>`: the message's
        length and whether it was text, or None at the end."""
        view = writable(buffer, nbytes)
        deadline = self._enter(timeout)
        try:
            if self.assembly.reader is not None:
                self._skip_abandoned(deadline)
            return self._receive_into(view, deadline)
        finally:
            self.release()

    def fragments(self, gettimeout: Callable[[], float | None]) -> Iterator[Message]:
        """:meth:`WebSocket.recv_fragments <blockws.WebSocket.recv_fragments>`; each
        piece is fetched with the timeout the connection has then."""
        token = object()
        assembly = self.assembly
        try:
            while True:
                deadline = self._enter(gettimeout())
                try:
                    if assembly.reader is not None and assembly.reader is not token:
                        self._skip_abandoned(deadline)  # another iterator's message
                    # Pieces kept by a recv() that timed out go first.
                    piece = assembly.take()
                    fin = False
                    if piece is None:
                        event = self.next_event(deadline)
                        if event is None:
                            assembly.reader = None
                            return
                        piece, fin = event.payload, event.fin
                    assembly.reader = None if fin else token
                finally:
                    self.release()
                yield piece
                if fin:
                    return
                if assembly.reader is not token:
                    raise RuntimeError("the rest of this message was discarded: recv() was called before it was read")
        finally:
            if assembly.reader is token:
                assembly.reader = ABANDONED  # left part-way: skip the rest

    def _skip_abandoned(self, deadline: Deadline) -> None:
        """Discard the rest of a message that recv_fragments() left part-way; hold the reader lock.

        A timeout keeps the skipping state, so the next call goes on with it.
        """
        assembly = self.assembly
        assembly.reader = ABANDONED
        while True:
            event = self.next_event(deadline)
            if event is None or event.fin:
                assembly.reader = None
                return

    # -- pongs and the peer's Close ----------------------------------------------------

    def await_pong(self, ping: Ping, deadline: Deadline) -> None:
        """Wait for ``ping``'s Pong: read for it, or let the thread that reads find it.

        Raises:
            ConnectionClosed: the peer's Close came first.
        """
        wake = ping.waiter
        proto = self._proto
        while ping.round_trip is None:
            # Cleared before the try: a reader that lets go after a failed
            # try sets it (release() wakes the waiters), and that wake-up
            # must not be cleared away (the wait would outlive the reader).
            wake.clear()
            if self.lock.acquire(False):
                try:
                    if ping.round_trip is None:
                        self.read(deadline)
                finally:
                    self.release()
            else:
                if ping.round_trip is None and not wake.wait(deadline.remaining()):
                    raise self._timeout_error("ping")
            if proto.close_rcvd is not None and ping.round_trip is None:
                raise proto.closed_error()

    def await_close(self, deadline: Deadline, reader: bool) -> None:
        """Our Close is written: read until the peer's (or TCP's end), dropping messages.

        The server stops at the peer's Close (it closes TCP first); the
        client reads on until the server closes TCP (RFC 6455 section
        7.1.1). ``reader``: the caller holds the reader lock. If another
        thread reads, wait for it to see the peer's Close.
        """
        proto = self._proto
        # Another thread receiving lets go of the reader lock once its recv()
        # returns (at the peer's Close, at the latest): waited for here, up to
        # the deadline; past it there is nothing more to wait for.
        if reader or self.lock.acquire(True, deadline.lock_timeout()):
            # Messages arriving from now on are dropped (those queued before
            # the peer's Close, if it came first, stay for recv()).
            dropping = proto.close_rcvd is None and proto.failure is None
            try:
                client = proto._client
                while not proto.eof and not proto.finished:
                    if not client and proto.close_rcvd is not None:
                        break  # the closing handshake is done: the server closes first
                    if not client and proto.lost is not None:
                        self._transport.linger(deadline)  # we failed the connection
                        break
                    if proto.close_rcvd is None and proto.failure is None:
                        # Drop messages still in flight: the caller chose to close.
                        # (With the pieces another thread's recv() gathered of one.)
                        proto.drop_events()
                        self.assembly.clear()
                    try:
                        self.read(deadline)
                    except (TimeoutError, BlockingIOError, ConnectionClosed):
                        break
                if dropping and proto.failure is None:
                    # What came with the peer's Close in the last read: another
                    # thread's recv() would take it, after a gap (those
                    # dropped before). recv() returns None.
                    proto.drop_events()
                    self.assembly.clear()
            finally:
                if not reader:
                    self.lock.release()
