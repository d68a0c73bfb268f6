"""Several processes serving one port: ``blockws serve MODULE:HANDLER --workers N``.

The handler is loaded as gunicorn and uvicorn load an application:
``MODULE:HANDLER`` imports ``MODULE`` (the current directory first on
``sys.path``) and takes its attribute ``HANDLER`` (``obj.method`` works too).

Theory of operation. One worker (the default) serves in the process itself.
With more, a supervisor loads the handler and binds the port once, then
forks the workers; each runs a :class:`~blockws.server.Server` on the
listening socket it inherited (or, with ``reuse_port``, on one of its own).

Why inherit one listener rather than bind one per worker with
``SO_REUSEPORT``? Both spread connections on Linux. With one listener every
idle worker's selector wakes for a new connection and the first to
``accept()`` takes it: a worker busy running handlers (holding its GIL) is
slower to get there, so connections go to the workers that have time for
them (with one of 3 workers spinning in a handler, it took none of 45 new
connections; with ``SO_REUSEPORT``, 12), a worker's death loses no queued connection (the others accept
them), and it works wherever ``fork`` does. ``SO_REUSEPORT`` gives each
worker an accept queue of its own and the kernel picks one by a hash of the
client's address and port: an even spread that no wake-up race can skew,
without waking every worker, but blind to how busy a worker is, and the
connections queued for a worker that dies are reset. ``reuse_port=True``
chooses it; the supervisor still binds every worker's socket (so a taken
port is one error at startup, not a worker dying over and over).

Why fork? The handler is imported once, before any worker starts, so a
missing module is one clear error; workers start (and restart) in
milliseconds, sharing the parent's memory. The supervisor runs no thread of
its own, so forking it is safe unless the handler's module starts threads
when imported. Without ``os.fork`` (Windows) only one worker runs.

Signals. SIGTERM or SIGINT (Ctrl-C) makes the supervisor close its copy of
the listener and send SIGTERM to every worker; a worker then stops
accepting and closes its connections with 1001 (:meth:`Server.shutdown`),
aborting those whose peers haven't answered within ``shutdown_grace``
(1.5 s). The supervisor waits for them and exits with
status 0; a worker still there ``close_timeout`` + 3 s later (or at a second
signal) is killed. A worker also stops when its supervisor is gone.

Restarts. A worker that dies otherwise is replaced after a delay, 0.2 s
after one that had lived 10 s or more, doubling for each young death in a
row up to 10 s: a worker that can't live doesn't make the supervisor fork
without pause. Every start and death is logged on ``blockws.workers``.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from .codes import CloseCode
from .connection import DEFAULT_CLOSE_TIMEOUT, WebSocket
from .listening import check_reuse_port, listen_tcp
from .loading import LoadError as LoadError
from .loading import forget_modules
from .loading import load_handler as load_handler
from .refusing import check_per_ip
from .server import Server, check_options, serve
from .stopping import check_grace

__all__ = ["LoadError", "load_handler", "run", "run_cli", "serve_until_signalled", "stats_line"]

logger = logging.getLogger("blockws.workers")

#: The signals that stop a server (and a supervisor).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# SIGUSR1: print the stats; SIGHUP: a rolling restart (POSIX only).
_SIGUSR1: int | None = getattr(signal, "SIGUSR1", None)
_SIGHUP: int | None = getattr(signal, "SIGHUP", None)
_OTHER_SIGNALS: tuple[int, ...] = tuple(sig for sig in (_SIGUSR1, _SIGHUP) if sig is not None)
_RESTART_DELAY = 0.1  # doubled once for any death: 0.2 s after a worker that lived
_MAX_RESTART_DELAY = 10.0
_YOUNG = 10.0  # a worker that dies younger than this makes the next delay longer
# Past close_timeout, which is more than Server.shutdown() takes (its grace
# + 1 s) unless shutdown_grace is set longer.
_KILL_MARGIN = 3.0
_PARENT_CHECK = 1.0  # how often a worker checks its supervisor is still there


# -- one server until a signal ------------------------------------------------------


@contextmanager
def _signals_to(received: list[int], signals: tuple[int, ...]) -> Iterator[socket.socket]:
    """Record ``signals`` in ``received`` and wake the yielded socket for each (main thread only).

    The handlers only record: the work is done where the main thread reads
    the socket, never inside a handler.
    """
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def record(signum: int, frame: object) -> None:
        received.append(signum)

    previous = {sig: signal.signal(sig, record) for sig in signals}
    old_fd = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
    try:
        yield wake_r
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        wake_r.close()
        wake_w.close()


def _drain(sock: socket.socket) -> None:
    try:
        while sock.recv(512):
            pass
    except OSError:  # BlockingIOError: nothing more
        pass


def stats_line(stats: dict[str, Any]) -> str:
    """:meth:`Server.stats` on one line: ``connections=2 accepted=10 ... closed=1000:8,1006:1``."""
    parts = [f"{key}={value}" for key, value in stats.items() if key != "closed"]
    closed = ",".join(f"{code}:{count}" for code, count in sorted(stats["closed"].items()))
    return " ".join([*parts, f"closed={closed or '-'}"])


def serve_until_signalled(
    make_server: Callable[[], Server],
    on_listening: Callable[[Server], None] | None = None,
    parent: int | None = None,
    *,
    on_accepting: Callable[[], None] | None = None,
    restartable: bool = False,
) -> int:
    """Run ``make_server()``'s accept loop until SIGTERM or SIGINT, then shut it down (1001).

    Call from the main thread. ``parent``: also stop when this process is no
    longer the child of that pid (its supervisor died). ``on_accepting()``
    is called once the accept loop runs. SIGUSR1 prints :meth:`Server.stats`
    on one line on stderr. SIGHUP, when ``restartable`` (a worker of a
    supervisor), stops the server for a restart: it stops accepting, lets
    the handshakes under way finish and closes the connections with 1012;
    otherwise it is ignored, with a line on stderr. Returns 0 after a
    signal, 1 if the accept loop failed.
    """
    received: list[int] = []
    restart = False
    with _signals_to(received, (*STOP_SIGNALS, *_OTHER_SIGNALS)) as wake:
        if _OTHER_SIGNALS:  # a new worker's were blocked until handled
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _OTHER_SIGNALS)
        server = make_server()
        thread = None
        try:
            if on_listening is not None:
                on_listening(server)

            def accept_loop() -> None:
                try:
                    server.serve_forever()
                finally:
                    try:
                        wake.send(b"\0")  # any byte: the main thread looks at the thread
                    except OSError:
                        pass

            thread = threading.Thread(target=accept_loop, name="blockws accept loop", daemon=True)
            thread.start()
            if on_accepting is not None:
                on_accepting()
            while True:
                stop = False
                while received and not stop:
                    signum = received.pop(0)
                    if signum == _SIGUSR1:
                        # One write, the newline in it: print() writes the line and its
                        # end apart, and the workers' lines then interleave on the shared stderr.
                        sys.stderr.write(f"blockws: {os.getpid()}: {stats_line(server.stats())}\n")
                        sys.stderr.flush()
                    elif signum == _SIGHUP and not restartable:
                        print(
                            "blockws: SIGHUP ignored: a rolling restart needs a supervisor (--workers 2 or more)",
                            file=sys.stderr,
                            flush=True,
                        )
                    else:
                        restart = signum == _SIGHUP
                        stop = True
                if stop:
                    break
                if not thread.is_alive():
                    return 1  # its exception is on stderr already
                if parent is not None and os.getppid() != parent:
                    logger.warning("worker %d: the supervisor is gone; stopping", os.getpid())
                    break
                select.select([wake], [], [], _PARENT_CHECK if parent is not None else None)
                _drain(wake)
            # More signals meanwhile are recorded and ignored: one shutdown.
            return 0
        finally:
            if restart:
                server.shutdown(code=CloseCode.SERVICE_RESTART, finish_handshakes=True)
            else:
                server.shutdown()
            if thread is not None:
                thread.join(5.0)


# -- the supervisor -----------------------------------------------------------------


class _Worker:
    def __init__(self) -> None:
        self.pid: int | None = None
        self.started = 0.0
        self.young_deaths = 0
        self.start_at = 0.0  # when to (re)start it
        self.ready = False  # its accept loop runs
        self.ready_fd: int | None = None  # the pipe it says so on


def _describe(status: int) -> str:
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def run(
    handler: Callable[[WebSocket], Any],
    host: str | None = None,
    port: int | None = None,
    *,
    workers: int = 1,
    reuse_port: bool = False,
    on_listening: Callable[[Any], None] | None = None,
    backlog: int = 128,
    reload: Callable[[], Callable[[WebSocket], Any]] | None = None,
    **options: Any,
) -> int:
    """Serve ``handler`` on ``host:port`` with ``workers`` processes until SIGTERM or SIGINT.

    Call from the main thread. ``on_listening(address)`` is called once,
    when the port is bound (``address`` as ``getsockname()`` gives it).
    ``options`` are :func:`blockws.serve`'s. Returns the exit status: 0
    after a signal.

    With ``workers`` > 1, SIGHUP is a rolling restart: ``reload()`` (if
    given) returns the handler the new workers run (an exception keeps the
    old workers serving, with its traceback on stderr); N new workers start
    on the same listening socket and, once they all accept, the old ones
    stop accepting, let their handshakes under way finish and close their
    connections with 1012. SIGUSR1 makes every worker print its
    :meth:`Server.stats` on stderr.

    Raises:
        ValueError: ``workers`` < 1; ``workers`` > 1 without ``os.fork``;
            ``reuse_port`` without ``SO_REUSEPORT``; a bad option.
        OSError: the port can't be bound.
    """
    if workers < 1:
        raise ValueError(f"workers={workers}: at least 1")
    if workers == 1:

        def make() -> Server:
            return serve(handler, host, port, reuse_port=reuse_port, backlog=backlog, **options)

        return serve_until_signalled(make, None if on_listening is None else lambda s: on_listening(s.address))
    if not hasattr(os, "fork"):
        raise ValueError(f"workers={workers} needs os.fork(), which this platform ({sys.platform}) lacks")
    if reuse_port:
        check_reuse_port()
    # The options are checked here, once, not by every worker as it starts.
    own = ("max_connections", "max_connections_per_ip", "shutdown_grace")
    check_options({name: value for name, value in options.items() if name not in own})
    if "shutdown_grace" in options:
        check_grace("shutdown_grace", options["shutdown_grace"])
    check_per_ip(options.get("max_connections_per_ip"))
    supervisor = _Supervisor(handler, host or "", port or 0, workers, reuse_port, backlog, options)
    supervisor.reload = reload
    return supervisor.run(on_listening)


class _Supervisor:
    def __init__(
        self,
        handler: Callable[[WebSocket], Any],
        host: str,
        port: int,
        workers: int,
        reuse_port: bool,
        backlog: int,
        options: dict[str, Any],
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.backlog = backlog
        self.options = options
        self.reload: Callable[[], Callable[[WebSocket], Any]] | None = None
        self.count = workers
        self.workers = [_Worker() for _ in range(workers)]
        # A rolling restart: the old workers, serving until every new one
        # accepts (then told to stop with SIGHUP), and those told, still
        # closing. Neither is restarted when it exits.
        self.old: list[_Worker] = []
        self.retiring: list[_Worker] = []
        self.received: list[int] = []
        self.listener: socket.socket | None = None  # shared, or the next worker's own
        self.wake: socket.socket | None = None

    def _listen(self) -> socket.socket:
        return listen_tcp(self.host, self.port, None, None, self.backlog, self.reuse_port)

    def _everyone(self) -> list[_Worker]:
        return [*self.workers, *self.old, *self.retiring]

    def run(self, on_listening: Callable[[Any], None] | None) -> int:
        self.listener = self._listen()
        address = self.listener.getsockname()
        self.port = address[1]  # port 0: every worker's own socket binds the one picked
        if on_listening is not None:
            on_listening(address)
        try:
            with _signals_to(self.received, (*STOP_SIGNALS, signal.SIGCHLD, *_OTHER_SIGNALS)) as self.wake:
                self._loop()
        finally:
            if self.listener is not None:
                self.listener.close()
            for worker in self._everyone():  # only after an unexpected error
                if worker.pid is not None:
                    self._signal(worker.pid, signal.SIGKILL)
                    os.waitpid(worker.pid, 0)
                self._forget_ready(worker)
        return 0

    def _loop(self) -> None:
        assert self.wake is not None
        deadline: float | None = None  # set when stopping
        while True:
            # Signals first: with a signal sent to the whole process group
            # (Ctrl-C), a worker that stops first is not one to restart.
            while self.received:
                signum = self.received.pop(0)
                if signum == signal.SIGCHLD:
                    continue
                if signum == _SIGUSR1:
                    for worker in self._everyone():
                        if worker.pid is not None:
                            self._signal(worker.pid, signum)
                elif signum == _SIGHUP:
                    if deadline is None:
                        self._restart()
                elif deadline is None:
                    logger.info("%s: stopping the workers", signal.Signals(signum).name)
                    deadline = time.monotonic() + self._stop()
                else:
                    logger.warning("%s again: killing the workers", signal.Signals(signum).name)
                    deadline = time.monotonic()
            self._reap(stopping=deadline is not None)
            self._retire_when_ready()
            now = time.monotonic()
            alive = [w for w in self._everyone() if w.pid is not None]
            if deadline is not None:
                if not alive:
                    return
                if now >= deadline:
                    for worker in alive:
                        assert worker.pid is not None
                        logger.warning("worker %d: still running; killing it", worker.pid)
                        self._signal(worker.pid, signal.SIGKILL)
                    deadline = now + 60.0  # only reaping is left to do
                timeout: float | None = deadline - now
            else:
                for worker in self.workers:
                    if worker.pid is None and worker.start_at <= now:
                        self._start(worker)
                waiting = [w.start_at for w in self.workers if w.pid is None]
                timeout = max(min(waiting) - now, 0.0) if waiting else None
            waits: list[Any] = [self.wake, *(w.ready_fd for w in self.workers if w.ready_fd is not None)]
            readable = select.select(waits, [], [], timeout)[0]
            _drain(self.wake)
            for worker in self.workers:
                if worker.ready_fd is not None and worker.ready_fd in readable:
                    try:
                        worker.ready = os.read(worker.ready_fd, 1) == b"r"
                    except OSError:  # pragma: no cover - never for a pipe of ours
                        pass
                    self._forget_ready(worker)  # said, or died first (EOF): nothing more to read

    def _restart(self) -> None:
        """SIGHUP: start a new set of workers; the current ones stop once all of them accept."""
        if self.reload is not None:
            try:
                handler = self.reload()
            except BaseException:
                traceback.print_exc()
                logger.error("SIGHUP: the new code failed to load (above): the old workers keep serving")
                return
            self.handler = handler
        logger.info("SIGHUP: starting %d new workers; the old ones stop once they accept", self.count)
        # An earlier restart not finished yet: its new workers are old now too.
        for worker in self.workers:
            self._forget_ready(worker)
            if worker.pid is not None:
                self.old.append(worker)
        self.workers = [_Worker() for _ in range(self.count)]

    def _retire_when_ready(self) -> None:
        if not self.old or not all(w.ready and w.pid is not None for w in self.workers):
            return
        for worker in self.old:
            if worker.pid is not None:
                logger.info("worker %d: stopping (restart): closing its connections with 1012", worker.pid)
                assert _SIGHUP is not None
                self._signal(worker.pid, _SIGHUP)
                self.retiring.append(worker)
        self.old = []

    @staticmethod
    def _forget_ready(worker: _Worker) -> None:
        if worker.ready_fd is not None:
            os.close(worker.ready_fd)
            worker.ready_fd = None

    def _stop(self) -> float:
        """Signal every worker to stop; how long they have."""
        if self.listener is not None:
            # Connections queued on it are theirs to take until they stop.
            self.listener.close()
            self.listener = None
        for worker in self._everyone():
            if worker.pid is not None:
                self._signal(worker.pid, signal.SIGTERM)
        close_timeout = float(self.options.get("close_timeout") or DEFAULT_CLOSE_TIMEOUT)
        return max(close_timeout, float(self.options.get("shutdown_grace", 0.0)) + 1.0) + _KILL_MARGIN

    @staticmethod
    def _signal(pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # pragma: no cover - dead, not reaped yet: kill works on zombies
            pass

    def _reap(self, stopping: bool) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            gone = next((w for w in [*self.old, *self.retiring] if w.pid == pid), None)
            if gone is not None:  # an old worker: the new ones serve
                gone.pid = None
                self.old = [w for w in self.old if w is not gone]
                self.retiring = [w for w in self.retiring if w is not gone]
                logger.info("worker %d %s (replaced)", pid, _describe(status))
                continue
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:  # pragma: no cover - a child the handler's module made
                continue
            worker.pid = None
            worker.ready = False
            self._forget_ready(worker)
            if stopping:
                logger.info("worker %d %s", pid, _describe(status))
                continue
            now = time.monotonic()
            worker.young_deaths = worker.young_deaths + 1 if now - worker.started < _YOUNG else 0
            delay = min(_RESTART_DELAY * 2 ** (worker.young_deaths + 1), _MAX_RESTART_DELAY)
            worker.start_at = now + delay
            logger.warning("worker %d %s; starting another in %.1f s", pid, _describe(status), delay)

    def _start(self, worker: _Worker) -> None:
        listener = self.listener
        if self.reuse_port and listener is None:
            try:
                listener = self._listen()
            except OSError as exc:
                self._retry_later(worker, f"can't listen for a new worker ({exc})")
                return
        assert listener is not None
        ready_r, ready_w = os.pipe()
        # Signals wait until the child has its own handlers (not the supervisor's).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGCHLD, *_OTHER_SIGNALS})
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child (coverage doesn't follow it)
                os.close(ready_r)
                self._child(listener, blocked, ready_w)
        except OSError as exc:  # EAGAIN, ENOMEM: try again later
            os.close(ready_r)
            self._retry_later(worker, f"can't start a worker ({exc})")
            return
        finally:
            os.close(ready_w)
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            if self.reuse_port:
                listener.close()  # the worker's own now: its queue goes with it
                self.listener = None
        worker.pid = pid
        worker.started = time.monotonic()
        worker.ready = False
        worker.ready_fd = ready_r
        logger.info("worker %d started", pid)

    @staticmethod
    def _retry_later(worker: _Worker, problem: str) -> None:
        """As after a worker dying young: the delay grows."""
        worker.young_deaths += 1
        delay = min(_RESTART_DELAY * 2 ** (worker.young_deaths + 1), _MAX_RESTART_DELAY)
        worker.start_at = time.monotonic() + delay
        logger.warning("%s; trying again in %.1f s", problem, delay)

    def _child(
        self, listener: socket.socket, blocked: set[int | signal.Signals], ready: int
    ) -> None:  # pragma: no cover
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            assert self.wake is not None
            self.wake.close()
            for worker in self._everyone():  # the other workers' pipes are the supervisor's
                if worker.ready_fd is not None:
                    os.close(worker.ready_fd)
                    worker.ready_fd = None
            # SIGUSR1 and SIGHUP stay blocked (pending, not lost) until
            # serve_until_signalled() handles them: their default kills.
            signal.pthread_sigmask(signal.SIG_SETMASK, {*blocked, *_OTHER_SIGNALS})
            supervisor = os.getppid()

            def accepting() -> None:
                os.write(ready, b"r")
                os.close(ready)

            status = serve_until_signalled(
                lambda: Server(self.handler, sock=listener, backlog=self.backlog, **self.options),
                parent=supervisor,
                on_accepting=accepting,
                restartable=True,
            )
        except BaseException:
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(status)


# -- the command line ---------------------------------------------------------------


def run_cli(
    args: argparse.Namespace, trace: Callable[..., None] | None = None, options: dict[str, Any] | None = None
) -> int:
    """``blockws serve MODULE:HANDLER [--workers N] [--reuse-port] ...``: the exit status.

    ``options`` go to :func:`blockws.serve` (from ``--no-compression``, ``--keepalive``).

    2 when the handler can't be loaded (one line on stderr), 1 when its
    module raised (with the traceback), 0 after SIGTERM or SIGINT. With
    ``--workers`` N > 1, SIGHUP imports the handler's module afresh for a
    rolling restart (:func:`run`).
    """
    before = set(sys.modules)
    try:
        handler = load_handler(args.app)
    except LoadError as exc:
        print(f"blockws: {exc}", file=sys.stderr, flush=True)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"blockws: importing {args.app.partition(':')[0]!r} raised the error above", file=sys.stderr, flush=True)
        return 1
    if not logger.handlers:
        # Worker starts, deaths and restarts, one line each, as the CLI's other lines.
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(logging.Formatter("blockws: %(message)s"))
        logger.addHandler(stream)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    host = f"[{args.host}]" if ":" in args.host else args.host

    def listening(address: Any) -> None:
        print(f"{args.app} server on ws://{host}:{address[1]}/", flush=True)

    def reload() -> Callable[[WebSocket], Any]:
        forget_modules(before)
        try:
            return load_handler(args.app)
        except LoadError as exc:
            print(f"blockws: {exc}", file=sys.stderr, flush=True)
            raise

    options = dict(options or {})
    if trace is not None:
        options["trace"] = trace
    return run(
        handler,
        args.host,
        args.port,
        workers=args.workers,
        reuse_port=args.reuse_port,
        on_listening=listening,
        reload=reload,
        **options,
    )
