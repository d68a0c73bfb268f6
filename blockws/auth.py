"""HTTP authentication for the handshake: Basic (RFC 7617) and Digest (RFC 7616).

Sans-I/O. The client side (:class:`ClientAuth`) answers 401/407 challenges,
asking a callback for credentials on every attempt, so a program can ask its
user again after a wrong password. The server side (:class:`BasicAuth`,
:class:`DigestAuth`) checks ``Authorization`` headers and builds challenges;
Digest nonces are signed timestamps that expire, and each nonce's counter
must grow, so a captured request can't be replayed.

Locks: a :class:`DigestAuth` is shared by every handshake of a server, in
as many threads; its lock guards the nonce table (``_counters``, with the
eviction mark ``_forgotten_until``) and the last issue time, and each
check-then-record of a counter is one critical section (a replay racing
the original can't both pass). A :class:`ClientAuth` belongs to one
``connect()`` call, one thread; :class:`BasicAuth` holds no mutable state.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Union

from .http import QUOTED_STRING, TCHAR, Request, Response, unquote_string

__all__ = [
    "Challenge",
    "Credentials",
    "AuthOption",
    "parse_challenges",
    "ClientAuth",
    "BasicAuth",
    "DigestAuth",
    "MAX_AUTH_ATTEMPTS",
    "MAX_STALE_RETRIES",
    "MAX_PROXY_REQUESTS",
    "DEFAULT_MAX_NONCES",
]

Credentials = tuple[str, str]

# Retry budgets. Every loop that sends a request again after a 401 or a 407
# is bounded by one of these, named here so the bounds are read side by side
# (connect() also bounds its whole loop of redirects and retries by
# ``max_redirects`` plus ClientAuth.max_answers).

#: Credentials tried per connect(), so also the password prompts of
#: ``python -m blockws --user``: a user may mistype twice, and one run can't
#: push an account into a server's lockout.
MAX_AUTH_ATTEMPTS = 3
#: ``stale=true`` retries in a row with the same credentials (RFC 7616
#: section 3.3): one covers a nonce that expired between challenge and answer.
MAX_STALE_RETRIES = 1
#: CONNECT requests on one proxy tunnel, 407 retries included: the budget of
#: the proxy's own loop, which may reuse the connection between them.
MAX_PROXY_REQUESTS = 5

#: Nonces a DigestAuth remembers the counters of (``max_nonces``).
DEFAULT_MAX_NONCES = 10_000

_AUTH_PARAM = re.compile(rf"\s*({TCHAR}+)\s*=\s*({QUOTED_STRING}|[^\s,]*)\s*,?")
_SCHEME = re.compile(rf"\s*,?\s*({TCHAR}+)")
_TOKEN68 = re.compile(r"\s*[A-Za-z0-9\-._~+/]+=*\s*(?:,|$)")


class Challenge:
    """One challenge from a 401 or 407 response, as the auth callback sees it.

    Attributes:
        scheme: ``"Basic"`` or ``"Digest"`` (or another scheme, as sent).
        realm: the protection space, shown to users (None if absent).
        params: every auth-param, with lowercase names.
        attempt: 1 for the first challenge of this connect(), then 2, 3...
        proxy: True for a proxy's challenge (407).
    """

    def __init__(self, scheme: str, params: dict[str, str], attempt: int = 1, proxy: bool = False) -> None:
        lower = scheme.lower()
        self.scheme = {"basic": "Basic", "digest": "Digest"}.get(lower, scheme)
        self.params = params
        self.realm = params.get("realm")
        self.attempt = attempt
        self.proxy = proxy

    def __repr__(self) -> str:
        return f"Challenge({self.scheme!r}, realm={self.realm!r}, attempt={self.attempt})"


def parse_challenges(values: Sequence[str]) -> list[Challenge]:
    """Parse WWW-Authenticate or Proxy-Authenticate values (RFC 7235 section 4.1).

    Several challenges may share one value; what can't be parsed is skipped.
    """
    challenges: list[Challenge] = []
    for value in values:
        pos = 0
        while pos < len(value):
            m = _SCHEME.match(value, pos)
            if not m:
                break
            scheme = m.group(1)
            pos = m.end()
            params: dict[str, str] = {}
            t68 = _TOKEN68.match(value, pos)
            if t68 and not _AUTH_PARAM.match(value, pos):
                pos = t68.end()  # a token68 credential (Negotiate and the like)
            while True:
                p = _AUTH_PARAM.match(value, pos)
                if not p:
                    break
                params.setdefault(p.group(1).lower(), unquote_string(p.group(2)))
                pos = p.end()
            challenges.append(Challenge(scheme, params))
            if pos < len(value) and not _SCHEME.match(value, pos):
                break
    return challenges


AuthOption = Union[Credentials, Callable[[Challenge], Union[Credentials, None]]]

_ALGORITHMS = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}


def _hash(algorithm: str) -> Callable[[str], str]:
    base = algorithm.upper().removesuffix("-SESS")
    fn = _ALGORITHMS[base]
    return lambda text: fn(text.encode("utf-8")).hexdigest()


def _strength(challenge: Challenge) -> int:
    if challenge.scheme == "Digest":
        if not challenge.params.get("nonce"):
            return 0  # malformed: nothing to answer
        algorithm = challenge.params.get("algorithm", "MD5").upper()
        return {"SHA-256": 4, "SHA-256-SESS": 4, "MD5": 2, "MD5-SESS": 2}.get(algorithm, 0)
    return 1 if challenge.scheme == "Basic" else 0


def basic_credentials(user: str, password: str) -> str:
    """The value of a Basic ``Authorization`` header (UTF-8, RFC 7617)."""
    if ":" in user:
        raise ValueError("a Basic user name can't contain ':'")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Secret(tuple[str, str]):
    """A ``(user, password)`` pair whose repr hides the password (tracebacks, logs, debuggers)."""

    def __repr__(self) -> str:
        return f"({self[0]!r}, '***')"


class ClientAuth:
    """Answers the challenges of one connect() call (and its retries).

    Args:
        auth: ``(user, password)``, tried once per realm, or a callable
            ``auth(challenge) -> (user, password) | None`` called on every
            challenge (``challenge.attempt`` counts), so a program can ask
            its user again; None gives up.
        proxy: answer 407 / ``Proxy-Authenticate`` instead of 401.
        max_attempts: at most this many answers (a loop guard).
        max_stale: at most this many ``stale=true`` retries in a row with
            the same credentials (RFC 7616 3.3); a server whose fresh nonces
            are at once stale again (a broken clock) is then given up on.

    Attributes:
        failure: why :meth:`authorize` last gave up (a message for the
            error the caller raises), or None.
    """

    def __init__(
        self,
        auth: AuthOption,
        *,
        proxy: bool = False,
        max_attempts: int = MAX_AUTH_ATTEMPTS,
        max_stale: int = MAX_STALE_RETRIES,
    ) -> None:
        self.auth: AuthOption = auth if callable(auth) else _Secret((auth[0], auth[1]))
        self.proxy = proxy
        self.max_attempts = max_attempts
        self.max_stale = max_stale
        self.attempts = 0
        self.failure: str | None = None
        self._stale = 0  # stale=true retries since the last new attempt
        self._credentials: Credentials | None = None
        self._digest: Challenge | None = None
        self._nc = 0

    def __repr__(self) -> str:
        return f"ClientAuth(proxy={self.proxy}, attempts={self.attempts})"  # never the password

    @property
    def max_answers(self) -> int:
        """The most header values :meth:`authorize` can return: each attempt, and its stale retries."""
        return (1 + self.max_stale) * self.max_attempts

    def authorize(self, response: Response, method: str, target: str) -> str | None:
        """The header value for the retry after ``response`` (401/407), or None to give up.

        When it gives up, :attr:`failure` says why.
        """
        header = "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"
        status = f"{response.status} {response.reason}"
        values = response.headers.get_all(header)
        supported = [c for c in parse_challenges(values) if _strength(c)]
        if not supported:
            got = ", ".join(repr(v[:100]) for v in values) if values else f"no {header} header"
            self.failure = f"{status}: no supported challenge (got: {got})"
            return None
        challenge = max(supported, key=_strength)
        stale = challenge.scheme == "Digest" and challenge.params.get("stale", "").lower() == "true"
        if stale and self._credentials is not None:
            if self._stale >= self.max_stale:
                self.failure = (
                    f"{status}: the server answered stale=true again after {self._stale} "
                    f"{'retry' if self._stale == 1 else 'retries'} with a fresh nonce (max_stale={self.max_stale}): "
                    "its nonces expire at once (is its clock wrong?)"
                )
                return None
            # Same credentials, fresh nonce: not a new attempt (RFC 7616 3.3).
            self._stale += 1
            self._digest, self._nc = challenge, 0
            return self._answer(method, target)
        if self.attempts >= self.max_attempts:
            self.failure = f"{status}: credentials refused {self.attempts} times (max_attempts={self.max_attempts})"
            return None
        if self.attempts and not callable(self.auth):
            self.failure = f"{status}: credentials refused (a (user, password) pair is tried once)"
            return None
        self.attempts += 1
        self._stale = 0
        challenge.attempt = self.attempts
        challenge.proxy = self.proxy
        credentials = self.auth(challenge) if callable(self.auth) else self.auth
        if credentials is None:
            self.failure = f"{status}: the auth callback gave up (attempt {self.attempts})"
            return None
        self._credentials = _Secret((str(credentials[0]), str(credentials[1])))
        self._digest = challenge if challenge.scheme == "Digest" else None
        self._nc = 0
        return self._answer(method, target)

    def preemptive(self, method: str, target: str) -> str | None:
        """A header value for a new request to the same origin, if we have credentials."""
        return self._answer(method, target) if self._credentials is not None else None

    def _answer(self, method: str, target: str) -> str:
        assert self._credentials is not None
        user, password = self._credentials
        if self._digest is None:
            return basic_credentials(user, password)
        return self._digest_response(self._digest, user, password, method, target)

    def _digest_response(self, challenge: Challenge, user: str, password: str, method: str, target: str) -> str:
        params = challenge.params
        algorithm = params.get("algorithm", "MD5")
        h = _hash(algorithm)
        realm, nonce = params.get("realm", ""), params.get("nonce", "")
        qops = [q.strip() for q in params.get("qop", "").split(",") if q.strip()]
        cnonce = secrets.token_hex(16)
        self._nc += 1
        nc = f"{self._nc:08x}"
        ha1 = h(f"{user}:{realm}:{password}")
        if algorithm.upper().endswith("-SESS"):
            ha1 = h(f"{ha1}:{nonce}:{cnonce}")
        ha2 = h(f"{method}:{target}")
        if "auth" in qops:
            digest = h(f"{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
        else:  # RFC 2069 compatibility
            digest = h(f"{ha1}:{nonce}:{ha2}")
        fields = [
            f'username="{_quote(user)}"',
            f'realm="{_quote(realm)}"',
            f'nonce="{_quote(nonce)}"',
            f'uri="{_quote(target)}"',
            f"algorithm={algorithm}",
            f'response="{digest}"',
        ]
        if "auth" in qops:
            fields += ["qop=auth", f"nc={nc}", f'cnonce="{cnonce}"']
        if "opaque" in params:
            fields.append(f'opaque="{_quote(params["opaque"])}"')
        return "Digest " + ", ".join(fields)


def _quote(value: str) -> str:
    if any(c in value for c in "\r\n"):
        raise ValueError("line breaks in an auth parameter")
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _lookup(users: Mapping[str, str] | Callable[[str], str | None], user: str) -> str | None:
    return users.get(user) if isinstance(users, Mapping) else users(user)


def _authorization(request: Request, scheme: str) -> str | None:
    value = request.headers.get("Authorization")
    if value is None:
        return None
    got, _, rest = value.strip().partition(" ")
    return rest.strip() if got.lower() == scheme.lower() else None


class BasicAuth:
    """Server side of HTTP Basic: ``serve(..., auth=BasicAuth("realm", {"user": "password"}))``.

    ``users`` is a mapping or a lookup ``users(name) -> password | None``.
    """

    def __init__(self, realm: str, users: Mapping[str, str] | Callable[[str], str | None]) -> None:
        self.realm = realm
        self.users = users
        self._dummy = secrets.token_bytes(16)  # the "password" of users that don't exist

    def __repr__(self) -> str:
        return f"BasicAuth(realm={self.realm!r})"  # never the users or their passwords

    def check(self, request: Request) -> str | None:
        """The authenticated user name, or None."""
        encoded = _authorization(request, "Basic")
        if encoded is None:
            return None
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        expected = _lookup(self.users, user) if sep else None
        # Compare fixed-size digests of the UTF-8 bytes (compare_digest refuses
        # non-ASCII str), and against a dummy for unknown users, so the time
        # taken tells neither whether the user exists nor the password length.
        given = hashlib.sha256(password.encode()).digest()
        known = expected is not None
        wanted = hashlib.sha256(expected.encode() if expected is not None else self._dummy).digest()
        return user if hmac.compare_digest(given, wanted) and known else None

    def challenge(self, request: Request | None = None) -> Response:
        """The 401 response asking for Basic credentials."""
        header = f'Basic realm="{_quote(self.realm)}", charset="UTF-8"'
        return Response(401, headers={"WWW-Authenticate": header}, body=b"authentication required\n")


class DigestAuth:
    """Server side of HTTP Digest (RFC 7616, qop=auth).

    The server remembers the highest ``nc`` of every nonce used within its
    lifetime, so a captured request can't be replayed. That table holds at
    most ``max_nonces`` nonces: past it the oldest is forgotten, and a login
    with a nonce no older than the forgotten ones gets 401 with
    ``stale=true``, so the client retries at once with a fresh nonce.

    Args:
        realm: the protection space.
        users: a mapping or a lookup ``users(name) -> password | None``.
        algorithms: offered in this order of preference.
        nonce_lifetime: seconds a nonce stays valid (then ``stale=true``).
        secret: signs nonces (random by default: nonces die with the process).
        max_nonces: the most nonces remembered at once (about 200 bytes
            each); the default holds 300 s of 33 logins per second.
    """

    def __init__(
        self,
        realm: str,
        users: Mapping[str, str] | Callable[[str], str | None],
        *,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        nonce_lifetime: float = 300.0,
        secret: bytes | None = None,
        max_nonces: int = DEFAULT_MAX_NONCES,
    ) -> None:
        for algorithm in algorithms:
            if algorithm.upper().removesuffix("-SESS") not in _ALGORITHMS:
                raise ValueError(f"unsupported Digest algorithm {algorithm!r}")
        if max_nonces < 1:
            raise ValueError(f"max_nonces must be 1 or more, not {max_nonces}")
        self.realm = realm
        self.users = users
        self.algorithms = list(algorithms)
        self.nonce_lifetime = nonce_lifetime
        self.max_nonces = max_nonces
        self._secret = secret or secrets.token_bytes(32)
        self._dummy = secrets.token_hex(16)  # the password of users that don't exist
        self._opaque = secrets.token_hex(8)
        # nonce -> (issued, highest nc seen), in the order of first use, which
        # is nearly the order of issue: the expired and the evicted come off
        # the front, O(1) per login under the lock.
        self._counters: OrderedDict[str, tuple[float, int]] = OrderedDict()
        # Nonces issued up to this time and not in the table may have been
        # evicted while still valid: their counters are gone, so they are
        # refused as stale (a replay could otherwise start again at nc=1).
        self._forgotten_until = float("-inf")
        self._last_issued = 0  # microseconds
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"DigestAuth(realm={self.realm!r}, algorithms={self.algorithms!r})"  # never the passwords

    def _make_nonce(self) -> str:
        # Issue times are unique (to the microsecond) and increasing, so "issued
        # no later than the last evicted nonce" never catches a fresh nonce
        # issued in the same instant.
        with self._lock:
            micros = self._last_issued = max(time.time_ns() // 1000, self._last_issued + 1)
        stamp = f"{micros // 1_000_000}.{micros % 1_000_000:06d}:{secrets.token_hex(8)}"
        sig = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        return base64.b64encode(f"{stamp}:{sig}".encode()).decode()

    def _issued(self, nonce: str) -> float | None:
        """When we issued ``nonce``, or None if it isn't one of ours."""
        try:
            stamp, _, sig = base64.b64decode(nonce, validate=True).decode().rpartition(":")
            issued = float(stamp.split(":")[0])
        except (ValueError, UnicodeDecodeError):
            return None
        expected = hmac.new(self._secret, stamp.encode(), hashlib.sha256).hexdigest()[:32]
        if not hmac.compare_digest(sig.encode(), expected.encode()):  # bytes: sig may be any text
            return None
        return issued

    def _nonce_state(self, nonce: str) -> str:
        """ "valid", "stale" (genuine but expired or forgotten) or "invalid"."""
        issued = self._issued(nonce)
        if issued is None:
            return "invalid"
        if time.time() - issued > self.nonce_lifetime:
            return "stale"
        with self._lock:
            forgotten = issued <= self._forgotten_until and nonce not in self._counters
        return "stale" if forgotten else "valid"

    @staticmethod
    def _params(request: Request) -> dict[str, str] | None:
        value = _authorization(request, "Digest")
        if value is None:
            return None
        return {m.group(1).lower(): unquote_string(m.group(2)) for m in _AUTH_PARAM.finditer(value)}

    def check(self, request: Request) -> str | None:
        """The authenticated user name, or None (wrong, replayed, stale, malformed)."""
        params = self._params(request)
        if params is None:
            return None
        try:
            user, nonce, uri, answer = params["username"], params["nonce"], params["uri"], params["response"]
            algorithm = params.get("algorithm", "MD5")
            h = _hash(algorithm)
        except KeyError:
            return None
        if algorithm.upper() not in (a.upper() for a in self.algorithms) or params.get("realm") != self.realm:
            return None
        if uri != request.target or params.get("qop") != "auth" or "cnonce" not in params:
            return None
        if self._nonce_state(nonce) != "valid":
            return None
        try:
            nc = int(params.get("nc", ""), 16)
        except ValueError:
            return None
        password = _lookup(self.users, user)
        known = password is not None
        # An unknown user costs the same hashing and comparison as a known one:
        # the time taken must not tell which user names exist.
        ha1 = h(f"{user}:{self.realm}:{password if password is not None else self._dummy}")
        if algorithm.upper().endswith("-SESS"):
            ha1 = h(f"{ha1}:{nonce}:{params['cnonce']}")
        ha2 = h(f"{request.method}:{uri}")
        expected = h(f"{ha1}:{nonce}:{params['nc']}:{params['cnonce']}:auth:{ha2}")
        if not hmac.compare_digest(answer.encode(), expected.encode()) or not known:
            return None
        return user if self._count(nonce, nc) else None

    def _count(self, nonce: str, nc: int) -> bool:
        """Record ``nc`` for a valid ``nonce``: False for a replay or a forgotten nonce."""
        issued = self._issued(nonce)
        assert issued is not None  # checked valid by the caller
        with self._lock:
            seen = self._counters.get(nonce)
            if seen is None:
                if issued <= self._forgotten_until:
                    return False  # evicted while valid: its counter is gone
                self._forget_expired()
                if len(self._counters) >= self.max_nonces:
                    _, (oldest, _) = self._counters.popitem(last=False)
                    self._forgotten_until = max(self._forgotten_until, oldest)
            elif nc <= seen[1]:
                return False  # a replay
            self._counters[nonce] = (issued, nc)  # a known nonce keeps its place
            return True

    def _forget_expired(self) -> None:
        # Expired nonces are refused whether remembered or not: dropping them
        # opens no replay. The front is the oldest first use; a nonce used
        # late sits behind younger ones until they expire too.
        deadline = time.time() - self.nonce_lifetime
        while self._counters:
            nonce, (issued, _) = next(iter(self._counters.items()))
            if issued >= deadline:
                break
            del self._counters[nonce]

    def challenge(self, request: Request | None = None) -> Response:
        """The 401 response with a fresh nonce per algorithm (``stale=true`` after an expired one)."""
        nonce = self._make_nonce()
        params = self._params(request) if request is not None else None
        # A genuine but expired nonce: the client may retry without asking its user.
        expired = params is not None and self._nonce_state(params.get("nonce", "")) == "stale"
        stale = ", stale=true" if expired else ""
        response = Response(401, body=b"authentication required\n")
        for algorithm in self.algorithms:
            response.headers.add(
                "WWW-Authenticate",
                f'Digest realm="{_quote(self.realm)}", qop="auth", algorithm={algorithm}, '
                f'nonce="{nonce}", opaque="{self._opaque}"{stale}',
            )
        return response
