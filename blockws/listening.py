"""Listening sockets for :func:`blockws.serve`: TCP on IPv4 and IPv6, and Unix sockets.

A Unix socket's file is looked after here too: a stale one left by a dead
server is replaced, anything else at the path is left alone, and the file
is removed on close only if it is still the one this server made.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import stat
import sys

__all__ = ["check_reuse_port", "listen_tcp", "listen_unix", "remove_socket_file"]


def listen_tcp(
    host: str, port: int, family: int | None, dualstack_ipv6: bool | None, backlog: int, reuse_port: bool = False
) -> socket.socket:
    if reuse_port:
        check_reuse_port()
    if family is None:
        family = socket.AF_INET6 if dualstack_ipv6 else _family_of(host, port)
    elif family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(f"family={family!r}: AF_INET or AF_INET6 (path= for a Unix socket, sock= for others)")
    if dualstack_ipv6 is None:
        # "::" (or "" with AF_INET6) means every interface: IPv4 ones too,
        # where the platform can, as people expect of an "any" address.
        dualstack_ipv6 = family == socket.AF_INET6 and _is_unspecified(host) and socket.has_dualstack_ipv6()
    try:
        return socket.create_server(
            (host, port), family=family, backlog=backlog, reuse_port=reuse_port, dualstack_ipv6=dualstack_ipv6
        )
    except OSError as exc:
        if reuse_port and exc.errno in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
            # The constant exists but the kernel refuses the option (Linux before 3.9, WSL 1, ...).
            message = f"reuse_port=True: SO_REUSEPORT refused on this platform ({sys.platform}): {exc.strerror}"
            raise OSError(exc.errno, message) from None
        raise


def check_reuse_port() -> None:
    """Raise ValueError where ``socket`` has no SO_REUSEPORT (Windows, some builds)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        raise ValueError(
            f"reuse_port=True needs SO_REUSEPORT, which this platform ({sys.platform}) lacks: "
            "share one listening socket instead (serve(sock=...))"
        )


def _family_of(host: str, port: int) -> int:
    """IPv6 for an IPv6 literal; for a name, IPv4 if it has an IPv4 address.

    Names kept the IPv4 address they always had (``"localhost"`` is
    127.0.0.1, whatever order the resolver prefers); a name with only IPv6
    addresses works now instead of failing.
    """
    if not host:
        return socket.AF_INET  # all IPv4 interfaces, as before IPv6 support
    if ":" in host:
        return socket.AF_INET6
    families = [info[0] for info in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)]
    return socket.AF_INET if socket.AF_INET in families else families[0]


def _is_unspecified(host: str) -> bool:
    try:
        return ipaddress.ip_address(host or "::").is_unspecified
    except ValueError:
        return False


def _remove_stale_socket(path: str) -> None:
    """Make room at ``path`` for a Unix socket, like asyncio's ``create_unix_server``.

    A socket file left by a server that died is removed; a file that is not
    a socket is never removed, and neither is the socket of a server still
    listening (asyncio removes that one too: we ask it first).
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(errno.EEXIST, "exists and is not a socket: not replacing it", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)  # a live server with a full backlog makes connect() wait
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody listens: stale
        return
    except socket.timeout:
        pass  # alive, but busy
    except OSError:
        return  # can't tell (no permission, ...): bind() will say what is wrong
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "a server is listening on this Unix socket", path)


def listen_unix(path: str, backlog: int) -> tuple[socket.socket, tuple[int, int] | None]:
    """A Unix socket listening at ``path``, and the file's identity (None in the abstract namespace).

    The identity lets :func:`remove_socket_file` tell this server's file
    from one that replaced it.
    """
    abstract = path.startswith("\0")  # Linux's abstract namespace: no file
    if not abstract:
        _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inode = None
    try:
        sock.bind(path)
        sock.listen(backlog)
        if not abstract:
            info = os.stat(path)
            inode = (info.st_dev, info.st_ino)
    except BaseException:
        sock.close()
        raise
    return sock, inode


def remove_socket_file(path: str, inode: tuple[int, int]) -> None:
    """Remove the file :func:`listen_unix` made, unless another one replaced it meanwhile."""
    try:
        info = os.stat(path)
        if (info.st_dev, info.st_ino) == inode:
            os.unlink(path)
    except OSError:
        pass
