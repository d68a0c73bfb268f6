"""permessage-deflate (RFC 7692), without I/O: negotiation and the codecs.

Negotiation: the client sends :func:`client_offer` and checks the answer with
:func:`client_accept`; the server picks an offer with :func:`server_accept`.
Both end with :class:`DeflateParams`, from which each side makes a
:class:`Compressor` for what it sends and a :class:`Decompressor` for what it
receives.

Decompression is bounded: a message never inflates past ``max_size`` (a
1 KiB frame that would inflate to 1 GiB stops at the limit with
:class:`~blockws.exceptions.PayloadTooBig`, holding at most ``max_size``
bytes); its compressed bytes may not run far past ``max_size`` either, and
data after the end of the deflate stream is refused (1007) rather than kept.
The context kept between messages is bounded by the window bits.

Locks: none here. :class:`PerMessageDeflate` is frozen, shared freely by a
server's connections; each connection's :class:`Compressor` is used under
its send lock, its :class:`Decompressor` under its reader lock (zlib's
objects lock themselves besides).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

from .codes import CloseCode
from .exceptions import InvalidHandshake, PayloadTooBig, ProtocolError
from .handshake import parse_extensions

__all__ = [
    "NAME",
    "PerMessageDeflate",
    "settings",
    "DeflateParams",
    "client_offer",
    "client_accept",
    "server_accept",
    "Compressor",
    "Decompressor",
    "DEFAULT_MIN_SIZE",
]

NAME = "permessage-deflate"
_TRAILER = b"\x00\x00\xff\xff"
# What may follow a BFINAL block (RFC 7692 section 7.2.3.3): BFINAL=0, BTYPE=00.
_AFTER_BFINAL = b"\x00"
# Messages shorter than this are sent uncompressed (RFC 7692 lets each
# message choose): below it, deflate's block overhead and the CPU cost
# outweigh the bytes saved (see CHANGES.txt for the measurement).
DEFAULT_MIN_SIZE = 128
_PARAMS = (
    "server_no_context_takeover",
    "client_no_context_takeover",
    "server_max_window_bits",
    "client_max_window_bits",
)


@dataclasses.dataclass(frozen=True)
class DeflateParams:
    """The parameters both sides agreed on."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int = 15
    client_max_window_bits: int = 15

    def response(self, client_bits_offered: bool, server_bits_offered: bool = False) -> str:
        """The server's Sec-WebSocket-Extensions answer for these parameters.

        Args:
            client_bits_offered: the offer had ``client_max_window_bits``
                (without it the server may not send that parameter).
            server_bits_offered: the offer had ``server_max_window_bits``;
                the answer must then carry it even at 15 (RFC 7692 section
                7.1.2.1), or clients refuse it as ignored.
        """
        parts = [NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if server_bits_offered or self.server_max_window_bits != 15:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if client_bits_offered and self.client_max_window_bits != 15:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


@dataclasses.dataclass(frozen=True)
class PerMessageDeflate:
    """permessage-deflate settings: ``compression=PerMessageDeflate(...)``.

    ``compression="deflate"`` (the default of :func:`blockws.connect` and
    :func:`blockws.serve`) means ``PerMessageDeflate()``.

    Args:
        min_size: messages shorter than this many bytes are sent
            uncompressed (below 128, compressing JSON-like text saves less
            than a TCP/IP header and costs about 2 us each way).
        level: the zlib level (1-9) of what we send. 3 by measurement on
            1 KiB JSON-like messages with context takeover: 182 bytes in
            11 us, where zlib's default 6 gives 165 bytes in 29 us and 1
            gives 213 bytes in 9 us.
        skip_incompressible: after a binary message that deflate didn't
            shrink by 5 % (random or already compressed data), send the
            next 32 binary messages uncompressed (text is always tried).
        server_no_context_takeover: a client asks the server to reset its
            compressor after every message; a server insists on doing so.
        client_no_context_takeover: a client resets its own compressor after
            every message; a server asks the client to.
        server_max_window_bits: 8-15; a client asks the server for a smaller
            window, a server uses at most that.
        client_max_window_bits: 8-15; a client compresses with at most that;
            a server asks clients for at most that (and declines offers
            that don't allow it).
    """

    min_size: int = DEFAULT_MIN_SIZE
    level: int = 3
    skip_incompressible: bool = True
    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None

    def __post_init__(self) -> None:
        if self.min_size < 0:
            raise ValueError(f"min_size must be 0 or more, not {self.min_size}")
        if not 0 <= self.level <= 9:
            raise ValueError(f"level must be 0 to 9, not {self.level}")
        for name in ("server_max_window_bits", "client_max_window_bits"):
            bits = getattr(self, name)
            if bits is not None and not 8 <= bits <= 15:
                raise ValueError(f"{name} must be 8 to 15, not {bits}")

    def offer(self) -> str:
        """The client's Sec-WebSocket-Extensions offer."""
        return client_offer(
            client_max_window_bits=self.client_max_window_bits,
            server_max_window_bits=self.server_max_window_bits,
            client_no_context_takeover=self.client_no_context_takeover,
            server_no_context_takeover=self.server_no_context_takeover,
        )

    def accept(self, values: Sequence[str]) -> tuple[str, DeflateParams] | None:
        """The server's choice among the client's offers (see :func:`server_accept`)."""
        return server_accept(
            values,
            server_no_context_takeover=self.server_no_context_takeover,
            client_no_context_takeover=self.client_no_context_takeover,
            server_max_window_bits=self.server_max_window_bits,
            client_max_window_bits=self.client_max_window_bits,
        )


def settings(compression: str | PerMessageDeflate | None) -> PerMessageDeflate | None:
    """Check a ``compression=`` option: ``"deflate"``, :class:`PerMessageDeflate` or None.

    Raises:
        ValueError: anything else.
    """
    if compression is None or isinstance(compression, PerMessageDeflate):
        return compression
    if compression == "deflate":
        return PerMessageDeflate()
    raise ValueError(f"unsupported compression {compression!r}: use 'deflate', PerMessageDeflate(...) or None")


def _bits(value: str | None, name: str) -> int:
    # RFC 7692 section 7.1.2: 1*DIGIT between 8 and 15, no leading zero.
    if value is None or not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= 15:
        raise InvalidHandshake(f"invalid value for {name}: {value!r} (8 to 15)")
    return int(value)


def _parse_params(params: list[tuple[str, str | None]], offer: bool) -> dict[str, int | bool | None]:
    """Validate one offer's or response's parameters (InvalidHandshake if bad)."""
    seen: dict[str, int | bool | None] = {}
    for name, value in params:
        if name not in _PARAMS:
            raise InvalidHandshake(f"unknown {NAME} parameter {name!r}")
        if name in seen:
            raise InvalidHandshake(f"duplicate {NAME} parameter {name!r}")
        if name.endswith("no_context_takeover"):
            if value is not None:
                raise InvalidHandshake(f"{name} takes no value")
            seen[name] = True
        elif name == "client_max_window_bits" and value is None and offer:
            seen[name] = None  # "you may limit my window": allowed in offers only
        else:
            seen[name] = _bits(value, name)
    return seen


def client_offer(
    *,
    client_max_window_bits: int | None = None,
    server_max_window_bits: int | None = None,
    client_no_context_takeover: bool = False,
    server_no_context_takeover: bool = False,
) -> str:
    """The Sec-WebSocket-Extensions value a client sends.

    By default, like browsers: ``permessage-deflate; client_max_window_bits``
    (the server may ask us for a smaller window).
    """
    parts = [NAME]
    if server_no_context_takeover:
        parts.append("server_no_context_takeover")
    if client_no_context_takeover:
        parts.append("client_no_context_takeover")
    if server_max_window_bits is not None:
        parts.append(f"server_max_window_bits={_bits(str(server_max_window_bits), 'server_max_window_bits')}")
    if client_max_window_bits is None:
        parts.append("client_max_window_bits")
    else:
        parts.append(f"client_max_window_bits={_bits(str(client_max_window_bits), 'client_max_window_bits')}")
    return "; ".join(parts)


def client_accept(values: Sequence[str], offer: str) -> DeflateParams | None:
    """Check the server's Sec-WebSocket-Extensions against our ``offer``.

    Returns None when the server accepted no extension.

    Raises:
        InvalidHandshake: an extension we didn't offer, permessage-deflate
            twice, or a parameter that is unknown, repeated, invalid or
            incompatible with the offer.
    """
    accepted = parse_extensions(values)
    if not accepted:
        return None
    names = [name for name, _ in accepted]
    if names != [NAME]:
        raise InvalidHandshake(f"server accepted extensions we did not offer (or twice): {', '.join(names)}")
    ((_, offered_params),) = parse_extensions([offer])
    offered = _parse_params(offered_params, offer=True)
    got = _parse_params(accepted[0][1], offer=False)
    if "client_max_window_bits" in got and "client_max_window_bits" not in offered:
        raise InvalidHandshake("server sent client_max_window_bits, which we did not offer")
    asked = offered.get("client_max_window_bits")
    if isinstance(asked, int) and isinstance(got.get("client_max_window_bits"), int):
        if int(got["client_max_window_bits"]) > asked:  # type: ignore[arg-type]
            raise InvalidHandshake("server's client_max_window_bits exceeds our offer")
    server_bits = offered.get("server_max_window_bits")
    if isinstance(server_bits, int):
        if "server_max_window_bits" not in got:
            raise InvalidHandshake("server ignored our server_max_window_bits")
        if int(got["server_max_window_bits"]) > server_bits:  # type: ignore[arg-type]
            raise InvalidHandshake("server's server_max_window_bits exceeds our offer")
    if offered.get("server_no_context_takeover") and not got.get("server_no_context_takeover"):
        raise InvalidHandshake("server ignored our server_no_context_takeover")
    client_bits = got.get("client_max_window_bits")
    return DeflateParams(
        server_no_context_takeover=bool(got.get("server_no_context_takeover")),
        client_no_context_takeover=bool(
            got.get("client_no_context_takeover") or offered.get("client_no_context_takeover")
        ),
        server_max_window_bits=int(got.get("server_max_window_bits") or 15),
        client_max_window_bits=int(client_bits) if isinstance(client_bits, int) else int(asked or 15),
    )


def server_accept(
    values: Sequence[str],
    *,
    server_no_context_takeover: bool = False,
    client_no_context_takeover: bool = False,
    server_max_window_bits: int | None = None,
    client_max_window_bits: int | None = None,
) -> tuple[str, DeflateParams] | None:
    """Accept the first acceptable permessage-deflate offer.

    Offers with unknown, repeated or invalid parameters are declined, not
    failed (RFC 7692 section 5); so are offers that don't let us limit the
    client's window when ``client_max_window_bits`` is set. Returns the
    response header value and the parameters, or None.
    """
    try:
        offers = parse_extensions(values)
    except InvalidHandshake:
        return None
    for name, params in offers:
        if name != NAME:
            continue
        try:
            offered = _parse_params(params, offer=True)
        except InvalidHandshake:
            continue
        client_bits_offered = "client_max_window_bits" in offered
        if client_max_window_bits is not None and not client_bits_offered:
            continue
        server_bits = min(int(offered.get("server_max_window_bits") or 15), server_max_window_bits or 15)
        client_limit = offered.get("client_max_window_bits")
        client_bits = min(int(client_limit) if isinstance(client_limit, int) else 15, client_max_window_bits or 15)
        params_ = DeflateParams(
            server_no_context_takeover=server_no_context_takeover or bool(offered.get("server_no_context_takeover")),
            client_no_context_takeover=client_no_context_takeover or bool(offered.get("client_no_context_takeover")),
            server_max_window_bits=server_bits,
            client_max_window_bits=client_bits,
        )
        return params_.response(client_bits_offered, "server_max_window_bits" in offered), params_
    return None


class Compressor:
    """Compresses the messages one side sends (RSV1 set on their first frame).

    Args:
        params: the negotiated parameters.
        is_client: whether this is the client's side.
        settings: ``level``, ``min_size`` and ``skip_incompressible``
            (default: ``PerMessageDeflate()``).
    """

    def __init__(self, params: DeflateParams, is_client: bool, settings: PerMessageDeflate | None = None) -> None:
        settings = settings or PerMessageDeflate()
        bits = params.client_max_window_bits if is_client else params.server_max_window_bits
        # zlib can't deflate with a 256-byte window; its inflater (and so
        # every zlib-based peer) reads an 8-bit stream with a 512-byte one,
        # so 9 is what other libraries use when 8 was agreed.
        self._bits = max(bits, 9)
        self._no_takeover = params.client_no_context_takeover if is_client else params.server_no_context_takeover
        self._level = settings.level
        self.min_size = settings.min_size
        self.skip_incompressible = settings.skip_incompressible
        self._obj = self._new()
        # Compressors without context takeover make the same bytes of the
        # same message: broadcast() compresses it once for all of them.
        self.shared_key = ("deflate", self._bits, self._level) if self._no_takeover else None

    def _new(self) -> zlib._Compress:  # zlib names no public type for its compressor
        return zlib.compressobj(self._level, zlib.DEFLATED, -self._bits, 8)

    def compress(self, data: bytes | bytearray | memoryview, fin: bool) -> bytes:
        """Compress one frame's worth of a message; ``fin`` ends the message."""
        out = self._obj.compress(data) + self._obj.flush(zlib.Z_SYNC_FLUSH)
        if fin:
            if out.endswith(_TRAILER):
                out = out[:-4]
            if self._no_takeover:
                self._obj = self._new()
        return out


class Decompressor:
    """Decompresses received messages piece by piece, bounded by ``max_size``."""

    def __init__(self, params: DeflateParams, is_client: bool, max_size: int | None) -> None:
        # We receive what the other side compressed: its window and takeover.
        self._bits = params.server_max_window_bits if is_client else params.client_max_window_bits
        self._no_takeover = params.server_no_context_takeover if is_client else params.client_no_context_takeover
        self.max_size = max_size
        self._size = 0
        self._wire = 0
        self._obj = zlib.decompressobj(-self._bits)

    def decompress(self, piece: bytes | bytearray | memoryview, fin: bool) -> bytes:
        """Inflate a piece of a compressed message as it arrives.

        Raises:
            PayloadTooBig: the message inflates past ``max_size``, or its
                compressed bytes exceed it by more than deflate's framing
                can explain; nothing more is inflated.
            ProtocolError: the data is not valid deflate, or goes on after
                the end of the deflate stream (1007).
        """
        self._wire += len(piece)
        if self.max_size is not None and self._wire > _wire_limit(self.max_size):
            # Deflate blocks that inflate to nothing (empty stored blocks)
            # would otherwise let a message run on without counting.
            raise PayloadTooBig(
                f"compressed message of more than {_wire_limit(self.max_size)} bytes exceeds max_size={self.max_size}"
            )
        data = bytes(piece) + _TRAILER if fin else piece
        try:
            if self.max_size is None:
                out = self._obj.decompress(data)
            else:
                # Ask for one byte more than allowed: getting it means too big.
                limit = self.max_size - self._size
                out = self._obj.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ProtocolError(f"invalid compressed data: {exc}", CloseCode.INVALID_DATA) from exc
        self._size += len(out)
        if self.max_size is not None and self._size > self.max_size:
            raise PayloadTooBig(f"decompressed message exceeds max_size={self.max_size}")
        ended = self._obj.eof
        if ended:
            # zlib keeps whatever follows the end of the stream in
            # unused_data, inflating none of it and copying it all again on
            # every call: unchecked, junk would pile up past max_size at a
            # quadratic cost. Failing at the first junk keeps it to a few bytes.
            self._check_after_end(self._obj.unused_data, fin)
        if fin:
            self._size = 0
            self._wire = 0
            # A stream that ended can't go on: the sender's next message is a
            # new stream (zlib resets its window after BFINAL).
            if self._no_takeover or ended:
                self._obj = zlib.decompressobj(-self._bits)
        return out

    @staticmethod
    def _check_after_end(extra: bytes, fin: bool) -> None:
        # RFC 7692 section 7.2.3.3 lets a sender end a message with a BFINAL
        # block, then one 0x00 byte (an empty stored block's header) before
        # the trailer we append; anything else after the end is not part of
        # the message. 1007 rather than 1002: the frames are well formed, it
        # is the payload that is not valid permessage-deflate data, like
        # corrupt deflate or bad UTF-8.
        allowed = (_TRAILER, _AFTER_BFINAL + _TRAILER) if fin else (b"", _AFTER_BFINAL)
        if extra not in allowed:
            raise ProtocolError(
                "invalid compressed data: data after the end of the deflate stream (BFINAL)",
                CloseCode.INVALID_DATA,
            )


def _wire_limit(max_size: int) -> int:
    """The most compressed bytes a message of ``max_size`` bytes may take.

    Deflate can grow data a little: a stored block costs 5 bytes per 64 KiB
    and every flushed frame about 6 more, so a sender that splits a message
    into many tiny frames pays up to ``max_fragments`` times that. Twice
    ``max_size`` plus 64 KiB leaves room for any such sender; what it stops
    is a message of empty blocks that never inflates to anything.
    """
    return 2 * max_size + 65536
