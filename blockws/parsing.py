"""Bytes in, events out: the frame parser of :class:`~blockws.protocol.Protocol`.

:class:`Parser` is the receiving half of the sans-I/O protocol, a base of
:class:`~blockws.protocol.Protocol` (which sets up its state): it parses
frame headers, unmasks, validates and decodes payloads, and queues
:class:`Data` events, streaming a data frame's payload as it arrives. A
fast path takes the common frames (a whole small unfragmented message, a
Ping or a Pong, masked as it should be, no RSV bits, no trace) without
building a :class:`~blockws.frames.FrameHeader`; it must give the same
result as the general path below it, which tests/test_protocol.py checks
on the same inputs. Control frames go to the protocol's ``_control``.

The I/O layer may also read a binary frame's payload into its final place
itself (:meth:`Parser.payload_to_place`, :meth:`Parser.payload_placed`).
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .codes import OP_CONT, OP_TEXT, CloseCode
from .exceptions import PayloadTooBig, ProtocolError
from .frames import FrameHeader, apply_mask, parse_header, unmask_inplace

if TYPE_CHECKING:
    from .deflate import Decompressor, DeflateParams
    from .protocol import Close

__all__ = ["Data", "Parser", "TRACE_PREVIEW"]

# The payload bytes a trace callback is shown.
TRACE_PREVIEW = 64


class Data:
    """A piece of a received message; ``fin`` marks its last piece.

    ``payload`` is ``str`` for text messages (already validated and decoded)
    and ``bytes`` for binary ones.
    """

    __slots__ = ("payload", "text", "fin")

    def __init__(self, payload: str | bytes, text: bool, fin: bool) -> None:
        self.payload = payload
        self.text = text
        self.fin = fin

    def __repr__(self) -> str:
        return f"Data({self.payload[:40]!r}, text={self.text}, fin={self.fin})"


_new_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Parser:
    """The frame parser; its state is set up by :class:`~blockws.protocol.Protocol`."""

    if not TYPE_CHECKING:  # mypy would check this class's assignments against them
        __slots__ = ()  # Protocol declares them all (see there)

    # Set by Protocol.__init__: the settings...
    _client: bool
    max_size: int | None
    max_fragments: int | None
    deflate: DeflateParams | None
    trace: Callable[[str, FrameHeader, bytes], None] | None
    # ...what was parsed (see Protocol.__init__ for their meaning)...
    events: deque[Data | Close]
    pongs: deque[bytes]
    data_in: int
    ends_in: int
    text_extra: int
    data_out: int
    ends_out: int
    failure: ProtocolError | None
    # ...and where the parser is: the leftover of the last read, the data
    # frame being streamed, the message it belongs to.
    leftover: bytes
    remaining: int
    _frame_fin: bool
    _frame_mask: bytes | None
    _frame_offset: int
    in_message: bool
    _msg_text: bool
    _msg_size: int
    _msg_frames: int
    _msg_compressed: bool
    _decoder: codecs.IncrementalDecoder | None
    _decoding: bool
    _decompressor: Decompressor | None
    _discard: bool
    input_ended: bool
    _dropping: bool

    def _control(self, opcode: int, payload: bytes) -> None:
        raise NotImplementedError  # the protocol's: pings, pongs and the peer's Close

    def at_rest(self) -> bool:
        """Between messages, nothing left over, no trace: the next bytes read
        may be handed to ``_accel.parse_one`` (whose None means: give them to
        :meth:`receive_data`). (``Inbox.recv`` writes this test out: change both.)"""
        return not self.in_message and not self.leftover and self.trace is None

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the peer; parsed events go to :attr:`events`."""
        if self._discard or not data:
            return
        if self.leftover:
            data = self.leftover + data
            self.leftover = b""
        try:
            self._parse(data)
        except ProtocolError as exc:
            self._discard = True
            self.leftover = b""
            self.failure = exc
            self.input_ended = True

    def _parse(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        client = self._client
        mask_bit = 0 if client else 0x80
        events = self.events
        while pos < end:
            remaining = self.remaining
            if remaining:
                n = end - pos
                if n > remaining:
                    n = remaining
                piece = data if n == end else data[pos : pos + n]
                key = self._frame_mask
                if key is not None:
                    piece = apply_mask(piece, key, self._frame_offset)
                    self._frame_offset += n
                pos += n
                self.remaining = remaining = remaining - n
                if not remaining:
                    self._deliver(piece, self._frame_fin)
                elif piece:
                    self._deliver(piece, False)
                continue

            # The hot path: a whole small unfragmented message, or a Ping or
            # Pong (the keepalive's), masked as it should be, no RSV bits, no
            # trace. The general path below gives the same result for them,
            # only slower; anything else goes there.
            if end - pos >= 2 and self.trace is None:
                b0 = data[pos]
                b1 = data[pos + 1]
                n = b1 & 0x7F
                control = b0 == 0x89 or b0 == 0x8A
                if (
                    n < 126
                    and (b1 & 0x80) == mask_bit
                    and (control or ((b0 == 0x82 or b0 == 0x81) and not self.in_message))
                ):
                    start = pos + 6 if mask_bit else pos + 2
                    if start + n <= end:
                        if not control and self.max_size is not None and n > self.max_size:
                            raise PayloadTooBig(f"frame of {n} bytes exceeds max_size={self.max_size}")
                        payload = data[start : start + n]
                        if mask_bit:
                            payload = apply_mask(payload, data[pos + 2 : pos + 6])
                        pos = start + n
                        if b0 == 0x8A:
                            # The protocol's part for a Pong, written out: a
                            # call fewer for each of the keepalive's pings.
                            self.pongs.append(payload)
                        elif control:
                            self._control(b0 & 0x0F, payload)
                        elif b0 == 0x82:
                            events.append(Data(payload, False, True))
                            self.data_in += n
                            self.ends_in += 1
                        else:
                            try:
                                text = payload.decode("utf-8")
                            except UnicodeDecodeError as exc:
                                raise ProtocolError(
                                    f"invalid UTF-8 in text message: {exc.reason}", CloseCode.INVALID_DATA
                                ) from exc
                            events.append(Data(text, True, True))
                            chars = len(text)
                            self.data_in += chars
                            self.ends_in += 1
                            if chars != n:
                                self.text_extra += n - chars
                        continue

            header = parse_header(data, pos)
            if header is None:
                break
            if self.trace is not None:
                self._trace_received(header, data, pos + header.size)
            opcode = header.opcode
            if header.rsv:
                if header.rsv != 0x40 or self.deflate is None:
                    raise ProtocolError(f"reserved bits set ({header.rsv:#x}) but no extension defines them")
                if opcode >= 8 or opcode == OP_CONT:
                    raise ProtocolError("RSV1 set on a control or continuation frame")
            if (header.mask is None) is not client:
                raise ProtocolError("client frame is not masked" if not client else "server frame is masked")
            length = header.length
            start = pos + header.size
            if opcode >= 8:
                if end - start < length:
                    break
                payload = data[start : start + length]
                if header.mask is not None:
                    payload = apply_mask(payload, header.mask)
                pos = start + length
                self._control(opcode, payload)
                if self._discard:
                    return
                continue
            if opcode == OP_CONT:
                if not self.in_message:
                    raise ProtocolError("continuation frame without a message to continue")
            else:
                if self.in_message:
                    raise ProtocolError("new data frame inside a fragmented message")
                self.in_message = True
                self._msg_text = opcode == OP_TEXT
                self._msg_size = 0
                self._msg_frames = 0
                self._msg_compressed = bool(header.rsv)
            self._msg_size += length
            self._msg_frames += 1
            if self.max_fragments is not None and self._msg_frames > self.max_fragments:
                # Empty fragments cost nothing against max_size: bound their number.
                raise PayloadTooBig(
                    f"message of more than {self.max_fragments} frames exceeds max_fragments={self.max_fragments}"
                )
            # A compressed message is bounded by the Decompressor, on every piece: its
            # inflated size and its compressed size.
            if self.max_size is not None and self._msg_size > self.max_size and not self._msg_compressed:
                if opcode == OP_CONT:
                    raise PayloadTooBig(f"message of {self._msg_size} bytes exceeds max_size={self.max_size}")
                raise PayloadTooBig(f"frame of {length} bytes exceeds max_size={self.max_size}")
            pos = start
            self._frame_fin = header.fin
            self._frame_mask = header.mask
            self._frame_offset = 0
            self.remaining = length
            if not length:
                self._deliver(b"", header.fin)
        if pos < end:
            self.leftover = data[pos:]

    # -- payload read into place by the I/O layer (recv_into) ---------------

    def payload_to_place(self) -> int:
        """Payload bytes the I/O layer may read from the peer into their final place itself.

        Non-zero only in the middle of a binary data frame that needs no
        work here but unmasking (not compressed), with nothing buffered and
        every event taken: the next bytes from the peer are then exactly
        that many bytes of the message, in order, after every piece already
        handed out. The I/O layer may read up to that many straight into the
        application's buffer and report them with :meth:`payload_placed`
        instead of :meth:`receive_data`. Zero otherwise: feed
        :meth:`receive_data` as usual. (Text frames are not offered: their
        UTF-8 is validated and decoded here.)
        """
        if (
            self._msg_text
            or self._msg_compressed
            or self.leftover
            or self.events
            or self._discard
            or self.failure is not None
        ):
            return 0
        return self.remaining

    def payload_placed(self, n: int, placed: memoryview | None = None) -> bool:
        """``n`` bytes of the current frame's payload (at most :meth:`payload_to_place`)
        were read into place by the I/O layer; returns whether they ended the message.

        ``placed`` is where they were read: a masked frame's bytes (a
        client's, to a server) are unmasked there, in place, so it is
        required for those. No :class:`Data` event is made for them: the
        I/O layer already has them.
        """
        if not 0 < n <= self.payload_to_place():
            raise ValueError(f"{n} payload bytes placed, {self.payload_to_place()} could be")
        key = self._frame_mask
        if key is not None:
            if placed is None or len(placed) != n:
                raise ValueError("a masked frame's placed bytes must be given, to be unmasked")
            unmask_inplace(placed, key, self._frame_offset)
            self._frame_offset += n
        self.remaining -= n
        # Received and taken at once: counted in and out (see Protocol.queued).
        self.data_in += n
        self.data_out += n
        if self.remaining or not self._frame_fin:
            return False
        self.in_message = False
        self.ends_in += 1
        self.ends_out += 1
        return True

    @property
    def announced_size(self) -> tuple[int, bool] | None:
        """What the frame headers of the message being received announced so far:
        (payload bytes, whether its last frame's header was among them).

        None between messages and for a compressed message (only inflating
        tells its size). Once every event is taken, no byte of this message
        was handed out beyond these bytes: the message is at least that long,
        and exactly that long once its last header was seen.
        """
        if not self.in_message or self._msg_compressed:
            return None
        return self._msg_size, self._frame_fin

    def _trace_received(self, header: FrameHeader, data: bytes, start: int) -> None:
        assert self.trace is not None
        preview = data[start : start + min(header.length, TRACE_PREVIEW)]
        if header.mask is not None:
            preview = apply_mask(preview, header.mask)
        self.trace("<", header, preview)

    def _deliver(self, piece: bytes, fin: bool) -> None:
        if fin:
            self.in_message = False
        if self._msg_compressed:
            assert self._decompressor is not None
            piece = self._decompressor.decompress(piece, fin)
            if not piece and not fin:
                return
        if self._dropping:
            # Decompressed all the same: the context goes on to the next
            # message. Not decoded: the UTF-8 decoder starts afresh with it.
            if fin:
                self._dropping = self._decoding = False
                if self._decoder is not None:
                    self._decoder.reset()
            return
        if not self._msg_text:
            if piece or fin:
                self.events.append(Data(piece, False, fin))
                self.data_in += len(piece)
                self.ends_in += fin
            return
        try:
            if fin and not self._decoding:
                text = piece.decode("utf-8")
            else:
                self._decoding = True
                decoder = self._decoder
                if decoder is None:
                    decoder = self._decoder = _new_utf8_decoder()
                text = decoder.decode(piece, fin)
                if fin:
                    self._decoding = False
                    decoder.reset()
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"invalid UTF-8 in text message: {exc.reason}", CloseCode.INVALID_DATA) from exc
        chars = len(text)
        if chars != len(piece):
            self.text_extra += len(piece) - chars  # (a character split between pieces: the bytes count first)
        if text or fin:
            self.events.append(Data(text, True, fin))
            self.data_in += chars
            self.ends_in += fin
