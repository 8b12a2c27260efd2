"""Who may read the dashboard and its API: a users file with scrypt password hashes, a signed
session cookie, and a reverse-proxy header mode.

Everything the dashboard serves but its login page (``GET``/``POST /login``) needs
credentials; without them an HTML page answers ``303`` to ``/login`` and everything else
``401`` with ``{"error": ..., "reason": "login_required"}``. A dashboard configured with no user
and no proxy lets nobody in (its login page says how to add a user).

**Users file** (``--dashboard-users FILE``; ``obus dashboard-user add`` writes it): UTF-8 text,
one user a line, ``name:hash``; blank lines and lines starting with ``#`` are ignored. A name is
1..64 characters of ``A-Z a-z 0-9 . _ @ -``. The hash is
``scrypt$<log2 N>$<r>$<p>$<salt>$<key>``: RFC 7914 scrypt (:func:`hashlib.scrypt`) with cost
``N = 2**log2N``, block size ``r``, parallelism ``p``, a 16-byte random salt and a 32-byte key,
both base64 (standard alphabet, padded). ``add`` writes ``log2 N = 15, r = 8, p = 1`` (32 MiB,
about 0.1 s of one core per check); a file may hold cheaper or dearer ones within
``log2 N <= 20``, ``r <= 16``, ``p <= 4`` (anything else is refused when the file is read, so a
hostile file cannot make a login cost unbounded memory).

**Sessions**: a successful login sets the cookie ``obus_session``: ``<user>.<expiry>.<mac>``,
HMAC-SHA-256 under a secret drawn when the dashboard starts (a restart logs everybody out),
valid for ``session_hours`` (12 by default); ``HttpOnly``, ``SameSite=Strict``, ``Path=/``,
and ``Secure`` when the request came over TLS. A user removed from the file keeps no access:
the cookie's user must still be in the users read at start (restart to apply a changed file).
Password checks run in a worker thread, at most :data:`MAX_CONCURRENT_CHECKS` at once, so a
flood of logins costs bounded memory and leaves the event loop free.

**Reverse-proxy mode** (``--dashboard-proxy-header X-Remote-User`` with
``--dashboard-trusted-proxy ADDR`` once or more): a request whose TCP peer is one of the trusted
addresses (or networks, ``10.0.0.0/8``) and that carries the header is the user it names (a
name as above); the header from any other peer is ignored, never trusted. The proxy must set
the header itself and drop any copy a client sent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Middleware

from bus.errors import ConfigError

COOKIE: Final = "obus_session"
LOGIN_PATH: Final = "/login"
LOGOUT_PATH: Final = "/logout"
MAX_CONCURRENT_CHECKS: Final = 2
DEFAULT_LOG2_N: Final = 15
MAX_LOG2_N: Final = 20
MAX_R: Final = 16
MAX_P: Final = 4
SALT_BYTES: Final = 16
KEY_BYTES: Final = 32
MAX_PASSWORD_CHARS: Final = 1024
USER_KEY: Final = web.RequestKey("user", str)  # who sent a request, for the handlers
NAME_RE: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=KEY_BYTES, maxmem=256 * n * r + (1 << 20)
    )


def hash_password(password: str, *, log2_n: int = DEFAULT_LOG2_N, r: int = 8, p: int = 1) -> str:
    """A password's hash line in the users file format (module docstring).

    Raises:
        ConfigError: an empty or too long password, or parameters out of bounds.
    """
    if not password or len(password) > MAX_PASSWORD_CHARS:
        raise ConfigError(
            "password", "is empty or too long", f"give 1..{MAX_PASSWORD_CHARS} characters"
        )
    _check_params(log2_n, r, p)
    salt = secrets.token_bytes(SALT_BYTES)
    key = _scrypt(password, salt, log2_n, r, p)
    return f"scrypt${log2_n}${r}${p}${_b64(salt)}${_b64(key)}"


def _check_params(log2_n: int, r: int, p: int) -> None:
    if not (1 <= log2_n <= MAX_LOG2_N and 1 <= r <= MAX_R and 1 <= p <= MAX_P):
        raise ConfigError(
            "scrypt parameters",
            f"log2 N {log2_n}, r {r}, p {p} are out of bounds",
            f"use log2 N 1..{MAX_LOG2_N}, r 1..{MAX_R}, p 1..{MAX_P}",
        )


@dataclass(frozen=True, slots=True)
class PasswordHash:
    """A parsed hash line (module docstring)."""

    log2_n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse ``scrypt$...``.

        Raises:
            ConfigError: not that format, or parameters out of bounds.
        """
        parts = text.split("$")
        fix = "write it with obus dashboard-user add"
        if len(parts) != 6 or parts[0] != "scrypt":
            raise ConfigError("password hash", "is not scrypt$log2N$r$p$salt$key", fix)
        try:
            log2_n, r, p = (int(x) for x in parts[1:4])
            salt = base64.b64decode(parts[4], validate=True)
            key = base64.b64decode(parts[5], validate=True)
        except ValueError as exc:
            raise ConfigError("password hash", str(exc), fix) from None
        _check_params(log2_n, r, p)
        if len(salt) < 8 or len(key) != KEY_BYTES:
            raise ConfigError("password hash", "salt or key has the wrong length", "write it again")
        return cls(log2_n, r, p, salt, key)

    def check(self, password: str) -> bool:
        """Whether ``password`` hashes to this key (constant-time comparison)."""
        if not password or len(password) > MAX_PASSWORD_CHARS:
            return False
        got = _scrypt(password, self.salt, self.log2_n, self.r, self.p)
        return hmac.compare_digest(got, self.key)


def check_name(name: str, what: str = "user name") -> str:
    """``name`` when it is a valid user name.

    Raises:
        ConfigError: it is not (names ``what``).
    """
    if not NAME_RE.fullmatch(name):
        raise ConfigError(
            what, f"{name[:70]!r} is no user name", "use 1..64 of A-Z a-z 0-9 . _ @ -"
        )
    return name


def load_users(path: Path) -> dict[str, PasswordHash]:
    """The users file (module docstring) as name -> hash.

    Raises:
        ConfigError: the file cannot be read, or a line is wrong (names the line).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            "--dashboard-users", f"cannot read {path}: {exc}", "pass a users file"
        ) from None
    users: dict[str, PasswordHash] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, encoded = line.partition(":")
        where = f"{path}:{n}"
        if not sep:
            raise ConfigError("--dashboard-users", f"{where} is not name:hash", "fix the line")
        if name in users:
            raise ConfigError("--dashboard-users", f"{where}: {name!r} again", "keep one line")
        try:
            check_name(name)
            users[name] = PasswordHash.parse(encoded)
        except ConfigError as exc:
            raise ConfigError("--dashboard-users", f"{where}: {exc.message}", exc.fix) from None
    return users


def add_user(path: Path, name: str, password: str, **params: int) -> bool:
    """Add ``name`` to the users file, or replace its hash; True when it was new.

    The file is written to a temporary file beside it and renamed over it (readable by its
    owner only).

    Raises:
        ConfigError: a wrong name or password, or a file that cannot be read or written.
    """
    check_name(name)
    line = f"{name}:{hash_password(password, **params)}"
    lines: list[str] = []
    new = True
    if path.exists():
        load_users(path)  # refuse to extend a file that is already wrong
        for old in path.read_text(encoding="utf-8").splitlines():
            if old.strip().partition(":")[0] == name and not old.strip().startswith("#"):
                lines.append(line)
                new = False
            else:
                lines.append(old)
    if new:
        lines.append(line)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        tmp.replace(path)
    except OSError as exc:
        raise ConfigError(
            "--users", f"cannot write {path}: {exc.strerror}", "check the path"
        ) from None
    return new


@dataclass(frozen=True)
class DashboardAuth:
    """Who may read the dashboard (module docstring).

    Args:
        users: name -> password hash (the users file).
        proxy_header: the header a trusted reverse proxy names the user in; None: no proxy mode.
        trusted_proxies: peers whose ``proxy_header`` is believed.
        session_hours: how long a session cookie is valid.
    """

    users: Mapping[str, PasswordHash] = field(default_factory=dict)
    proxy_header: str | None = None
    trusted_proxies: tuple[Network, ...] = ()
    session_hours: float = 12.0

    def __post_init__(self) -> None:
        if self.proxy_header is not None and not self.trusted_proxies:
            raise ConfigError(
                "--dashboard-proxy-header",
                "is given without a trusted proxy",
                "pass --dashboard-trusted-proxy ADDR (the proxy's address)",
            )
        if not 0 < self.session_hours <= 24 * 30:
            raise ConfigError("session hours", f"{self.session_hours}", "give 0 < H <= 720")

    @staticmethod
    def networks(addresses: list[str]) -> tuple[Network, ...]:
        """Trusted proxy addresses or networks.

        Raises:
            ConfigError: one is neither (names it).
        """
        out = []
        for a in addresses:
            try:
                out.append(ipaddress.ip_network(a.strip(), strict=False))
            except ValueError:
                raise ConfigError(
                    "--dashboard-trusted-proxy", f"{a[:60]!r} is no address", "pass an IP or CIDR"
                ) from None
        return tuple(out)

    @property
    def configured(self) -> bool:
        """Whether anybody can get in."""
        return bool(self.users) or self.proxy_header is not None


class Sessions:
    """Signed session tokens ``<user>.<expiry s>.<mac>`` under a secret drawn at start."""

    def __init__(self, auth: DashboardAuth, *, now: Callable[[], float] = time.time) -> None:
        self.auth = auth
        self._secret = secrets.token_bytes(32)
        self._now = now
        self._checks = asyncio.Semaphore(MAX_CONCURRENT_CHECKS)
        cost = max((h.log2_n for h in auth.users.values()), default=DEFAULT_LOG2_N)
        self._decoy = PasswordHash(
            cost, 8, 1, secrets.token_bytes(SALT_BYTES), secrets.token_bytes(KEY_BYTES)
        )

    def _mac(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def issue(self, user: str) -> str:
        """A token for ``user`` valid for the configured hours."""
        body = f"{user}.{int(self._now() + self.auth.session_hours * 3600)}"
        return f"{body}.{self._mac(body)}"

    def user_of(self, token: str) -> str | None:
        """The user a token names, or None when it is forged, expired, or its user is gone."""
        user, _, rest = token.partition(".")
        expiry, _, mac = rest.partition(".")
        if not (expiry.isdigit() and len(expiry) <= 12 and mac):
            return None
        if not hmac.compare_digest(mac, self._mac(f"{user}.{expiry}")):
            return None
        if int(expiry) < self._now() or user not in self.auth.users:
            return None
        return user

    async def login(self, user: str, password: str) -> bool:
        """Whether ``user`` and ``password`` match the users file (bounded concurrency). An
        unknown user costs a check too (against a random key), so the time taken does not
        tell which names exist."""
        stored = self.auth.users.get(user)
        async with self._checks:
            ok = await asyncio.to_thread((stored or self._decoy).check, password)
        return ok and stored is not None

    def proxy_user(self, request: web.Request) -> str | None:
        """The user a trusted proxy names, or None (module docstring)."""
        header = self.auth.proxy_header
        if header is None or header not in request.headers:
            return None
        try:
            peer = ipaddress.ip_address(request.remote or "")
        except ValueError:
            return None
        if not any(peer in net for net in self.auth.trusted_proxies):
            return None
        name = request.headers[header].strip()
        return name if NAME_RE.fullmatch(name) else None

    def user(self, request: web.Request) -> str | None:
        """Who sent ``request``: a trusted proxy's user, a valid session's, or None."""
        by_proxy = self.proxy_user(request)
        if by_proxy is not None:
            return by_proxy
        token = request.cookies.get(COOKIE)
        return None if token is None else self.user_of(token)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def wants_html(request: web.Request) -> bool:
    """Whether a refused request is a person's browser page (redirect to the login page)."""
    return (
        request.method == "GET"
        and not request.path.startswith("/api/")
        and "text/html" in request.headers.get("Accept", "")
    )


def login_redirect(request: web.Request) -> web.HTTPSeeOther:
    """A redirect to the login page that comes back to this page afterwards."""
    target = urllib.parse.quote(request.path_qs, safe="")
    return web.HTTPSeeOther(f"{LOGIN_PATH}?next={target}")


def safe_next(target: str) -> str:
    """Where to go after login: a path on this server only (never another host)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def middleware(sessions: Sessions) -> Middleware:
    """Refuse every request without credentials but the login page's (module docstring); the
    user is ``request[USER_KEY]`` for the handlers."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == LOGIN_PATH:
            return await handler(request)
        user = sessions.user(request)
        if user is None:
            if wants_html(request):
                raise login_redirect(request)
            return web.json_response(
                {
                    "error": "login required: log in at /login (session cookie) or come through"
                    " the configured reverse proxy",
                    "reason": "login_required",
                },
                status=401,
                headers={"WWW-Authenticate": f'Cookie realm="obus", form="{LOGIN_PATH}"'},
            )
        request[USER_KEY] = user
        return await handler(request)

    return check
