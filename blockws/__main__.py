"""``python -m blockws`` (or ``blockws``): an interactive client, servers, a demo.

    blockws ws://host:port/path [--trace] [--header "Name: value"] [--user NAME] [--cafile FILE] ...
    blockws serve [--host H] [--port P] [--echo | --chat | --broadcast-stdin] [--trace]
    blockws serve MODULE:HANDLER [--workers N] [--reuse-port] [--host H] [--port P] [--trace]
    (both: [--no-compression] [--keepalive SECONDS])
    blockws demo
    blockws --version

The client sends each line typed (or piped) as a text message and prints
messages as they arrive. A line starting with ``/`` is a command
(``/help`` lists them; an unknown one gets a hint and is not sent);
``//text`` sends ``/text``. ``--trace`` shows every frame in both
directions and the handshake: the teaching view of what a WebSocket puts on
the wire.
"""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import socket
import ssl
import sys
import threading
import warnings
from collections.abc import Sequence
from typing import Any, TextIO

from . import State, __version__, connect, serve
from .broadcasting import broadcast
from .codes import CloseCode, Opcode, is_clean_close
from .connection import WebSocket
from .exceptions import CertificateVerifyError, ConnectionClosed, InvalidStatus, ProtocolError, WebSocketError
from .frames import FrameHeader, encode_close
from .http import Request, Response, redact_header, redact_header_line
from .keepalive import KeepAlive

_print_lock = threading.Lock()


def say(text: str, stream: TextIO | None = None) -> None:
    """Print whole lines from several threads without interleaving them."""
    with _print_lock:
        print(text, file=stream or sys.stdout, flush=True)


# -- the teaching view --------------------------------------------------------------


def describe_frame(direction: str, header: FrameHeader, preview: bytes) -> str:
    """One aligned line per frame: FIN, RSV, opcode, MASK, length, key, payload."""
    try:
        name = Opcode(header.opcode).name
    except ValueError:
        name = f"0x{header.opcode:x}"
    rsv = "".join("1" if header.rsv & bit else "0" for bit in (0x40, 0x20, 0x10))
    key = f"key={header.mask.hex()}" if header.mask else "key=--------"
    line = f"{direction} FIN={int(header.fin)} RSV={rsv} {name:<6} MASK={int(header.mask is not None)} "
    line += f"len={header.length:<7} {key}  "
    if header.opcode == Opcode.CLOSE and len(preview) >= 2:
        line += f"code={int.from_bytes(preview[:2], 'big')} {preview[2:].decode('utf-8', 'replace')!r}"
    elif header.rsv & 0x40:
        line += f"(compressed) {preview[:16].hex()}"
    elif header.opcode in (Opcode.TEXT, Opcode.CONT) and _is_text(preview):
        line += repr(preview.decode("utf-8", "replace"))
    else:
        line += preview[:32].hex(" ")
    if header.length > len(preview):
        line += " ..."
    return line


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _trace_frames(direction: str, header: FrameHeader, preview: bytes) -> None:
    say(describe_frame(direction, header, preview), sys.stderr)


def _trace_http(message: Request | Response, direction: str) -> None:
    first = (
        f"{message.method} {message.target} HTTP/1.1"
        if isinstance(message, Request)
        else f"HTTP/1.1 {message.status} {message.reason}"
    )
    lines = [first] + [f"{name}: {redact_header(name, value)}" for name, value in message.headers.items()]
    say("\n".join(f"{direction} {line}" for line in lines) + f"\n{direction}", sys.stderr)


# -- the client --------------------------------------------------------------------


def _parse_headers(values: Sequence[str]) -> list[tuple[str, str]]:
    headers = []
    for value in values:
        name, sep, rest = value.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header needs 'Name: value', not {redact_header_line(value)}")
        headers.append((name.strip(), rest.strip()))
    return headers


def _show(message: str | bytes) -> str:
    return f"< {message}" if isinstance(message, str) else f"< (binary) {message.hex(' ')}"


class _Stop(Exception):
    """Ends the command with one line on stderr and exit status 1 (no traceback)."""


class _UsageError(ValueError):
    """A mistyped command: its hint is printed and the session goes on."""


def _ask_password(user: str) -> Any:
    # No count here: connect() stops asking after auth.MAX_AUTH_ATTEMPTS, the budget in one place.
    def ask(challenge: Any) -> tuple[str, str] | None:
        prompt = f"password for {user} ({challenge.scheme} realm {challenge.realm!r}): "
        try:
            with warnings.catch_warnings():
                # Without a terminal getpass reads stdin and says so itself;
                # the extra warning's two lines of source would only confuse.
                warnings.simplefilter("ignore", getpass.GetPassWarning)
                return user, getpass.getpass(prompt)
        except EOFError:
            say("", sys.stderr)  # end the prompt's line
            raise _Stop("no password given (end of input at the password prompt)") from None
        except KeyboardInterrupt:
            say("", sys.stderr)
            raise

    return ask


def run_client(args: argparse.Namespace) -> int:
    options: dict[str, Any] = {
        "headers": _parse_headers(args.header),
        "subprotocols": args.subprotocol or None,
        "origin": args.origin,
        "open_timeout": args.timeout,
    }
    if args.no_compression:
        options["compression"] = None
    if args.proxy:
        options["proxy"] = args.proxy
    # connect() refuses an ssl_context with a ws:// URL: the TLS options
    # only matter for wss:// (a ws:// URL redirected to wss:// gets defaults).
    secure = args.url.lower().startswith(("wss:", "https:"))
    if args.cafile and secure:
        try:
            options["ssl_context"] = ssl.create_default_context(cafile=args.cafile)
        except OSError as exc:  # missing, unreadable, or not PEM (ssl.SSLError)
            raise _Stop(f"can't load --cafile {args.cafile}: {exc.strerror or exc}") from None
    if args.insecure and secure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        options["ssl_context"] = context
    if args.user:
        options["auth"] = _ask_password(args.user)
    if args.trace:
        options["trace"] = _trace_frames  # from the first frame, which the keepalive may read
    try:
        ws = connect(args.url, **options)
    except InvalidStatus as exc:
        if args.trace:
            _trace_http(exc.response, "<")
        raise
    try:
        return _session(ws, args)
    finally:
        # Whatever ended the session, the peer gets a Close, not a reset.
        ws.close()


def _session(ws: WebSocket, args: argparse.Namespace) -> int:
    if args.trace:
        if ws.request is not None:
            _trace_http(ws.request, ">")
        if ws.response is not None:
            _trace_http(ws.response, "<")
    if ws.subprotocol is not None:
        say(f"subprotocol: {ws.subprotocol}", sys.stderr)
    interactive = sys.stdin.isatty()
    if interactive:
        say(f"connected to {ws.url} (type messages; /help lists the commands; Ctrl-D ends)")
    done = threading.Event()

    def reader() -> None:
        try:
            for message in ws:
                say(_show(message))
            reason = f" {ws.close_reason}" if ws.close_reason else ""
            say(f"connection closed by the peer: {ws.close_code}{reason}", sys.stderr)
        except ConnectionClosed as exc:
            say(f"connection lost: {exc}", sys.stderr)
        finally:
            done.set()

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    try:
        for line in sys.stdin:
            if done.is_set():
                break
            try:
                if not _command(ws, line.rstrip("\n")):
                    break
            except _UsageError as exc:
                say(f"blockws: {exc}", sys.stderr)
        else:
            # End of input: say so like shutdown(SHUT_WR) and read the rest.
            if ws.state is State.OPEN:
                ws.shutdown(socket.SHUT_WR)
    except KeyboardInterrupt:
        pass
    except ConnectionClosed:
        pass
    done.wait(ws.close_timeout)
    ws.close()
    return 0 if ws.close_code is None or is_clean_close(ws.close_code) else 1


_CLOSE_USAGE = "/close [CODE [REASON]] takes 1000-1003, 1007-1014 or 3000-4999 and up to 123 bytes of reason"

#: Shown by /help and at the end of --help.
SESSION_COMMANDS = """\
commands in a session (any other line is sent as a text message):
  /ping                   send a ping, print the round trip
  /close [CODE [REASON]]  close the connection (default 1000) and end
  /binary HEX             send a binary message, e.g. /binary 00ff10
  /help                   list these commands
  //text                  send "/text": a line starting with one '/' is a command"""


def _command(ws: WebSocket, line: str) -> bool:
    """Run one input line; False when the session should end.

    Raises:
        _UsageError: a mistyped command; nothing was sent.
    """
    if not line.startswith("/") or line.startswith("//"):
        # A doubled slash escapes one: "//text" sends "/text".
        ws.sendall(line[1:] if line.startswith("//") else line)
        return True
    command, _, rest = line.partition(" ")
    if command == "/ping":
        if rest.strip():
            raise _UsageError(f"/ping takes no arguments (to send the line as a message: /{line})")
        say(f"pong in {ws.ping() * 1000:.2f} ms")
    elif command == "/help":
        say(SESSION_COMMANDS, sys.stderr)
    elif command == "/close":
        parts = rest.split(maxsplit=1)
        try:
            code = int(parts[0]) if parts else CloseCode.NORMAL_CLOSURE
            reason = parts[1] if len(parts) > 1 else ""
            encode_close(code, reason)  # checks code and length before anything is sent
        except (ValueError, ProtocolError) as exc:
            raise _UsageError(f"{_CLOSE_USAGE} ({exc})") from None
        ws.close(code, reason)
        return False
    elif command == "/binary":
        try:
            data = bytes.fromhex(rest)
        except ValueError as exc:
            raise _UsageError(f"/binary takes hex digits such as '/binary 00ff10' ({exc})") from None
        ws.sendall(data)
    else:
        # Sending a mistyped command to the server would be a surprise.
        raise _UsageError(f"unknown command {command}: /help lists the commands; /{line} sends the line as a message")
    return True


# -- the servers -------------------------------------------------------------------


def serve_options(args: argparse.Namespace) -> dict[str, Any]:
    """:func:`blockws.serve`'s options from ``blockws serve``'s ``--no-compression`` and ``--keepalive``."""
    options: dict[str, Any] = {}
    if args.no_compression:
        options["compression"] = None
    if args.keepalive is not None:
        options["keepalive"] = KeepAlive(args.keepalive, args.keepalive) if args.keepalive else None
    if args.max_connections_per_ip is not None:
        options["max_connections_per_ip"] = args.max_connections_per_ip
    return options


def peer_name(ws: WebSocket) -> str:
    """Who ``ws`` is connected to, for the server's messages: ``host:port``, or ``unix:PATH``.

    A Unix socket client rarely has a name of its own (its address is
    ``''``): the path it came in through, the server's, stands for it.
    """
    address = ws.remote_address
    if address is None:  # the socket was no longer connected when the WebSocket was made
        return "an unknown peer"
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    path = address or ws.local_address
    if isinstance(path, bytes):  # Linux's abstract namespace: a NUL, then a name
        path = "@" + path[1:].decode(errors="backslashreplace") if path[:1] == b"\0" else os.fsdecode(path)
    return f"unix:{path}" if path else "a Unix socket peer"


def run_server(args: argparse.Namespace) -> int:
    clients: set[WebSocket] = set()
    lock = threading.Lock()

    def send_to_all(message: str | bytes, sender: WebSocket | None = None) -> None:
        with lock:
            targets = [c for c in clients if c is not sender]
        # A client that doesn't read doesn't hold up the others: it misses the message.
        for slow in broadcast(targets, message):
            say(f"{peer_name(slow)} is too slow: a message skipped", sys.stderr)

    def handler(ws: WebSocket) -> None:
        if args.trace:
            # The handshake is over when the handler runs: show what it was.
            if ws.request is not None:
                _trace_http(ws.request, "<")
            if ws.response is not None:
                _trace_http(ws.response, ">")
        with lock:
            clients.add(ws)
        # Said once the client is in the set, so lines typed after it reach it.
        say(f"connection from {peer_name(ws)}", sys.stderr)
        try:
            for message in ws:
                if args.chat:
                    send_to_all(message, ws)
                elif not args.broadcast_stdin:
                    ws.sendall(message)
        finally:
            with lock:
                clients.discard(ws)
            say(f"{peer_name(ws)} left ({ws.close_code})", sys.stderr)

    trace = _trace_frames if args.trace else None
    with serve(handler, args.host, args.port, reuse_port=args.reuse_port, trace=trace, **serve_options(args)) as server:
        say(
            f"{'chat' if args.chat else 'broadcast' if args.broadcast_stdin else 'echo'} server on ws://{args.host}:{server.port}/"
        )
        if hasattr(signal, "SIGUSR1"):
            from .workers import stats_line

            def print_stats(signum: int, frame: object) -> None:
                say(f"blockws: {os.getpid()}: {stats_line(server.stats())}", sys.stderr)

            signal.signal(signal.SIGUSR1, print_stats)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            if args.broadcast_stdin:
                for line in sys.stdin:
                    send_to_all(line.rstrip("\n"))
            thread.join()
        except KeyboardInterrupt:
            pass
    return 0


# -- the demo ------------------------------------------------------------------------


def demo() -> int:
    """A server and a client in one process, saying what happens."""

    def handler(ws: WebSocket) -> None:
        say(f"server: connection from {peer_name(ws)}")
        for message in ws:
            say(f"server: received {message!r}, echoing it")
            ws.sendall(message)
        say(f"server: client closed with code {ws.close_code}")

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"ws://127.0.0.1:{server.port}/demo"
        say(f"client: connecting to {url}")
        with connect(url, timeout=5) as ws:
            say("client: connected")
            messages: list[str | bytes] = ["hello", "WebSockets carry messages", b"\x00\x01binary\xff"]
            for message in messages:
                n = ws.send(message)
                say(f"client: send({message!r}) accepted {n} of {len(message)}")
                say(f"client: recv() -> {ws.recv()!r}")
            say("client: closing (code 1000)")
        say(f"client: closed, close_code={ws.close_code}")
    return 0


_OTHER_COMMANDS = """\
other commands:
  blockws serve [--host H] [--port P] [--echo | --chat | --broadcast-stdin] [-v]
                          run an echo (default), chat or broadcast server;
                          its options: blockws serve --help
  blockws serve MODULE:HANDLER [--workers N] [--reuse-port] [--host H] [--port P]
                          run your handler, in N processes sharing the port
                          (both: [--no-compression] [--keepalive SECONDS])
  blockws demo            a server and a client in one process (blockws demo --help)"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("serve", "demo"):
        parser = argparse.ArgumentParser(prog=f"blockws {argv[0]}")
        if argv[0] == "serve":
            parser.description = (
                "Run a WebSocket server: echo (default), chat, broadcast stdin, or your handler (MODULE:HANDLER)."
            )
            parser.add_argument("--host", default="127.0.0.1")
            parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
            mode = parser.add_mutually_exclusive_group()
            mode.add_argument("--echo", action="store_true", help="send every message back (default)")
            mode.add_argument("--chat", action="store_true", help="send every message to every other client")
            mode.add_argument("--broadcast-stdin", action="store_true", help="send lines typed here to all clients")
            parser.add_argument("-v", "--trace", action="store_true", help="show every frame")
            parser.add_argument(
                "app",
                nargs="?",
                metavar="MODULE:HANDLER",
                help="serve this callable instead (imported like gunicorn's and uvicorn's: app:handler)",
            )
            parser.add_argument(
                "--workers", type=int, default=1, metavar="N", help="processes sharing the port (with MODULE:HANDLER)"
            )
            parser.add_argument(
                "--reuse-port",
                action="store_true",
                help="SO_REUSEPORT: a listening socket per process, balanced by the kernel (Linux)",
            )
            parser.add_argument(
                "--no-compression",
                action="store_true",
                help="don't accept permessage-deflate (about 100 KiB less per connection)",
            )
            parser.add_argument(
                "--keepalive",
                type=float,
                metavar="SECONDS",
                help="ping quiet clients this often, drop them after as long without an answer (default 20; 0: never)",
            )
            parser.add_argument(
                "--max-connections-per-ip",
                type=int,
                metavar="N",
                help="answer 429 to an address that holds N open connections already (default: no limit)",
            )
        else:
            parser.description = "A server and a client in one process exchanging a few messages."
        args = parser.parse_args(argv[1:])
        runner: Any = run_server if argv[0] == "serve" else (lambda _: demo())
        if argv[0] == "serve":
            if args.app is not None and (args.echo or args.chat or args.broadcast_stdin):
                parser.error("MODULE:HANDLER serves your handler: not with --echo, --chat or --broadcast-stdin")
            if args.workers < 1 or (args.workers > 1 and args.app is None):
                parser.error("--workers takes 1 or more, and more than 1 only with MODULE:HANDLER")
            if args.keepalive is not None and args.keepalive < 0:
                parser.error("--keepalive takes seconds: 0 or more")
            if args.max_connections_per_ip is not None and args.max_connections_per_ip < 1:
                parser.error("--max-connections-per-ip takes 1 or more")
            if args.app is not None:
                from .workers import run_cli

                runner = lambda a: run_cli(a, _trace_frames if a.trace else None, serve_options(a))  # noqa: E731
    else:
        parser = argparse.ArgumentParser(
            prog="blockws",
            description="An interactive WebSocket client (also: 'blockws serve', 'blockws demo').",
            epilog=f"{SESSION_COMMANDS}\n\n{_OTHER_COMMANDS}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.add_argument("--version", action="version", version=f"blockws {__version__}")
        parser.add_argument("url", help="ws:// or wss:// URL (http:// and https:// are taken as ws:// and wss://)")
        parser.add_argument("-v", "--trace", action="store_true", help="show the handshake and every frame")
        parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
        parser.add_argument("--subprotocol", action="append", default=[], help="offer a subprotocol (repeatable)")
        parser.add_argument("--origin")
        parser.add_argument("--user", help="user name; the password is asked for on a 401")
        parser.add_argument("--proxy", help="http://host:port, socks5://host:port, ...")
        trust = parser.add_mutually_exclusive_group()
        trust.add_argument("--cafile", metavar="FILE", help="trust the CA certificate(s) in FILE (PEM) for wss://")
        trust.add_argument("--insecure", action="store_true", help="don't verify TLS certificates (for testing only)")
        parser.add_argument("--no-compression", action="store_true")
        parser.add_argument("--timeout", type=float, default=10.0, help="opening timeout in seconds")
        args = parser.parse_args(argv)
        runner = run_client
    try:
        return int(runner(args))
    except KeyboardInterrupt:
        say("blockws: interrupted", sys.stderr)
        return 130  # the shell's convention for SIGINT
    except _Stop as exc:
        say(f"blockws: {exc}", sys.stderr)
        return 1
    except CertificateVerifyError as exc:
        # The library's advice (ssl_context=...) is for programs: say it in options.
        if exc.mismatch:
            advice = "connect with a name the certificate lists"
        else:
            advice = "--cafile FILE trusts the CA that signed it (--insecure skips the check: for testing only)"
        say(f"blockws: {exc.describe()}; {advice}", sys.stderr)
        return 1
    except (WebSocketError, OSError, ValueError) as exc:
        say(f"blockws: {type(exc).__name__}: {exc}" if not str(exc) else f"blockws: {exc}", sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
