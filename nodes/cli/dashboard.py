"""``obus dashboard-user add|list``: the dashboard's users file, and the login options that
``obus node`` and ``obus dashboard`` share (:mod:`nodes.org_node.dashboard.auth` states the file
format and the rules).

The password is read from ``OBUS_DASHBOARD_PASSWORD`` when set (scripts), else prompted for
twice without echo; it is never an argument (it would show in the process list and the shell
history).
"""

from __future__ import annotations

import argparse
import getpass
import os
from pathlib import Path
from typing import TYPE_CHECKING

from bus.errors import ConfigError
from nodes.cli.common import add_log_level

if TYPE_CHECKING:
    from nodes.org_node.dashboard.auth import DashboardAuth

PASSWORD_ENV = "OBUS_DASHBOARD_PASSWORD"  # noqa: S105 - the variable's name, not a password


def add_auth_args(p: argparse.ArgumentParser) -> None:
    """The dashboard's login options."""
    g = p.add_argument_group(
        "dashboard login",
        "Everything the dashboard serves but its login page needs credentials: a user of "
        "--dashboard-users (session cookie), or a trusted reverse proxy's header. With "
        "neither, nobody gets in.",
    )
    g.add_argument(
        "--dashboard-users", metavar="FILE",
        help="users file, name:scrypt-hash lines (obus dashboard-user add writes it)",
    )  # fmt: skip
    g.add_argument(
        "--dashboard-proxy-header", metavar="HEADER",
        help="believe this header (e.g. X-Remote-User) as the user, from trusted proxies only",
    )  # fmt: skip
    g.add_argument(
        "--dashboard-trusted-proxy", action="append", default=[], metavar="ADDR",
        help="address or network (CIDR) of the reverse proxy; repeatable",
    )  # fmt: skip
    g.add_argument(
        "--dashboard-session-hours", type=float, default=12.0, metavar="H",
        help="how long a login lasts (default 12)",
    )  # fmt: skip


def auth_from_args(args: argparse.Namespace) -> DashboardAuth:
    """The :class:`~nodes.org_node.dashboard.auth.DashboardAuth` the options describe.

    Raises:
        ConfigError: an unreadable or wrong users file, a bad address, a header without a
            trusted proxy.
    """
    from nodes.org_node.dashboard.auth import (  # noqa: PLC0415 - keep `obus --help` fast
        DashboardAuth,
        load_users,
    )

    users = load_users(Path(args.dashboard_users)) if args.dashboard_users else {}
    if args.dashboard_trusted_proxy and not args.dashboard_proxy_header:
        raise ConfigError(
            "--dashboard-trusted-proxy",
            "is given without --dashboard-proxy-header",
            "name the header the proxy sets the user in",
        )
    return DashboardAuth(
        users=users,
        proxy_header=args.dashboard_proxy_header,
        trusted_proxies=DashboardAuth.networks(args.dashboard_trusted_proxy),
        session_hours=args.dashboard_session_hours,
    )


def _password() -> str:
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        return from_env
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("password", "the two entries differ", "type the same password twice")
    return first


def _cmd_add(args: argparse.Namespace) -> int:
    from nodes.org_node.dashboard.auth import add_user  # noqa: PLC0415

    path = Path(args.users)
    new = add_user(path, args.name, _password())
    print(f"{'added' if new else 'changed the password of'} {args.name} in {path}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from nodes.org_node.dashboard.auth import load_users  # noqa: PLC0415

    for name, h in load_users(Path(args.users)).items():
        print(f"{name}\tscrypt log2N={h.log2_n} r={h.r} p={h.p}")
    return 0


def add_dashboard_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``dashboard-user`` on the ``obus`` parser."""
    du = sub.add_parser(
        "dashboard-user",
        help="add or list the users who may log in to a node's dashboard",
        description="Write the dashboard's users file (name:scrypt-hash lines; README "
        "'Dashboard login'). Pass it to obus node or obus dashboard with --dashboard-users. "
        f"The password comes from ${PASSWORD_ENV} or a prompt, never from an argument.",
    )
    ds = du.add_subparsers(dest="dashboard_user_command", required=True, metavar="ACTION")
    add = ds.add_parser("add", help="add a user, or change a user's password")
    add.add_argument("name", help="1..64 of A-Z a-z 0-9 . _ @ -")
    add.add_argument("--users", required=True, metavar="FILE", help="the users file")
    add_log_level(add)
    add.set_defaults(func=_cmd_add)
    ls = ds.add_parser("list", help="list the users and their hash parameters")
    ls.add_argument("--users", required=True, metavar="FILE", help="the users file")
    add_log_level(ls)
    ls.set_defaults(func=_cmd_list)
