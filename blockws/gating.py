"""The client's DoS guard: at most one connection per remote IP opening at a time, and optional per-host caps.

:class:`ConnectGate` is what :func:`~blockws.connect` goes through (the
process-wide :data:`DEFAULT_GATE` unless told otherwise).

Locks: a :class:`ConnectGate`'s condition guards its tables (the addresses
opening, the connections open per host); :data:`DEFAULT_GATE` is shared by
every thread that connects.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from .utils import Deadline

__all__ = ["ConnectGate", "DEFAULT_GATE"]


class ConnectGate:
    """Limits how connections to one remote host are opened (the seed's DoS guard).

    At most one connection per remote IP address is in the CONNECTING state
    (TCP, TLS and handshake) at a time: others wait for it, within their
    ``open_timeout``. With ``max_per_host``, at most that many connections
    to one host name are open at once (a further :func:`connect` waits for
    one to close, within its ``open_timeout``).

    So parallel connections to one server open one after the other, and the
    time each waits here counts against its own ``open_timeout``: of ten
    threads connecting at once to a server whose handshake takes 2 s, five
    open within the default 10 s and five fail with ``TimeoutError``
    ("waiting for another connection to ... to finish opening"). A load
    test or a pool that opens many connections to one server at once should
    pass ``connect_gate=None`` (or a larger ``open_timeout``). The gate is
    keyed by the address connected to, so ``localhost`` and ``127.0.0.1``
    share it; through a proxy, by host name.

    A process-wide gate is used by default; ``connect(connect_gate=None)``
    bypasses it, ``connect(connect_gate=ConnectGate(max_per_host=4))`` uses
    another.
    """

    def __init__(self, max_per_host: int | None = None) -> None:
        self.max_per_host = max_per_host
        self._cond = threading.Condition()
        self._connecting: set[str] = set()
        self._open: dict[str, int] = {}

    @contextlib.contextmanager
    def connecting(self, address: str, deadline: Deadline) -> Iterator[None]:
        """Hold the CONNECTING slot of ``address`` for the duration of the block."""
        with self._cond:
            if not self._cond.wait_for(lambda: address not in self._connecting, deadline.remaining()):
                raise TimeoutError(
                    f"timed out (open_timeout) waiting for another connection to {address} to finish opening"
                )
            self._connecting.add(address)
        try:
            yield
        finally:
            with self._cond:
                self._connecting.discard(address)
                self._cond.notify_all()

    def acquire_host(self, host: str, deadline: Deadline) -> None:
        """Count an open connection to ``host``, waiting while the cap is reached."""
        with self._cond:
            limit = self.max_per_host
            if limit is not None and not self._cond.wait_for(
                lambda: self._open.get(host, 0) < limit, deadline.remaining()
            ):
                raise TimeoutError(
                    f"timed out (open_timeout) waiting for a free connection to {host} (max_per_host={limit})"
                )
            self._open[host] = self._open.get(host, 0) + 1

    def release_host(self, host: str) -> None:
        with self._cond:
            count = self._open.get(host, 0) - 1
            if count > 0:
                self._open[host] = count
            else:
                self._open.pop(host, None)
            self._cond.notify_all()

    def open_connections(self, host: str) -> int:
        with self._cond:
            return self._open.get(host, 0)


DEFAULT_GATE = ConnectGate()
