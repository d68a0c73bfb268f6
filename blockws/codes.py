"""The numbers of RFC 6455: opcodes, close codes, and which closes are clean.

This module imports nothing from blockws, so every layer, the exceptions
included, can name a code instead of writing a bare number.
"""

from __future__ import annotations

import enum

__all__ = ["Opcode", "CloseCode", "CLEAN_CLOSE_CODES", "is_clean_close", "may_be_sent"]


class Opcode(enum.IntEnum):
    """Frame opcodes (RFC 6455 section 5.2)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """Close status codes (RFC 6455 section 7.4 and the IANA registry)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005  # never on the wire: "the Close had no code"
    ABNORMAL_CLOSURE = 1006  # never on the wire: "lost without a Close"
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015  # never on the wire


# The members the per-message and per-connection paths use, as module
# globals. Before Python 3.12 a member looked up on its class (Opcode.PING)
# takes EnumType's slow attribute path (it defines __getattr__): ~1,000
# instructions, a global ~20. Counted: ~5 % of a handshake.
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = Opcode
NORMAL_CLOSURE = CloseCode.NORMAL_CLOSURE
NO_STATUS_RCVD = CloseCode.NO_STATUS_RCVD
ABNORMAL_CLOSURE = CloseCode.ABNORMAL_CLOSURE

#: Codes that end a connection without an error: done, leaving, or a Close
#: without a code. Both Closes must carry one for ConnectionClosedOK.
CLEAN_CLOSE_CODES = frozenset({CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD})

# The registered codes a Close frame may carry: all but the three that only
# report locally what happened.
_REGISTERED_WIRE_CODES = frozenset(CloseCode) - {
    CloseCode.NO_STATUS_RCVD,
    CloseCode.ABNORMAL_CLOSURE,
    CloseCode.TLS_HANDSHAKE,
}


def is_clean_close(code: int) -> bool:
    """Whether a Close with ``code`` ends the connection without an error."""
    return code in CLEAN_CLOSE_CODES


def may_be_sent(code: int) -> bool:
    """Whether a Close frame may carry ``code``.

    The registered codes that aren't local only may, and so may the ranges
    for libraries (3000-3999) and applications (4000-4999).
    """
    return code in _REGISTERED_WIRE_CODES or 3000 <= code <= 4999
