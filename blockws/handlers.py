"""Handler threads that the server reuses from one connection to the next.

A connection is served by one thread from its opening handshake until its
handler returns and it is closed, as before; once done, the thread waits up
to :data:`IDLE_SECONDS` for the server's next connection instead of ending.
Starting and ending a thread per connection is cheap with the GIL (about
25,000 a second here) but not on free-threaded CPython 3.13t: a thread that
ends abandons its allocator heap (mimalloc), and the threads that follow
spend their time reclaiming those heaps. Measured with 50 concurrent
handshakes (bench/freethreaded.py), that was over half of the server's CPU.

What a handler sees: ``threading.current_thread()`` is its connection's
thread for as long as the handler runs, named ``blockws (host, port)`` after
the peer as before; but a ``threading.local`` value it sets stays on the
thread and a later connection's handler on that thread sees it. Keep
per-connection state in the handler's locals (or key it by the WebSocket),
or clear what you put in a ``threading.local`` before returning.

Locks: ``Pool._lock`` guards ``_idle`` and ``_closed``; each idle thread
sleeps on its own ``_Worker.wake`` lock, which :meth:`Pool.run` releases
after handing it the job (a worker is in ``_idle`` exactly while it has no
job and may be given one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# How long an idle handler thread waits for another connection before it ends.
IDLE_SECONDS = 10.0

Job = Callable[[], None]


class _Worker:
    __slots__ = ("job", "thread", "wake")

    def __init__(self, job: Job) -> None:
        self.job: Job | None = job
        self.wake = threading.Lock()
        self.wake.acquire()  # released to hand it a job (or None: end)
        self.thread: threading.Thread | None = None


class Pool:
    """Runs each job in a thread of its own, reusing threads that finished theirs."""

    def __init__(self, idle_seconds: float = IDLE_SECONDS) -> None:
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []  # LIFO: the most recently used thread first
        self._closed = False
        self._idle_seconds = idle_seconds

    def run(self, job: Job, name: str) -> threading.Thread:
        """Run ``job`` in an idle thread, or a new one; return that thread (daemonic, renamed ``name``)."""
        with self._lock:
            worker = self._idle.pop() if self._idle else None
        if worker is None:
            worker = _Worker(job)
            worker.thread = threading.Thread(target=self._loop, args=(worker,), name=name, daemon=True)
            worker.thread.start()
            return worker.thread
        assert worker.thread is not None
        worker.thread.name = name
        worker.job = job
        worker.wake.release()
        return worker.thread

    def close(self) -> None:
        """End the idle threads now, and every other one once its job is done."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.job = None
            worker.wake.release()

    def _loop(self, worker: _Worker) -> None:
        while True:
            job, worker.job = worker.job, None
            if job is None:
                return
            job()
            del job  # nothing of the last connection stays alive with an idle thread
            with self._lock:
                if self._closed:
                    return
                self._idle.append(worker)
            if not worker.wake.acquire(True, self._idle_seconds):
                with self._lock:
                    if worker in self._idle:  # nobody took it meanwhile
                        self._idle.remove(worker)
                        return
                # run() or close() took it just as the wait timed out: its job (or None) is coming.
                worker.wake.acquire()
