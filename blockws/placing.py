"""Messages read into their final place: the caller's buffer (``recv_into()``) or the bytes ``recv()`` returns.

A base of :class:`~blockws.inbox.Inbox` (which sets up its state and holds
its reader lock around all of this). Pieces the protocol parsed already are
copied in; when none is left and the protocol says the next bytes from the
peer are payload that needs no work (:meth:`Protocol.payload_to_place
<blockws.protocol.Protocol.payload_to_place>`), they are read from the
kernel straight into place (unmasked there, for a server). A large binary
message received with ``recv()`` goes into a bytes object lent as a buffer
(the C accelerator's ``Builder``): no pieces, no join. A message that
doesn't fit raises :class:`~blockws.BufferTooSmall` and stays receivable:
what was written goes back to the :class:`~blockws.assembly.Assembly`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import _accel
from .exceptions import BufferTooSmall
from .protocol import Data
from .utils import Deadline

if TYPE_CHECKING:
    from .assembly import Assembly
    from .protocol import Protocol

__all__ = ["Placing", "BUILD_FROM", "BUILD_MAX", "writable"]


# A binary message whose payload still to come is at least BUILD_FROM bytes
# (and whose whole size, at most BUILD_MAX, the headers told) is read from
# the kernel into the bytes that recv() returns, unmasked there: no pieces
# and no join (only with the C accelerator, whose Builder lends a bytes
# object's memory). BUILD_MAX bounds what a peer's header alone makes us
# allocate when max_size is None.
BUILD_FROM = 64 * 1024
BUILD_MAX = 64 * 2**20


def writable(buffer: Any, nbytes: int) -> memoryview:
    """The bytes of ``buffer`` that :meth:`WebSocket.recv_into` may fill, as a view of unsigned bytes."""
    view = memoryview(buffer)
    if view.readonly:
        raise TypeError(f"recv_into() needs a writable buffer, not {type(buffer).__name__}")
    if view.format != "B" or view.ndim != 1:
        if not view.c_contiguous:
            raise TypeError("recv_into() needs a contiguous buffer")
        view = view.cast("B")
    elif not view.c_contiguous:
        raise TypeError("recv_into() needs a contiguous buffer")
    if nbytes < 0:
        raise ValueError("negative buffersize in recv_into")
    if nbytes:
        if nbytes > len(view):
            raise ValueError("buffer too small for requested bytes")
        view = view[:nbytes]
    return view


class Placing:
    """``recv_into()`` and built reads; the state is :class:`~blockws.inbox.Inbox`'s."""

    __slots__ = ()

    # Set by Inbox.__init__ (see there).
    _proto: Protocol
    assembly: Assembly

    def read(self, deadline: Deadline, into: memoryview | None = None) -> int:
        raise NotImplementedError  # the inbox's: read once into the protocol (or into place)

    def next_event(self, deadline: Deadline) -> Data | None:
        raise NotImplementedError  # the inbox's

    def _size_to_build(self) -> int:
        """The size of the large binary message now arriving, if recv() may
        read it into place (:meth:`_receive_built`); else 0."""
        proto = self._proto
        if _accel.Builder is None or proto.payload_to_place() < BUILD_FROM:
            return 0
        announced = proto.announced_size
        if announced is None or not announced[1] or announced[0] > BUILD_MAX:
            return 0  # its last frame's header is still to come, or too large to trust
        return announced[0]

    def _receive_built(self, size: int, deadline: Deadline) -> bytes | None:
        """recv() of a binary message of ``size`` bytes, read into the bytes
        returned; hold the reader lock. What came before it (kept pieces, parsed
        events) is copied in first; a timeout keeps what came, as recv() does."""
        assert _accel.Builder is not None
        builder = _accel.Builder(size)
        with memoryview(builder) as view:
            received = self._receive_into(view, deadline)
        if received is None:
            return None
        message: bytes = builder.take()
        return message

    def _size_so_far(self, known: int, ended: bool) -> tuple[int, bool]:
        """The size of the message being received (and whether it is exact), for BufferTooSmall.

        ``known`` bytes of it are counted, up to the first queued event
        (``ended``: that was its last piece). The pieces queued after that
        one count too, up to the message's last; if that isn't queued yet,
        the headers of what is being parsed may tell more. (Several
        messages may be queued: a reader other than this one, the
        keepalive, parsed them.)
        """
        if ended:
            return known, True
        pieces = iter(self._proto.events)
        next(pieces)  # the first: counted
        for event in pieces:
            if type(event) is not Data:
                break
            payload = event.payload
            known += len(payload.encode("utf-8") if event.text else payload)  # type: ignore[union-attr]
            if event.fin:
                return known, True
        else:
            announced = self._proto.announced_size
            if announced is not None and announced[0] > known:
                return announced  # the headers know more
        return known, False

    def _receive_into(self, view: memoryview, deadline: Deadline) -> tuple[int, bool] | None:
        """:meth:`recv_into`'s work; hold the reader lock.

        Pieces the protocol parsed are copied into ``view``; when none is
        left and the protocol says the next bytes from the peer are payload
        that needs no work (``payload_to_place``), they are read into their
        place. On any way out but the message's end, what was written goes
        back to the :class:`~blockws.assembly.Assembly`, so the next call
        starts the message over.
        """
        proto = self._proto
        events = proto.events
        assembly = self.assembly
        size = len(view)
        written = 0
        text = False
        if assembly.parts:
            # What a recv() or recv_into() that timed out (or didn't fit) kept.
            kept = assembly.take()
            assert kept is not None
            text = type(kept) is str
            data = kept.encode("utf-8") if text else kept  # type: ignore[union-attr]
            if len(data) > size:
                assembly.add(kept)
                raise BufferTooSmall(len(data), size, False)
            written = len(data)
            view[:written] = data  # type: ignore[assignment]
        try:
            while True:
                if not events and not proto.input_ended:
                    announced = proto.announced_size
                    if announced is not None and announced[0] > size:
                        raise BufferTooSmall(announced[0], size, announced[1])
                    want = proto.payload_to_place()
                    if want:
                        place = view[written : written + want]
                        n = self.read(deadline, place)
                        if n:
                            written += n
                            if proto.payload_placed(n, place[:n]):
                                return written, False
                    else:
                        self.read(deadline)
                    continue
                event = self.next_event(deadline)
                if event is None:
                    return None  # the end, as for recv() (a message the Close cut is dropped)
                piece = event.payload
                if event.text:
                    text = True
                    piece = piece.encode("utf-8")  # type: ignore[union-attr]
                n = len(piece)
                if written + n > size:
                    proto.put_back(event)  # still to be received, after what was written
                    known, exact = self._size_so_far(written + n, event.fin)
                    raise BufferTooSmall(known, size, exact)
                view[written : written + n] = piece  # type: ignore[assignment]
                written += n
                if event.fin:
                    return written, text
        except BaseException:
            if written:
                prefix = bytes(view[:written])
                assembly.add_first(prefix.decode("utf-8") if text else prefix)
            raise
