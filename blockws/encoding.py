"""Calls in, bytes out: the frame encoders of :class:`~blockws.protocol.Protocol`.

:class:`Encoder` is the sending half of the sans-I/O protocol, a base of
:class:`~blockws.protocol.Protocol` (which sets up its state), as
:class:`~blockws.parsing.Parser` is the receiving half: it frames the
application's messages (a whole small one in one step, :meth:`Encoder.encode_message`;
a frame of a message sent in parts, :meth:`Encoder.encode_data`; one frame
shared by many connections, :meth:`Encoder.encode_shared`), compressing and
masking them, frames Pings and Pongs, and hands over the frames the
protocol queued itself (pongs, our Close: :meth:`Encoder.data_to_send`).
The caller holds the I/O layer's send lock; what the reader shares with it
(``outgoing``) is under the protocol's queue lock (see blockws.protocol's
"Locks").
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .codes import OP_BINARY, OP_CONT, OP_PONG, OP_TEXT, Opcode
from .frames import MAX_CONTROL_PAYLOAD, FrameHeader, apply_mask, encode_header, mask, pack_short_header

if TYPE_CHECKING:
    from .deflate import Compressor
    from .protocol import Close, RandomKeys

__all__ = ["Encoder"]


class Encoder:
    """The frame encoders; their state is set up by :class:`~blockws.protocol.Protocol`."""

    if not TYPE_CHECKING:  # mypy would check this class's assignments against them
        __slots__ = ()  # Protocol declares them all (see there)

    # Set by Protocol.__init__ (see there for their meaning).
    trace: Callable[[str, FrameHeader, bytes], None] | None
    sending_message: bool
    close_sent: Close | None
    outgoing: list[bytes]
    _lock: threading.Lock
    _pongs_queued: int
    _last_pong_at: int
    mask_keys: RandomKeys | None
    plain_below: int
    _compressor: Compressor | None
    _out_compressed: bool
    _skip_binary: int
    _close_answer_due: bool

    def _trace_sent(
        self, opcode: int, fin: bool, payload: bytes | bytearray | memoryview, key: bytes | None, rsv: int = 0
    ) -> None:
        raise NotImplementedError  # the protocol's

    def _answer_close(self) -> None:
        raise NotImplementedError  # the protocol's: our Close, answering the peer's

    def encode_data(self, payload: bytes | bytearray | memoryview, text: bool, fin: bool) -> tuple[bytes, bytes]:
        """Frame ``payload`` as the next frame of the outgoing message.

        Returns ``(header, payload)``, the payload masked on the client side,
        so that a large payload can be written without joining it to its
        header. The first frame of a message is TEXT or BINARY, the rest
        CONT; ``fin`` ends the message.
        """
        if self.sending_message:
            opcode = OP_CONT
            rsv = 0
        else:
            opcode = OP_TEXT if text else OP_BINARY
            self._out_compressed = self._compressor is not None and self._worth_compressing(payload, text)
            rsv = 0x40 if self._out_compressed else 0
        self.sending_message = not fin
        if self._out_compressed:
            assert self._compressor is not None
            size = len(payload)
            payload = self._compressor.compress(payload, fin)
            if not text and fin and rsv and len(payload) > size * 0.95 and self._compressor.skip_incompressible:
                self._skip_binary = 32  # incompressible data: stop trying for a while
        keys = self.mask_keys
        if keys is None:
            if self.trace is not None:
                self._trace_sent(opcode, fin, payload, None, rsv)
            header, body = encode_header(opcode, len(payload), fin, rsv), payload
        else:
            key = next(keys)
            if self.trace is not None:
                self._trace_sent(opcode, fin, payload, key, rsv)
            header, body = encode_header(opcode, len(payload), fin, rsv, key), apply_mask(payload, key)
        if fin and self._close_answer_due and self.close_sent is None:
            # The message the peer's Close interrupted is done: our Close
            # follows its last frame (the caller writes header, then body).
            self._answer_close()
            body = bytes(body) + b"".join(self.data_to_send())
        return header, body  # type: ignore[return-value]

    def _worth_compressing(self, payload: bytes | bytearray | memoryview, text: bool) -> bool:
        assert self._compressor is not None
        if len(payload) < self._compressor.min_size:
            return False
        if not text and self._skip_binary:
            self._skip_binary -= 1
            return False
        return True

    def plain_key(self, n: int) -> bytes | None:
        """How a whole message of ``n`` bytes goes out as one plain frame:
        its masking key (b"" on the server side, which doesn't mask); None
        when it doesn't (a message is open, it is compressed, traced or
        64 KiB or more: :meth:`encode_data` frames it). For
        ``_accel.send_message``, which builds the frame :meth:`encode_message` would.
        (``Outbox.send_small`` writes this out: change both.)"""
        if n >= self.plain_below or self.trace is not None or self.sending_message:
            return None
        keys = self.mask_keys
        return b"" if keys is None else next(keys)

    def encode_message(self, payload: bytes, text: bool) -> bytes:
        """A whole message as one frame, header and payload joined (the hot path).

        Only when no message is open; same result as :meth:`encode_data`.
        """
        n = len(payload)
        if (
            n >= 126
            or self.trace is not None
            or self.sending_message
            or self._compressor is not None
            and n >= self._compressor.min_size
        ):
            header, body = self.encode_data(payload, text, True)
            return header + body
        b0 = 0x81 if text else 0x82
        keys = self.mask_keys
        if keys is None:
            return bytes((b0, n)) + payload
        key = next(keys)
        return bytes((b0, 0x80 | n)) + key + mask(payload, key)

    def encode_shared(self, payload: bytes, text: bool, shared: dict[object, bytes]) -> bytes:
        """:meth:`encode_message`, reusing the frame another protocol put in ``shared``.

        For :func:`~blockws.broadcast`: an unmasked frame is the same bytes
        for every connection that frames the message alike, uncompressed or
        compressed with the same settings and no context takeover (so no
        history). Masked frames (the client side), a compressor with
        context takeover, or a trace make ours unique: encoded as usual.
        """
        compressor = self._compressor
        if self.mask_keys is not None or self.trace is not None or self.sending_message:
            return self.encode_message(payload, text)
        if compressor is None or len(payload) < compressor.min_size or not text and self._skip_binary:
            if compressor is not None and len(payload) >= compressor.min_size:
                self._skip_binary -= 1  # as encode_data counts a message it didn't compress
            key: object = "plain"
            frame = shared.get(key)
            if frame is None:
                opcode = OP_TEXT if text else OP_BINARY
                frame = shared[key] = encode_header(opcode, len(payload), True, 0) + payload
            return frame
        key = compressor.shared_key
        if key is None:
            return self.encode_message(payload, text)
        frame = shared.get(key)
        if frame is None:
            frame = shared[key] = self.encode_message(payload, text)
        return frame

    def encode_control(self, opcode: Opcode, payload: bytes) -> bytes:
        """Return a whole Ping or Pong frame (hold the send lock: it draws a masking key)."""
        return self._encode_control(opcode, payload, self.mask_keys)

    @staticmethod
    def check_control(payload: bytes) -> None:
        """Raise ValueError unless ``payload`` fits in a control frame."""
        if len(payload) > MAX_CONTROL_PAYLOAD:
            raise ValueError(f"control frame payload of {len(payload)} bytes exceeds {MAX_CONTROL_PAYLOAD} bytes")

    def _encode_control(self, opcode: Opcode, payload: bytes, keys: RandomKeys | None) -> bytes:
        # encode_header() and check_control() written out: the keepalive's
        # pings and every pong come here, and a control frame's header is
        # always two bytes (a Python call is ~600-1,000 instructions on 3.11).
        n = len(payload)
        if n > MAX_CONTROL_PAYLOAD:
            self.check_control(payload)  # raises
        key = None if keys is None else next(keys)
        if self.trace is not None:
            self._trace_sent(opcode, True, payload, key)
        if key is None:
            return pack_short_header(0x80 | opcode, n) + payload
        return pack_short_header(0x80 | opcode, 0x80 | n) + key + mask(payload, key)

    def hold(self, frame: bytes) -> None:
        """Queue an encoded control frame of the I/O layer's with our own (see :meth:`data_to_send`)."""
        with self._lock:
            self.outgoing.append(frame)

    def data_to_send(self, room: int | None = None) -> list[bytes]:
        """Take the frames queued by the protocol itself (pongs, Close).

        With ``room``, take them in order only while fewer than ``room``
        bytes are taken: a caller with a bounded buffer goes at most one
        frame past its bound, and the rest stay here (where a newer pong
        replaces an unsent one, so they stay bounded too).
        """
        if not self.outgoing:
            return []
        # The reader may be queueing a pong meanwhile.
        with self._lock:
            out = self.outgoing
            if room is not None:
                taken = 0
                size = 0
                while taken < len(out) and size < room:
                    size += len(out[taken])
                    taken += 1
                if taken < len(out):
                    head = out[:taken]
                    del out[:taken]
                    pongs = sum(1 for frame in head if frame[0] & 0x0F == OP_PONG)
                    self._pongs_queued -= pongs
                    self._last_pong_at -= taken
                    return head
            self.outgoing = []
            self._pongs_queued = 0
            return out

    @property
    def has_output(self) -> bool:
        return bool(self.outgoing)
