"""The C accelerator's functions, loaded once for every module that uses them.

Each name is None where the accelerator wasn't built (no compiler, or
``BLOCKWS_NO_EXTENSIONS=1`` when installing) or is switched off
(``BLOCKWS_NO_EXTENSIONS`` set when running): its users keep a pure-Python
fallback, and the tests run both.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Union

__all__ = ["mask", "mask_inplace", "send_now", "Builder"]

_Bytes = Union[bytes, bytearray, memoryview]

#: ``mask(data, key) -> bytes``: ``data`` XOR the 4-byte ``key`` repeated.
mask: Callable[[_Bytes, bytes], bytes] | None = None
#: ``mask_inplace(buffer, key)``: the same XOR, in a writable buffer.
mask_inplace: Callable[[memoryview, bytes], None] | None = None
#: ``Builder(size)``: a ``bytes`` object under construction, lent as a
#: writable buffer; ``take()`` returns it once no view of it is open.
Builder: Callable[[int], Any] | None = None
#: ``send_now(fd, data) -> int``: one send() that never waits and keeps the
#: GIL; 0 when the kernel has no room. Only where the platform has
#: ``MSG_DONTWAIT`` (not Windows).
send_now: Callable[[int, _Bytes], int] | None = None
#: ``send_message(fd, payload, text, key)``: a whole message framed (masked
#: with ``key`` unless it is b"") and written by one send() that never waits
#: and keeps the GIL; None when all of it went, else the bytes of the frame
#: still to write.
send_message: Callable[[int, bytes, bool, bytes, Any], bytes | None] | None = None
#: ``Counts()``: messages and payload bytes that ``parse_one`` and
#: ``send_message`` count when given one (for ``Server.stats()``).
Counts: Callable[[], Any] | None = None
#: ``parse_one(data, masked, max_size)``: the message in ``data`` when it is
#: exactly one whole, simple frame (text or binary, unfragmented, no RSV,
#: valid UTF-8), else None: the Python parser takes ``data`` then.
parse_one: Callable[[bytes, bool, int, Any], bytes | str | None] | None = None
#: ``recv_one(fd, masked, max_size, counts)``: one blocking ``recv()`` on a
#: socket in blocking mode, then ``parse_one`` on what came: the message,
#: or a 1-tuple of the bytes read (b"" at EOF) for the Python parser. Only
#: where the platform has ``MSG_DONTWAIT`` (not Windows).
recv_one: Callable[[int, bool, int, Any], bytes | str | tuple[bytes]] | None = None
#: ``split_head(head, max_line, max_headers)``: ``(start line, [(name, value)],
#: {lower-cased name: [values]})`` for a well-formed HTTP head within the
#: limits, else None: http.py's Python parser then decides, and explains.
split_head: Callable[[bytes, int, int], tuple[str, list[tuple[str, str]], dict[str, list[str]]] | None] | None = None

if not os.environ.get("BLOCKWS_NO_EXTENSIONS"):
    try:
        from . import _speedups  # type: ignore[attr-defined,unused-ignore]
    except ImportError:  # pragma: no cover - the accelerator wasn't built
        pass
    else:
        mask = _speedups.mask
        mask_inplace = _speedups.mask_inplace
        Builder = _speedups.Builder
        send_now = getattr(_speedups, "send_now", None)
        send_message = getattr(_speedups, "send_message", None)
        parse_one = _speedups.parse_one
        recv_one = getattr(_speedups, "recv_one", None)
        Counts = getattr(_speedups, "Counts", None)
        split_head = getattr(_speedups, "split_head", None)
