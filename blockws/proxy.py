"""Proxies: HTTP CONNECT tunnels (built in), SOCKS (python-socks), and the environment.

The CONNECT reply goes through the same lenient, bounded HTTP parser as the
handshake, and a 407 through the same authentication code as a 401.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Callable, Mapping

from .auth import MAX_PROXY_REQUESTS, basic_credentials
from .exceptions import HeadCut, InvalidHandshake, ProxyError
from .http import MAX_HEADERS, MAX_LINE, Request, Response, parse_response, redact_header
from .utils import Deadline, has_scheme, named_timeout, read_http_body, read_http_head, redact_url, split_url

__all__ = ["proxy_from_environment", "open_tunnel", "ProxyURL", "redact_proxy_url"]

# The proxy is a step of the client's opening: its events go with the others.
logger = logging.getLogger("blockws.client")

ProxyAuth = Callable[[Response], "str | None"]
_SCHEMES = {"http": 8080, "https": 443, "socks4": 1080, "socks4a": 1080, "socks5": 1080, "socks5h": 1080}


def redact_proxy_url(url: str) -> str:
    """``url`` with its password masked, for messages and logs.

    A proxy URL has no path: everything up to its last ``@`` is userinfo,
    so a password with an unencoded ``/`` is masked whole.
    """
    return redact_url(url, no_path=True)


class ProxyURL:
    """A parsed proxy URL; its repr never shows the password.

    Raises:
        ProxyError: the URL is not a proxy URL blockws can use. The message
            shows the URL with its password masked, and the exception has
            no cause or context that could show it.
    """

    def __init__(self, url: str) -> None:
        full = url if has_scheme(url) else f"http://{url}"
        safe = redact_proxy_url(full)
        try:
            parts, port = split_url(full, no_path=True)
        except ValueError as exc:  # its message masks the password too
            raise ProxyError(f"invalid proxy URL {safe!r}: {exc}") from None
        scheme = parts.scheme.lower()
        if scheme not in _SCHEMES or not parts.hostname:
            raise ProxyError(f"unsupported proxy URL {safe!r}: use http://, socks5://, socks5h://, socks4a://")
        self.scheme = scheme
        self.host = parts.hostname
        self.port = _SCHEMES[scheme] if port is None else port
        self.user = urllib.parse.unquote(parts.username) if parts.username else None
        self.password = urllib.parse.unquote(parts.password) if parts.password else None

    @property
    def address(self) -> str:
        """``host:port``, with an IPv6 address in brackets."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"ProxyURL('{self.scheme}://{self.address}')"


def _no_proxy_matches(entry: str, host: str, port: int) -> bool:
    entry = entry.strip().lower()
    if not entry:
        return False
    if entry == "*":
        return True
    # "name:port", "[v6]:port", "[v6]/len": an unbracketed IPv6 address has several colons.
    if entry.startswith("["):
        entry_host, _, rest = entry[1:].partition("]")
        entry_port = rest[1:] if rest.startswith(":") else ""
        entry_host += rest if rest.startswith("/") else ""
    elif entry.count(":") == 1:
        entry_host, _, entry_port = entry.partition(":")
    else:
        entry_host, entry_port = entry, ""
    if entry_port.isdigit() and int(entry_port) != port:
        return False
    try:
        address = ipaddress.ip_address(host.strip("[]"))
        return address in ipaddress.ip_network(entry_host, strict=False)
    except ValueError:
        pass
    domain = entry_host.strip(".")
    host = host.lower().rstrip(".")
    return host == domain or host.endswith("." + domain)


def _environment_proxies(env: Mapping[str, str]) -> dict[str, str]:
    """:func:`urllib.request.getproxies_environment`, reading ``env`` instead of ``os.environ``.

    Keys are schemes (``"http"``, ``"https"``, ``"all"``, ``"no"``...).
    """
    proxies: dict[str, str] = {}
    for name, value in env.items():
        name = name.lower()
        if value and name[-6:] == "_proxy":
            proxies[name[:-6]] = value
    if "REQUEST_METHOD" in env:
        # A CGI script (httpoxy, CVE-2016-1000110): the web server turns a
        # request's "Proxy:" header into HTTP_PROXY, so the client would
        # choose our proxy. A lower-case http_proxy can't come from a
        # header: the second pass puts it back.
        proxies.pop("http", None)
    # Lower-case names win, and an empty one unsets the upper-case one.
    for name, value in env.items():
        if name[-6:] == "_proxy":
            if value:
                proxies[name[:-6].lower()] = value
            else:
                proxies.pop(name[:-6].lower(), None)
    return proxies


def proxy_from_environment(secure: bool, host: str, port: int, environ: Mapping[str, str] | None = None) -> str | None:
    """The proxy for a ws (``http``) or wss (``https``) URL, as urllib picks it.

    The proxies are :func:`urllib.request.getproxies`'s: the environment
    variables (``http_proxy``, ``https_proxy``; lower-case names win over
    upper-case ones), else the system settings on macOS and Windows. Inside
    a CGI script (``REQUEST_METHOD`` set) ``HTTP_PROXY`` is ignored, since
    a client's ``Proxy:`` header sets it (httpoxy); a lower-case
    ``http_proxy`` still counts. ``all_proxy`` is the fallback. The host
    goes direct if :func:`urllib.request.proxy_bypass` says so (on macOS and
    Windows: the system settings' exceptions) or it matches ``no_proxy``,
    which lists domains (and their subdomains), IP addresses, CIDR ranges,
    optional ``:port`` and ``*``.

    Args:
        secure: the URL is wss.
        host: the host to connect to.
        port: the port to connect to.
        environ: read these variables instead of the process's environment
            and the system settings.
    """
    import urllib.request  # here: it imports http.client, email and more, which blockws needs nowhere else

    proxies = urllib.request.getproxies() if environ is None else _environment_proxies(environ)
    proxy = proxies.get("https" if secure else "http") or proxies.get("all")
    if not proxy:
        return None
    if any(_no_proxy_matches(entry, host, port) for entry in proxies.get("no", "").split(",")):
        return None
    host_port = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if environ is None:
        bypass = urllib.request.proxy_bypass(host_port)
    else:
        # Undocumented but in every CPython 3 (typeshed leaves it out): what
        # proxy_bypass does with environment variables, given as a dict.
        bypass = urllib.request.proxy_bypass_environment(host_port, proxies)  # type: ignore[attr-defined]
    return None if bypass else proxy


def open_tunnel(
    proxy: str,
    host: str,
    port: int,
    deadline: Deadline,
    *,
    proxy_auth: ProxyAuth | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_line: int = MAX_LINE,
    max_headers: int = MAX_HEADERS,
) -> socket.socket:
    """A socket connected to ``host:port`` through ``proxy``.

    Args:
        proxy: ``http://[user:pw@]host[:port]`` (CONNECT), ``https://...``
            (TLS to the proxy, then CONNECT), ``socks5://``, ``socks5h://``
            (the proxy resolves names), ``socks4://``, ``socks4a://``.
        proxy_auth: answers a 407: given the response, returns the
            Proxy-Authorization value for the retry, or None to give up.
        ssl_context: for an https:// proxy.
        max_line: the longest line accepted in the CONNECT reply, in bytes.
        max_headers: the most header lines accepted in the CONNECT reply.

    Raises:
        ProxyError: the proxy refused or broke the tunnel (the message says
            why; a refused CONNECT to a port other than 443 says that many
            proxies allow only 443).
        TimeoutError: the deadline passed (the message names the step).
    """
    if any(c in host for c in "\r\n\0 "):
        raise ProxyError(f"invalid host name {host!r}")
    try:
        url = ProxyURL(proxy)
        if url.scheme.startswith("socks"):
            return _socks(url, host, port, deadline)
        return _connect_tunnel(url, host, port, deadline, proxy_auth, ssl_context, max_line, max_headers)
    except (ProxyError, OSError) as exc:  # OSError: TimeoutError, ssl.SSLError...; no message holds the password
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        logger.info("no tunnel to %s through the proxy %s: %s", target, redact_proxy_url(proxy), exc)
        raise


def _open_to_proxy(url: ProxyURL, deadline: Deadline, ssl_context: ssl.SSLContext | None) -> socket.socket:
    with named_timeout(f"connecting to the proxy {url.address}"):
        try:
            sock = socket.create_connection((url.host, url.port), timeout=deadline.remaining())
        except OSError as exc:
            # Not "except TimeoutError": before Python 3.10 a kernel ETIMEDOUT
            # is a TimeoutError but not a socket.timeout, and is a ProxyError.
            if isinstance(exc, socket.timeout):
                raise
            raise ProxyError(f"can't connect to the proxy {url.address}: {exc.strerror or exc}") from exc
    if url.scheme == "https":
        context = ssl_context or ssl.create_default_context()
        try:
            sock = context.wrap_socket(sock, server_hostname=url.host)
        except BaseException:
            sock.close()
            raise
    return sock


def _connect_tunnel(
    url: ProxyURL,
    host: str,
    port: int,
    deadline: Deadline,
    proxy_auth: ProxyAuth | None,
    ssl_context: ssl.SSLContext | None,
    max_line: int,
    max_headers: int,
) -> socket.socket:
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    authorization = None
    if url.user is not None:
        authorization = basic_credentials(url.user, url.password or "")  # the same code as for a 401
    sock = None
    for _ in range(MAX_PROXY_REQUESTS):
        if sock is None:
            sock = _open_to_proxy(url, deadline, ssl_context)
        request = Request("CONNECT", target, {"Host": target})
        if authorization:
            request.headers["Proxy-Authorization"] = authorization
        try:
            sock.settimeout(deadline.remaining())
            sock.sendall(request.serialize())
            head, extra = read_http_head(sock, deadline, "proxy's CONNECT reply", max_line)
            response = parse_response(head, max_line=max_line, max_headers=max_headers)
        except HeadCut as exc:
            sock.close()
            raise ProxyError(f"proxy {url.address} closed the connection during CONNECT") from exc
        except InvalidHandshake as exc:
            sock.close()
            raise ProxyError(f"invalid reply from the proxy: {exc}") from exc
        except (TimeoutError, ssl.SSLError):  # TimeoutError is an OSError: keep it
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            # A reset or an early close: the proxy gave up on us (or isn't one).
            raise ProxyError(
                f"proxy {url.address} closed the connection during CONNECT: {exc.strerror or exc}"
            ) from exc
        except BaseException:
            sock.close()
            raise
        if 200 <= response.status < 300:
            if extra:
                sock.close()
                raise ProxyError("the proxy sent data before the tunnel was used")
            return sock
        response.body = read_http_body(sock, deadline, response, extra)
        if response.status == 407 and proxy_auth is not None:
            authorization = proxy_auth(response)
            if authorization is not None:
                logger.debug(
                    "HTTP 407 from the proxy %s: retrying with Proxy-Authorization: %s",
                    url.address,
                    redact_header("Proxy-Authorization", authorization),
                )
                if "close" in (response.headers.get("Connection") or "").lower():
                    sock.close()
                    sock = None
                continue
        sock.close()
        message = f"proxy refused CONNECT to {target} ({response.status} {response.reason})"
        if response.status != 407 and port != 443:
            message += "; many proxies allow CONNECT to port 443 only"
        error = ProxyError(message)
        error.response = response  # type: ignore[attr-defined]
        raise error
    if sock is not None:
        sock.close()
    raise ProxyError(f"proxy authentication failed after {MAX_PROXY_REQUESTS} attempts")


def _socks(url: ProxyURL, host: str, port: int, deadline: Deadline) -> socket.socket:
    try:
        from python_socks import ProxyError as SocksError
        from python_socks import ProxyTimeoutError
        from python_socks.sync import Proxy
    except ImportError:
        raise ProxyError('SOCKS proxies need the python-socks package: pip install "blockws[socks]"') from None
    rdns = url.scheme in ("socks5h", "socks4a")
    dest = host
    if not rdns:
        try:  # socks4 and socks5: we resolve the name ourselves
            dest = str(socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0])
        except socket.gaierror as exc:
            raise OSError(exc.errno, f"can't resolve {host}: {exc.strerror}") from exc
    scheme = {"socks5h": "socks5", "socks4a": "socks4"}.get(url.scheme, url.scheme)
    auth = ""
    if url.user is not None:
        auth = f"{urllib.parse.quote(url.user, safe='')}:{urllib.parse.quote(url.password or '', safe='')}@"
    proxy = Proxy.from_url(f"{scheme}://{auth}{url.address}", rdns=rdns)
    try:
        sock: socket.socket = proxy.connect(dest_host=dest, dest_port=port, timeout=deadline.remaining())
    except ProxyTimeoutError:
        raise TimeoutError(f"timed out connecting through the SOCKS proxy {url.address}") from None
    except SocksError as exc:
        raise ProxyError(f"SOCKS proxy {url.address} refused {host}:{port}: {exc}") from exc
    except OSError as exc:
        raise ProxyError(f"can't connect to the SOCKS proxy {url.address}: {exc}") from exc
    return sock
