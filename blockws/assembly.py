"""Putting received messages together from their pieces, for ``recv`` and ``recv_fragments``.

:meth:`~blockws.WebSocket.recv` gathers the pieces of a fragmented message
here; a timeout keeps them for the next call, which may be ``recv`` again
or ``recv_fragments`` (it hands them over as its first piece). A
``recv_fragments`` iterator that is in the middle of a message owns the
message (:attr:`Assembly.reader`); one left part-way marks the rest of the
message to be skipped (:data:`ABANDONED`).

Locks: the connection's reader lock guards all of it (see
:mod:`blockws.inbox`); ``size`` is read without it, for ``held()``.
"""

from __future__ import annotations

from typing import Union

__all__ = ["Assembly", "ABANDONED"]

Message = Union[str, bytes]

#: The ``reader`` of a message whose ``recv_fragments`` iterator was left part-way.
ABANDONED = object()


class Assembly:
    """The message being received: its pieces so far, and which iterator reads it."""

    __slots__ = ("parts", "size", "reader")

    def __init__(self) -> None:
        # Changed only through add(), add_first(), complete(), take() and clear(),
        # which keep ``size`` (their total length) for held().
        self.parts: list[Message] = []
        self.size = 0
        # The recv_fragments() iterator in the middle of a message (its
        # token), ABANDONED (the rest of the message is to be skipped) or None.
        self.reader: object | None = None

    def held(self) -> int:
        """Bytes (or characters) of the pieces gathered so far."""
        return self.size

    def add(self, piece: Message) -> None:
        """Gather the next piece."""
        self.parts.append(piece)
        self.size += len(piece)

    def add_first(self, piece: Message) -> None:
        """Gather a piece that comes before those gathered (what a call that failed had taken)."""
        self.parts.insert(0, piece)
        self.size += len(piece)

    def complete(self, last: Message) -> Message:
        """The whole message, given its last piece; empties the gathered pieces."""
        parts = self.parts
        if not parts:
            return last
        parts.append(last)
        message = ("" if isinstance(last, str) else b"").join(parts)  # type: ignore[arg-type]
        parts.clear()
        self.size = 0
        return message

    def clear(self) -> None:
        """Forget the pieces gathered so far (the message is dropped)."""
        if self.parts:
            self.parts.clear()
            self.size = 0

    def take(self) -> Message | None:
        """The pieces gathered so far as one (to hand on as a fragment), or None."""
        parts = self.parts
        if not parts:
            return None
        piece = ("" if isinstance(parts[0], str) else b"").join(parts)  # type: ignore[arg-type]
        parts.clear()
        self.size = 0
        return piece
