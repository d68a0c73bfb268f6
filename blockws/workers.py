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
import importlib
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

from .connection import DEFAULT_CLOSE_TIMEOUT, WebSocket
from .listening import check_reuse_port, listen_tcp
from .server import Server, check_grace, check_options, serve

__all__ = ["LoadError", "load_handler", "run", "run_cli", "serve_until_signalled"]

logger = logging.getLogger("blockws.workers")

#: The signals that stop a server (and a supervisor).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RESTART_DELAY = 0.1  # doubled once for any death: 0.2 s after a worker that lived
_MAX_RESTART_DELAY = 10.0
_YOUNG = 10.0  # a worker that dies younger than this makes the next delay longer
# Past close_timeout, which is more than Server.shutdown() takes (its grace
# + 1 s) unless shutdown_grace is set longer.
_KILL_MARGIN = 3.0
_PARENT_CHECK = 1.0  # how often a worker checks its supervisor is still there


class LoadError(Exception):
    """``MODULE:HANDLER`` names no module, no attribute, or something not callable."""


def load_handler(spec: str) -> Callable[[WebSocket], Any]:
    """The callable ``MODULE:HANDLER`` names, importing ``MODULE``.

    The current directory goes first on ``sys.path`` (as with ``python -m``).
    An exception raised by the module's own code propagates as it is.

    Raises:
        LoadError: a malformed spec, a missing module or attribute, an
            attribute that is not callable.
    """
    module_name, sep, attributes = spec.partition(":")
    if not sep or not module_name or not attributes:
        raise LoadError(f"{spec!r} is not MODULE:HANDLER (e.g. app:handler, or package.module:obj.method)")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module asked for (or a package on its way): a module it
        # imports that is missing is a bug in it, shown with its traceback.
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        raise LoadError(f"no module named {exc.name!r} (from {spec!r}; looked in {here} and sys.path)") from None
    target: Any = module
    path = module_name
    for name in attributes.split("."):
        try:
            target = getattr(target, name)
        except AttributeError:
            raise LoadError(f"{path} has no attribute {name!r} (from {spec!r})") from None
        path = f"{path}.{name}" if path != module_name else f"{module_name}:{name}"
    if not callable(target):
        raise LoadError(f"{spec} is a {type(target).__name__}, not a callable taking a WebSocket")
    handler: Callable[[WebSocket], Any] = target
    return handler


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


def serve_until_signalled(
    make_server: Callable[[], Server], on_listening: Callable[[Server], None] | None = None, parent: int | None = None
) -> int:
    """Run ``make_server()``'s accept loop until SIGTERM or SIGINT, then shut it down (1001).

    Call from the main thread. ``parent``: also stop when this process is no
    longer the child of that pid (its supervisor died). Returns 0 after a
    signal, 1 if the accept loop failed.
    """
    received: list[int] = []
    with _signals_to(received, STOP_SIGNALS) as wake:
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
            while not received:
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
    **options: Any,
) -> int:
    """Serve ``handler`` on ``host:port`` with ``workers`` processes until SIGTERM or SIGINT.

    Call from the main thread. ``on_listening(address)`` is called once,
    when the port is bound (``address`` as ``getsockname()`` gives it).
    ``options`` are :func:`blockws.serve`'s. Returns the exit status: 0
    after a signal.

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
    check_options({name: value for name, value in options.items() if name not in ("max_connections", "shutdown_grace")})
    if "shutdown_grace" in options:
        check_grace("shutdown_grace", options["shutdown_grace"])
    return _Supervisor(handler, host or "", port or 0, workers, reuse_port, backlog, options).run(on_listening)


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
        self.workers = [_Worker() for _ in range(workers)]
        self.received: list[int] = []
        self.listener: socket.socket | None = None  # shared, or the next worker's own
        self.wake: socket.socket | None = None

    def _listen(self) -> socket.socket:
        return listen_tcp(self.host, self.port, None, None, self.backlog, self.reuse_port)

    def run(self, on_listening: Callable[[Any], None] | None) -> int:
        self.listener = self._listen()
        address = self.listener.getsockname()
        self.port = address[1]  # port 0: every worker's own socket binds the one picked
        if on_listening is not None:
            on_listening(address)
        try:
            with _signals_to(self.received, (*STOP_SIGNALS, signal.SIGCHLD)) as self.wake:
                self._loop()
        finally:
            if self.listener is not None:
                self.listener.close()
            for worker in self.workers:  # only after an unexpected error
                if worker.pid is not None:
                    self._signal(worker.pid, signal.SIGKILL)
                    os.waitpid(worker.pid, 0)
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
                if deadline is None:
                    logger.info("%s: stopping the workers", signal.Signals(signum).name)
                    deadline = time.monotonic() + self._stop()
                else:
                    logger.warning("%s again: killing the workers", signal.Signals(signum).name)
                    deadline = time.monotonic()
            self._reap(stopping=deadline is not None)
            now = time.monotonic()
            alive = [w for w in self.workers if w.pid is not None]
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
            select.select([self.wake], [], [], timeout)
            _drain(self.wake)

    def _stop(self) -> float:
        """Signal every worker to stop; how long they have."""
        if self.listener is not None:
            # Connections queued on it are theirs to take until they stop.
            self.listener.close()
            self.listener = None
        for worker in self.workers:
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
            worker = next((w for w in self.workers if w.pid == pid), None)
            if worker is None:  # pragma: no cover - a child the handler's module made
                continue
            worker.pid = None
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
        # Signals wait until the child has its own handlers (not the supervisor's).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {*STOP_SIGNALS, signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child (coverage doesn't follow it)
                self._child(listener, blocked)
        except OSError as exc:  # EAGAIN, ENOMEM: try again later
            self._retry_later(worker, f"can't start a worker ({exc})")
            return
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            if self.reuse_port:
                listener.close()  # the worker's own now: its queue goes with it
                self.listener = None
        worker.pid = pid
        worker.started = time.monotonic()
        logger.info("worker %d started", pid)

    @staticmethod
    def _retry_later(worker: _Worker, problem: str) -> None:
        """As after a worker dying young: the delay grows."""
        worker.young_deaths += 1
        delay = min(_RESTART_DELAY * 2 ** (worker.young_deaths + 1), _MAX_RESTART_DELAY)
        worker.start_at = time.monotonic() + delay
        logger.warning("%s; trying again in %.1f s", problem, delay)

    def _child(self, listener: socket.socket, blocked: set[int | signal.Signals]) -> None:  # pragma: no cover
        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (*STOP_SIGNALS, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            assert self.wake is not None
            self.wake.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            supervisor = os.getppid()
            status = serve_until_signalled(
                lambda: Server(self.handler, sock=listener, backlog=self.backlog, **self.options), parent=supervisor
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
    module raised (with the traceback), 0 after SIGTERM or SIGINT.
    """
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
        **options,
    )
