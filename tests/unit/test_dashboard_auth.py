"""The dashboard's login: everything but the login page refused without credentials, a signed
session cookie, a trusted reverse proxy's header, and the users file (and the helpers the other
dashboard tests log in with).

No broker: the store is filled through the node's verification path, as in
test_dashboard_reads_only, and the dashboard serves it on a free 127.0.0.1 port.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yarl

from bus.errors import ConfigError
from nodes.cli.main import main
from nodes.org_node.dashboard import auth
from nodes.org_node.dashboard.auth import DashboardAuth, PasswordHash, Sessions, hash_password
from nodes.org_node.dashboard.config import DashboardConfig
from nodes.org_node.dashboard.server import Dashboard
from tests.mission import make_mission

USER = "operator"
PASSWORD = "correct horse battery staple"
# Cheap parameters (log2 N = 4): the tests check logic, not cost.
_HASH = PasswordHash.parse(hash_password(PASSWORD, log2_n=4))


def dashboard_auth(**changes: object) -> DashboardAuth:
    """The test user, with cheap hashing."""
    return DashboardAuth(users={USER: _HASH}, **changes)  # type: ignore[arg-type]


def jar() -> aiohttp.CookieJar:
    """A cookie jar that keeps cookies of 127.0.0.1 (aiohttp's default refuses IP hosts)."""
    return aiohttp.CookieJar(unsafe=True)


async def login(http: aiohttp.ClientSession, url: str) -> None:
    """Log ``http`` in at the dashboard whose any URL is ``url``."""
    origin = str(yarl.URL(url).origin())
    async with http.post(
        origin + "/login", data={"user": USER, "password": PASSWORD}, allow_redirects=False
    ) as resp:
        assert resp.status == 303, await resp.text()


@contextlib.asynccontextmanager
async def logged_in(url: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session logged in at the dashboard of ``url``."""
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        await login(http, url)
        yield http


@pytest.fixture
async def dash(tmp_path: Path) -> AsyncIterator[Dashboard]:
    db = tmp_path / "un.db"
    _fill(db)
    mandate = make_mission().scenario.mandate
    d = Dashboard(
        DashboardConfig(org="un", db_path=db, mandate=mandate, port=0, auth=dashboard_auth())
    )
    await d.start()
    try:
        yield d
    finally:
        await d.stop()


def _fill(db: Path) -> int:
    # test_dashboard_reads_only logs in with this module's helpers: imported here, not above
    from tests.unit.test_dashboard_reads_only import _fill as fill  # noqa: PLC0415

    return fill(db)


def _get_paths(d: Dashboard) -> list[str]:
    return sorted(
        {
            info["path"]
            for r in d.app().router.routes()
            if r.method == "GET" and "path" in (info := r.get_info())
        }
    )


async def test_everything_but_the_login_page_is_refused_without_credentials(
    dash: Dashboard,
) -> None:
    paths = [*_get_paths(dash), "/reports/x", "/api/reports/x", "/attachments/" + "0" * 64]
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        for path in paths:
            url = dash.url.rstrip("/") + path
            async with http.get(url, allow_redirects=False) as resp:
                if path == "/login":
                    assert resp.status == 200
                    continue
                assert resp.status == 401, path
                body = await resp.json()
                assert body["reason"] == "login_required", path
            # A browser asking for a page is sent to the login page, and back afterwards.
            headers = {"Accept": "text/html"}
            async with http.get(url, headers=headers, allow_redirects=False) as resp:
                if path.startswith("/api/"):
                    assert resp.status == 401, path
                else:
                    assert resp.status == 303, path
                    assert resp.headers["Location"].startswith("/login?next=/")
        # The login page itself shows a form and no data of the store.
        async with http.get(dash.url + "login") as resp:
            page = await resp.text()
        assert 'id="login"' in page and "un-obs-1" not in page


async def test_login_sets_a_strict_http_only_cookie_and_opens_every_route(
    dash: Dashboard,
) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        async with http.post(
            dash.url + "login",
            data={"user": USER, "password": PASSWORD, "next": "/api/summary"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/api/summary"
            cookie = resp.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure
        for path in _get_paths(dash):
            async with http.get(dash.url.rstrip("/") + path) as resp:
                assert resp.status == 200, path
        # Logging out ends it.
        async with http.post(dash.url + "logout", allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.get(dash.url + "api/summary") as resp:
            assert resp.status == 401


@pytest.mark.parametrize(
    ("user", "password"),
    [(USER, "wrong"), ("nobody", PASSWORD), (USER, ""), ("bad name!", PASSWORD), ("", "")],
)
async def test_a_wrong_login_is_refused_and_sets_no_cookie(
    dash: Dashboard, user: str, password: str
) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as http:
        async with http.post(
            dash.url + "login", data={"user": user, "password": password}, allow_redirects=False
        ) as resp:
            assert resp.status == 401
            assert "Set-Cookie" not in resp.headers
            assert "wrong user name or password" in await resp.text()
        async with http.get(dash.url + "api/reports") as resp:
            assert resp.status == 401


async def test_forged_expired_and_foreign_cookies_are_refused(dash: Dashboard) -> None:
    good = dash.sessions.issue(USER)
    name, expiry, mac = good.split(".")
    other = Sessions(dash.config.auth)  # another process's secret
    forged = [
        f"admin.{expiry}.{mac}",  # another user under this user's MAC
        f"{name}.{int(expiry) + 1}.{mac}",  # a later expiry
        other.issue(USER),
        f"{name}.{expiry}.",
        "garbage",
    ]
    for token in forged:
        async with (
            aiohttp.ClientSession(cookies={auth.COOKIE: token}) as http,
            http.get(dash.url + "api/summary") as resp,
        ):
            assert resp.status == 401, token
    async with (
        aiohttp.ClientSession(cookies={auth.COOKIE: good}) as http,
        http.get(dash.url + "api/summary") as resp,
    ):
        assert resp.status == 200
    # Expired: a clock past the session's hours.
    late = Sessions(dash.config.auth, now=lambda: int(expiry) + 1.0)
    late._secret = dash.sessions._secret  # the same dashboard, later
    assert late.user_of(good) is None
    assert dash.sessions.user_of(good) == USER


async def test_after_login_only_paths_of_this_server(dash: Dashboard) -> None:
    for target, want in [
        ("/?zone=north", "/?zone=north"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example", "/"),
    ]:
        async with (
            aiohttp.ClientSession(cookie_jar=jar()) as http,
            http.post(
                dash.url + "login",
                data={"user": USER, "password": PASSWORD, "next": target},
                allow_redirects=False,
            ) as resp,
        ):
            assert resp.headers["Location"] == want, target


async def test_proxy_header_is_believed_from_a_trusted_proxy_only(tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    _fill(db)
    mandate = make_mission().scenario.mandate
    for trusted, want in [("127.0.0.1", 200), ("10.0.0.0/8", 401)]:
        config = DashboardConfig(
            org="un",
            db_path=db,
            mandate=mandate,
            port=0,
            auth=DashboardAuth(
                proxy_header="X-Remote-User",
                trusted_proxies=DashboardAuth.networks([trusted]),
            ),
        )
        d = Dashboard(config)
        await d.start()
        try:
            async with aiohttp.ClientSession() as http:
                for user, code in [("analyst@un", want), ("bad user", 401)]:
                    async with http.get(
                        d.url + "api/summary", headers={"X-Remote-User": user}
                    ) as resp:
                        assert resp.status == code, (trusted, user)
                async with http.get(d.url + "api/summary") as resp:
                    assert resp.status == 401
        finally:
            await d.stop()


async def test_a_dashboard_without_users_lets_nobody_in_and_says_how(tmp_path: Path) -> None:
    db = tmp_path / "un.db"
    _fill(db)
    d = Dashboard(
        DashboardConfig(org="un", db_path=db, mandate=make_mission().scenario.mandate, port=0)
    )
    await d.start()
    try:
        async with aiohttp.ClientSession(cookie_jar=jar()) as http:
            async with http.get(d.url + "login") as resp:
                page = await resp.text()
            assert 'id="no-users"' in page and "obus dashboard-user add" in page
            async with http.post(
                d.url + "login", data={"user": USER, "password": PASSWORD}, allow_redirects=False
            ) as resp:
                assert resp.status == 401
    finally:
        await d.stop()


def test_password_hashes_check_and_refuse() -> None:
    h = PasswordHash.parse(hash_password("s3cret", log2_n=4))
    assert h.check("s3cret") and not h.check("s3creT") and not h.check("")
    a, b = hash_password("same", log2_n=4), hash_password("same", log2_n=4)
    assert a != b  # salted
    assert a.startswith("scrypt$4$8$1$")
    for bad in [
        "md5$x",
        "scrypt$4$8$1$!!!$AAAA",
        "scrypt$21$8$1$" + "A" * 24 + "$" + "A" * 44,  # N beyond the bound
        "scrypt$4$8$1$" + "A" * 24 + "$" + "AAAA",  # key too short
        "scrypt$x$8$1$a$b",
    ]:
        with pytest.raises(ConfigError):
            PasswordHash.parse(bad)
    with pytest.raises(ConfigError):
        hash_password("")


def test_users_file_is_read_strictly(tmp_path: Path) -> None:
    f = tmp_path / "users"
    line = f"{USER}:{hash_password('pw', log2_n=4)}"
    f.write_text(f"# the dashboard's users\n\n{line}\n")
    assert list(auth.load_users(f)) == [USER]
    for text, where in [
        (f"{line}\n{line}\n", ":2"),
        ("no colon here\n", ":1"),
        (f"# ok\nbad name:{line.split(':', 1)[1]}\n", ":2"),
        (f"{USER}:plain-password\n", ":1"),
    ]:
        f.write_text(text)
        with pytest.raises(ConfigError, match=f"users{where}"):
            auth.load_users(f)


def test_proxy_header_needs_a_trusted_proxy_and_addresses_parse() -> None:
    with pytest.raises(ConfigError, match="trusted proxy"):
        DashboardAuth(proxy_header="X-Remote-User")
    assert DashboardAuth.networks(["127.0.0.1", "10.0.0.0/8", "::1"]) == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
    )
    with pytest.raises(ConfigError, match="no address"):
        DashboardAuth.networks(["proxy.example"])


def test_dashboard_user_command_writes_a_file_the_dashboard_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    monkeypatch.setenv("OBUS_DASHBOARD_PASSWORD", "first")
    assert main(["dashboard-user", "add", "alice", "--users", str(users)]) == 0
    monkeypatch.setenv("OBUS_DASHBOARD_PASSWORD", "second")
    assert main(["dashboard-user", "add", "alice", "--users", str(users)]) == 0
    monkeypatch.setenv("OBUS_DASHBOARD_PASSWORD", "bob's")
    assert main(["dashboard-user", "add", "bob", "--users", str(users)]) == 0
    out = capsys.readouterr().out
    assert "added alice" in out and "changed the password of alice" in out
    read = auth.load_users(users)
    assert list(read) == ["alice", "bob"]
    assert read["alice"].check("second") and not read["alice"].check("first")
    assert read["alice"].log2_n == auth.DEFAULT_LOG2_N
    assert users.stat().st_mode & 0o077 == 0  # its owner's only
    assert main(["dashboard-user", "add", "no way!", "--users", str(users)]) == 2
