"""The sending half's own state: the send lock, the bytes accepted but not yet written, the open message.

Every write to the socket happens under :attr:`Outbox.lock` (the send
lock), so frames never interleave and the unsent tail of a
frame (:attr:`Outbox.buf`) is always written before anything else. A thread
that sent part of a message (``fin=False``) owns the connection's data
frames until it ends the message; control frames may still go between its
frames. At most ``limit`` bytes are held here (``write_limit``): beyond
that a send with a timeout accepts only what fits, as ``socket.send`` does.
Our own control frames (pongs, a Close, the keepalive's ping) come in only
while less than ``limit`` is held, so the buffer goes past it by one such
frame at most (131 bytes); :func:`~blockws.broadcast` holds at most one
whole message more (see :meth:`Outbox.room_for`).

Locks
-----
The send lock (:attr:`Outbox.lock`) guards everything sent: ``buf``,
``owner`` and ``text`` (the open message), ``fin_due``, the protocol's
sending state (the open message's framing, the compressor, the masking
keys), and the transport's writes with their ``drained`` and ``congested``
counts. Read without it, by design: ``buf``'s length (``output_held``, a
reader's or :meth:`Outbox.done`'s check whether bytes wait: a stale answer
costs one wake-up of the keepalive, or leaves the bytes to the sender that
holds the lock) and ``patient`` (polled by a non-blocking caller that
waits at most :data:`BRIEF_WAIT`). Frames the protocol queues itself (the
reader's pongs) are taken under the protocol's queue lock as well (see
:mod:`blockws.protocol`). :meth:`Outbox.send_small`, the hot path, takes
the send lock only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Union

from . import _accel
from .codes import OP_PING
from .exceptions import ConnectionClosed, ConnectionClosedError
from .link import NOBODY, Waker
from .pings import Pings
from .protocol import Protocol
from .transport import Transport, poll_ms
from .utils import Deadline

__all__ = ["Outbox", "JOIN_BELOW", "EXPIRED", "payload_of"]

# Payloads smaller than this are joined to their header and written in one
# call; larger ones go out with sendmsg (no copy of the payload).
JOIN_BELOW = 16384
# A whole small message framed and written by one C call (plain sockets
# only: send_small() is for those).
_send_message = _accel.send_message if _accel.Counts is not None else None  # (it counts in one)

# The longest a call that must not wait for the peer waits for the send lock
# held by a call that doesn't either (see Outbox.patient).
BRIEF_WAIT = 1.0

# One deadline that has already expired, shared by the steps that must not
# wait: broadcast()'s (a Deadline(0) per step and connection showed in its
# profile), the flushes that write only what fits now, the keepalive's read
# (Inbox.read doesn't count reads against it): it stays read-only.
EXPIRED = Deadline(0)

BytesLike = Union[bytes, bytearray, memoryview]

# Errors that already say what happened: a send path lets them through
# instead of reporting the connection lost.
_NOT_A_LOSS = (ConnectionClosed, TimeoutError, BlockingIOError)


def payload_of(data: str | BytesLike) -> tuple[bool, BytesLike]:
    """(text, bytes to send) for what the application gave :meth:`WebSocket.send`."""
    if isinstance(data, str):
        return True, data.encode("utf-8")
    if isinstance(data, (bytes, bytearray)):
        return False, data
    if isinstance(data, memoryview):
        # Frames count bytes: a view of 4-byte items (array('I')) is 4 times
        # longer than len() says, and a strided one isn't one run of bytes.
        if data.itemsize == 1 and data.ndim == 1 and data.c_contiguous:
            return False, data
        return False, data.cast("B") if data.c_contiguous else memoryview(data.tobytes())
    raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")


def _utf8_length(lead: int) -> int:
    """The length of the UTF-8 sequence that starts with byte ``lead``."""
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


class Outbox:
    """What a connection has accepted to send and not yet given to the kernel.

    Args:
        lose: called when the socket fails; returns the error to raise (the
            connection is lost).
        timeout_error: the error for an operation that ran out of time
            (``BlockingIOError`` in non-blocking mode).
    """

    __slots__ = (
        "_cond",
        "lock",
        "buf",
        "owner",
        "text",
        "limit",
        "patient",
        "waiting",
        "fin_due",
        "link",
        "sent",
        "sent_bytes",
        "_sent_counts",
        "_plain_below",
        "_transport",
        "_proto",
        "_lose",
        "_timeout_error",
    )

    def __init__(
        self,
        transport: Transport,
        protocol: Protocol,
        limit: int,
        lose: Callable[[BaseException], ConnectionClosedError],
        timeout_error: Callable[[str], OSError],
    ) -> None:
        #: The send lock.
        self.lock = threading.Lock()
        # Its condition, where senders wait for another thread's open
        # message: made by the first one that waits (under the lock). A
        # threading.Condition costs ~20,000 instructions to make (it looks
        # for an RLock's methods on the lock: three AttributeErrors), a
        # tenth of a handshake, and most connections never wait.
        self._cond: threading.Condition | None = None
        self.buf = bytearray()
        # The thread whose message is open (sent in part), and its type.
        self.owner: int | None = None
        self.text = False
        self.limit = limit
        # Whether the lock's holder may wait for the peer (a blocking send,
        # or one with a timeout). The others (non-blocking sends, broadcast(),
        # the keepalive) let go within microseconds: a non-blocking caller
        # may wait for them, or it would fail for no reason of the peer's.
        self.patient = False
        # Senders waiting in _cond.wait() for another thread's open message (under the lock).
        self.waiting = 0
        # A server's answer to the peer's Close waits here: TCP's FIN goes
        # once it is written (see KeepAliveLink.answer_close).
        self.fin_due = False
        #: Told when a sender leaves bytes held (set by the connection).
        self.link: Waker = NOBODY
        #: Data messages accepted whole, and their payload bytes (text as
        #: UTF-8, before compression), for Server.stats(); under the send lock.
        self.sent = 0
        self.sent_bytes = 0
        # Those send_message() sent (the C fast path), counted by it.
        self._sent_counts: Any = None if _send_message is None else _accel.Counts()  # type: ignore[misc]
        self._transport = transport
        self._proto = protocol
        # Below this, a whole message is framed and written by one C call
        # (send_small); 0 without the accelerator. (plain_below is fixed
        # at the protocol's creation.)
        self._plain_below = 0 if _send_message is None else min(JOIN_BELOW, protocol.plain_below)
        self._lose = lose
        self._timeout_error = timeout_error

    def unwire(self, lose: Callable[[BaseException], ConnectionClosedError]) -> None:
        """The connection is finished: a ``lose`` that doesn't lead back to it, no link."""
        self._lose = lose
        self.link = NOBODY

    def counts(self) -> tuple[int, int]:
        """Data messages sent (accepted whole), and their payload bytes (text as UTF-8, before compression)."""
        counts = self._sent_counts
        if counts is None:
            return self.sent, self.sent_bytes
        return self.sent + counts.messages, self.sent_bytes + counts.bytes

    # -- the lock ------------------------------------------------------------------

    def acquire(self, deadline: Deadline, text: bool | None) -> None:
        """Take the send lock, waiting while another thread owns an open message
        (``text`` None: for a control frame, which may go between its frames)."""
        timeout = deadline.lock_timeout()
        # Locks take their arguments positionally here and in the inbox:
        # acquire(timeout=t) costs 2.6x acquire(True, t) on 3.11 (counted).
        if not self.lock.acquire(True, timeout) and not (timeout == 0 and self._after_brief_holder()):
            raise self._timeout_error("send")
        me = threading.get_ident()
        while self.owner is not None and self.owner != me and text is not None:
            if self._proto.output_ended:
                return  # closing, closed or lost: the caller's state check raises ConnectionClosed
            # Bounded waits, should a wake-up be missed (see wake_waiters).
            remaining = deadline.remaining()
            cond = self._cond
            if cond is None:
                cond = self._cond = threading.Condition(self.lock)
            self.waiting += 1
            try:
                cond.wait(1.0 if remaining is None else min(remaining, 1.0))
            finally:
                self.waiting -= 1
            if deadline.expired():
                self.release()
                raise self._timeout_error("send")
        self.patient = timeout != 0

    def _after_brief_holder(self) -> bool:
        """Take the lock after a holder that doesn't wait for the peer: True
        once taken, False as soon as a patient holder has it (or after
        BRIEF_WAIT, should a holder stay long, by a descheduled thread)."""
        end = time.monotonic() + BRIEF_WAIT
        while not self.patient:
            left = end - time.monotonic()
            if left <= 0:
                return False
            # In slices: a patient sender may take the lock meanwhile.
            if self.lock.acquire(True, min(left, 0.005)):
                return True
        return False

    def release(self) -> None:
        """Let go of the send lock, then write what a reader queued meanwhile.

        A reader that finds a ping (or the peer's Close) queues the answer
        and tries the lock; while a sender holds it, that try fails and the
        reader leaves the answer to the holder. The holder may have checked
        for it already, so every holder looks again after letting go: the
        answer is queued before the reader's try, which came before this
        release, so it can't be missed.
        """
        self.patient = False
        self.lock.release()
        if self._proto.outgoing:
            self._write_queued()

    def _write_queued(self) -> None:
        """After the send lock was let go: write the frames the protocol queued, if the lock is free."""
        lock = self.lock
        while self._proto.outgoing and lock.acquire(False):
            try:
                if not self.flush(EXPIRED):
                    # The socket is full: not a loop until it drains. What
                    # is held goes with the next send, or the keepalive's.
                    break
            except ConnectionClosed:
                break  # recorded: the next call on the connection reports it
            finally:
                lock.release()

    @contextmanager
    def sending(self, deadline: Deadline, text: bool | None) -> Iterator[None]:
        """Hold the send lock for a frame of a text/binary message (``text``
        None: a control frame) on a connection that may still send; a socket
        error inside means the connection is lost."""
        self.acquire(deadline, text)
        try:
            self.check_open()
            yield
        except _NOT_A_LOSS:
            raise
        except OSError as exc:
            self.notify_waiters()  # senders waiting for this thread's message: it won't end
            raise self._lose(exc) from exc
        finally:
            self.done()

    def wake_waiters(self) -> None:
        """The connection ended: senders waiting for another thread's open message stop waiting.

        Without the lock free now, its holder is a sender, which finds the
        connection ended (and notifies, in :meth:`sending`); the waits are
        bounded besides.
        """
        lock = self.lock
        if self.waiting and lock.acquire(False):
            try:
                self.notify_waiters()
            finally:
                lock.release()

    def notify_waiters(self) -> None:
        """Wake the senders waiting for another thread's open message; hold the send lock.

        Only when there are some: ``Condition.notify_all()`` costs about as
        much with none (a handshake's close used to pay for two).
        """
        if self.waiting and self._cond is not None:
            self._cond.notify_all()

    def done(self) -> None:
        """Let go of the send lock taken by :meth:`sending` or :meth:`offer_whole`."""
        self.release()
        if self.buf:
            # Accepted bytes wait here: the keepalive writes them when
            # the socket can take them, whether or not we call again.
            wake = self.link.wake
            if wake is not None:
                wake()

    def check_open(self) -> None:
        """Raise ConnectionClosed unless data may still be sent; hold the send lock."""
        proto = self._proto
        if proto.output_ended:
            if (self.buf or proto.has_output) and proto.lost is None and not proto.finished:
                # Our answer to the peer's Close (queued by a reader that
                # couldn't take the send lock), or what is held before it:
                # this sender writes what it can, as the keepalive would.
                try:
                    self.flush(EXPIRED)
                except ConnectionClosed:
                    pass
            raise proto.closed_error()

    def check_message_type(self, text: bool) -> None:
        if self.owner is not None and self.text != text:
            kind = "text" if self.text else "binary"
            raise TypeError(f"a {kind} message is open: finish it with the same type")

    def note_message(self, text: bool, fin: bool) -> None:
        """Track the open message: its owner thread waits for nobody until it ends."""
        if fin:
            if self.owner is not None:
                self.owner = None
                self.notify_waiters()
        elif self.owner is None:
            self.owner = threading.get_ident()
            self.text = text

    # -- writing ---------------------------------------------------------------------

    def send_small(self, payload: bytes, text: bool) -> bool:
        """Write a whole small message, blocking: the common case, kept to one
        lock and one system call. False (nothing done) unless nothing is open
        or held before it and the connection may send: take the general path.
        """
        self.lock.acquire()
        self.patient = True  # send_whole() waits for the peer
        try:
            proto = self._proto
            n = len(payload)
            if n < JOIN_BELOW and self.owner is None and not self.buf and not proto.outgoing and not proto.output_ended:
                transport = self._transport
                try:
                    # proto.plain_key(n), written out: a call fewer per message
                    # (_plain_below: JOIN_BELOW and the protocol's plain_below).
                    if n >= self._plain_below or proto.trace is not None or proto.sending_message:
                        # Counted first, as send_message() counts (see write_whole).
                        self.sent += 1
                        self.sent_bytes += n
                        try:
                            transport.send_whole(proto.encode_message(payload, text))
                        except BaseException:
                            self.sent -= 1
                            self.sent_bytes -= n
                            raise
                    else:
                        # Framed, written and counted in one step (the C accelerator's).
                        keys = proto.mask_keys
                        key = b"" if keys is None else next(keys)
                        rest = _send_message(transport.sock.fileno(), payload, text, key, self._sent_counts)  # type: ignore[misc]  # (_plain_below is 0 without it)
                        if rest is not None:
                            transport.send_rest(rest)
                except OSError as exc:
                    raise self._lose(exc) from exc
                return True
            return False
        finally:
            # release(), written out: a call fewer on the hot path.
            self.patient = False
            self.lock.release()
            if self._proto.outgoing:
                self._write_queued()

    def queue(self, *frames: BytesLike) -> None:
        """Append whole frames to the buffer, after the protocol's own (pongs, Close).

        The protocol's frames move here only while the buffer is under
        ``limit``, and at most one past it: the rest stay with the protocol,
        where a newer pong replaces an older one, so a peer that pings and
        never reads can't make the buffer grow.
        """
        buf = self.buf
        if self._proto.outgoing and (len(buf) < self.limit or not buf):
            buf += b"".join(self._proto.data_to_send(max(self.limit - len(buf), 1)))
        for frame in frames:
            buf += frame

    def flush(self, deadline: Deadline) -> bool:
        """Write the buffer and the protocol's own frames; hold the send lock.

        Returns True when everything was written; raises ConnectionClosedError
        if the socket fails.
        """
        buf = self.buf
        proto = self._proto
        send_some = self._transport.send_some
        try:
            while True:
                self.queue()
                while buf:
                    n = send_some(buf, deadline)
                    if not n:
                        return False
                    del buf[:n]
                if not proto.outgoing:
                    if self.fin_due and proto.close_sent is not None:
                        # Whichever thread wrote the last byte (the keepalive, or
                        # a sender that found the connection closing) sends it.
                        self.fin_due = False
                        self._transport.half_close()
                    return True
        except OSError as exc:
            raise self._lose(exc) from exc

    def flush_when_free(self, deadline: Deadline) -> None:
        """Flush once the send lock is free, before the deadline (``Deadline(0)``:
        only if it is free now; the sender holding it writes what is queued)."""
        if self.lock.acquire(True, deadline.lock_timeout()):
            self.patient = deadline.lock_timeout() != 0
            try:
                self.flush(deadline)
            finally:
                self.release()

    def flush_while_waiting(self, deadline: Deadline) -> None:
        """Write what a partial send left here while a reader waits to read.

        Nothing else would write it once the senders have returned, and the
        peer may be waiting for it before it answers what the reader waits
        for. Returns when there is something to read (or a sender is
        writing, or no progress can be made); TimeoutError at the deadline.
        """
        transport = self._transport
        writable = False
        while self.buf:
            if not self.lock.acquire(False):
                return  # a sender holds the connection: it writes them
            try:
                held = len(self.buf)
                if self.flush(EXPIRED) or writable and len(self.buf) == held:
                    return  # all written, or writable without progress (TLS): don't spin
            finally:
                self.release()
            if transport.buffered():
                return
            readable, writable = transport.waiter.either(poll_ms(deadline))
            if readable:
                return  # (or an error that the read will report)
            if not writable:
                raise TimeoutError

    def send(self, data: str | BytesLike, fin: bool, timeout: float | None) -> int:
        """:meth:`WebSocket.send <blockws.WebSocket.send>`'s general path:
        the length of the prefix of ``data`` accepted."""
        text, payload = payload_of(data)
        deadline = Deadline(timeout)
        with self.sending(deadline, text):
            self.check_message_type(text)
            # Counted in characters for str, in bytes for the rest (a view
            # of wider items included).
            whole = len(data) if text else len(payload)
            if timeout is None:
                self.write_whole(payload, text, fin, deadline)
                return whole
            done = self.write_partial(payload, text, fin, deadline)
            if done == len(payload):
                return whole
            return len(bytes(payload[:done]).decode("utf-8")) if text else done

    def sendall(self, data: str | BytesLike, timeout: float) -> None:
        """:meth:`WebSocket.sendall <blockws.WebSocket.sendall>` with a timeout."""
        text, payload = payload_of(data)
        deadline = Deadline(timeout)
        view = memoryview(payload)
        done = 0
        try:
            with self.sending(deadline, text):
                self.check_message_type(text)
                while True:
                    done += self.write_partial(view[done:], text, True, deadline)
                    if done == len(view):
                        return
        except (TimeoutError, BlockingIOError) as exc:
            # Unlike socket.sendall, say how much was accepted (nothing, when
            # the time ran out waiting for another thread's message), so the
            # caller can finish the message with the rest.
            exc.accepted = len(str(view[:done], "utf-8")) if text else done  # type: ignore[union-attr]
            raise

    # -- for the keepalive: never waiting for a sender ------------------------------------

    def flush_held(self) -> bool:
        """Write bytes a partial send left, now that the socket is writable.

        False when a sender holds the connection (it writes them, and wakes
        the keepalive if it leaves some) or nothing could be written.
        """
        if not self.lock.acquire(False):
            return False
        try:
            held = len(self.buf)
            self.flush(EXPIRED)
            return len(self.buf) < held
        except ConnectionClosed:
            return False
        finally:
            self.release()

    def ping_now(self, payload: bytes, pings: Pings) -> bool:
        """Queue a Ping (noted in ``pings``, nobody waits for its Pong) without
        waiting; False if a sender holds the connection or it is closing."""
        if not self.lock.acquire(False):
            return False
        try:
            if self._proto.output_ended:
                self.check_open()  # raises
            pings.expect_unwaited(payload)
            frame = self._proto.encode_control(OP_PING, payload)
            if len(self.buf) >= self.limit:
                # ``limit`` bytes held already: it waits with the protocol's
                # own frames, and moves here when there is room (the buffer
                # goes past ``limit`` by one control frame at most).
                self._proto.hold(frame)
            else:
                self.offer(frame)
            return True
        except ConnectionClosed:
            return False
        finally:
            self.release()

    def answer_close(self) -> bool:
        """Answer the peer's Close now, if we haven't closed; False when a
        sender holds the connection (try again later).

        An open message is finished first (RFC 6455 section 5.5.1): our
        Close then follows its last frame.
        """
        if not self.lock.acquire(False):
            return False
        try:
            proto = self._proto
            if proto.close_rcvd is not None and not proto.output_ended:
                proto.answer_close()
                # Once our Close is written the closing handshake is done,
                # and the server closes TCP first (RFC 6455 section 7.1.1):
                # the client isn't kept waiting for a handler that may run
                # for long. Its read side stays: recv() returns what came
                # before the Close, then None; the socket goes with close().
                # (Our Close may wait for an open message's last frame: the FIN after it.)
                self.fin_due = not proto._client
                self.flush(EXPIRED)
        except ConnectionClosed:
            pass
        finally:
            self.release()
        return True

    # -- broadcast: a whole message now, or nothing -------------------------------------

    def offer_whole(self, payload: bytes, text: bool, shared: dict[object, bytes]) -> bool | None:
        """:func:`~blockws.broadcast`'s part: the whole message now, or nothing, never waiting for the peer.

        False: it doesn't fit now (or another thread is in a send that may
        wait for the peer); None: the connection is closed or closing.
        """
        # sending() written out: broadcast() calls this once per connection,
        # and its generator-based context manager, with a Deadline per step,
        # was most of the Python work of a delivery.
        try:
            self.acquire(EXPIRED, text)
        except OSError:  # TimeoutError, BlockingIOError: the send lock is taken
            return False
        try:
            self.check_open()
            if not self.room_for(len(payload)):
                return False
            frame = self._proto.encode_shared(payload, text, shared)
            # Counted first, as write_whole() counts.
            self.sent += 1
            self.sent_bytes += len(payload)
            try:
                self.offer(frame)
            except BaseException:
                self.sent -= 1
                self.sent_bytes -= len(payload)
                raise
            return True
        except ConnectionClosed:
            return None
        except (TimeoutError, BlockingIOError):
            return False
        except OSError as exc:  # as in sending(): a socket error is a loss
            self._lose(exc)
            return None
        finally:
            self.done()

    def room_for(self, size: int) -> bool:
        """Whether a whole message of ``size`` bytes fits now; hold the send lock.

        What the kernel takes now is written first. A message fits when
        nothing is held, or when it fits under ``limit`` with what is held
        (counted at its largest: deflate may grow incompressible data a
        little). So at most one message beyond ``limit`` waits here, however
        slow the peer.
        """
        if self.owner is not None:
            return False  # an open message: nothing may go between its frames
        if not self.buf and not self._proto.outgoing:
            return True  # the common case: nothing held, nothing to write first
        self.flush(EXPIRED)
        return not self.buf or len(self.buf) + size + size // 1000 + 64 <= self.limit

    def offer(self, frame: bytes) -> None:
        """Write what the kernel takes of a whole frame now and hold the rest; hold the send lock."""
        n = 0
        if not self.buf and not self._proto.outgoing:
            try:
                n = self._transport.send_some(frame, EXPIRED)
            except OSError as exc:
                raise self._lose(exc) from exc
        if n < len(frame):
            self.buf += memoryview(frame)[n:]
            self.flush(EXPIRED)

    # -- a message's frames ------------------------------------------------------------

    def write_whole(self, payload: BytesLike, text: bool, fin: bool, deadline: Deadline) -> None:
        """Write one frame of ``payload``, blocking; hold the send lock."""
        header, body = self._proto.encode_data(payload, text, fin)
        self.note_message(text, fin)
        if self.buf or self._proto.has_output:
            # What is held goes first; the frame itself streams from the
            # caller's buffer, not copied here past write_limit.
            self.flush(deadline)  # no deadline: returns once all is written
        # Counted before the bytes can reach the peer, and undone if they
        # don't go: a thread that saw the peer's answer and then asks
        # Server.stats() finds them (it may run while this one is still here).
        self.sent_bytes += len(payload)
        self.sent += fin
        try:
            if len(body) < JOIN_BELOW:
                self._transport.send_all(header + body, deadline)
            else:
                self._transport.send_frame(header, body, deadline)
        except BaseException:
            self.sent_bytes -= len(payload)
            self.sent -= fin
            raise

    def write_partial(self, payload: BytesLike, text: bool, fin: bool, deadline: Deadline) -> int:
        """Accept what fits now (after waiting until the deadline for some room); return the bytes accepted."""
        limit = self.limit
        buf = self.buf
        view = memoryview(payload)
        # Room for at least the first character: a text frame can't carry
        # part of one, and accepting nothing must raise, as socket.send does.
        need = _utf8_length(view[0]) if text and view else 1
        # Wait until there is room in user space, as socket.send waits for
        # room in the kernel.
        writable = self._transport.waiter.writable
        while True:
            self.flush(EXPIRED)
            if limit - len(buf) >= need or not buf:
                break
            if deadline.expired() or not writable(poll_ms(deadline)):
                raise self._timeout_error("send")
        total = len(view)
        done = 0
        while True:
            # The first piece always fits (a write_limit below 4 bytes must
            # still take a 4-byte character when nothing is held).
            room = limit - len(buf) if done else max(limit - len(buf), need)
            if room <= 0:
                break
            cut = min(done + room, total)
            if text and cut < total:
                while cut > done and (view[cut] & 0xC0) == 0x80:
                    cut -= 1  # never split a character between frames
                if cut == done:
                    break
            last = cut == total
            header, body = self._proto.encode_data(view[done:cut], text, fin and last)
            self.note_message(text, fin and last)
            self.queue(header, body)
            self.sent_bytes += cut - done
            self.sent += fin and last
            done = cut
            self.flush(EXPIRED)
            if last:
                break
        return done
