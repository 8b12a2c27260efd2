"""A first deployment with only the installed package and the README's commands.

The package is installed from a copy of the checkout into a fresh venv (``--no-deps``: the
dependencies come from the project venv through a path file, so nothing is downloaded), and
every command runs as that venv's ``obus`` from a working directory outside the checkout: the
point is the installed entry point, never the source tree. On the real broker: a mandate from
``examples/mandate.toml`` (one organization trying it: its root key, threshold 1), topics,
accreditations (each refusal happens before anything is published: the registry topic's end
offset is unchanged after it), a node, a gateway, an observer's submit and sync,
``obus org list`` and an audit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bus.kafka.admin import end_offsets
from bus.topics import Topics
from tests.kafka_broker import free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
WAIT_S = 90
PASSPHRASE = "field observer passphrase"
ROOT_PASSPHRASE = "un root key passphrase"
NODE_PASSPHRASE = "un node key passphrase"


def _install(venv: Path, tmp: Path) -> Path:
    """The package installed from a copy of the checkout into ``venv``; its ``obus``."""
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for pkg in ("bus", "nodes"):
        shutil.copytree(REPO / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(site) / "obus-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install",
         "--no-deps", "--no-build-isolation", "--no-index", "-v", str(src)],
        check=False, capture_output=True, text=True, cwd=tmp,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stdout + pip.stderr
    out = pip.stdout + pip.stderr
    assert "deprecat" not in out.lower(), out
    return venv / "bin" / "obus"


class Obus:
    """Runs the installed ``obus`` in the working directory, against the test's broker."""

    def __init__(self, exe: Path, cwd: Path, bootstrap: str, prefix: str) -> None:
        self.exe, self.cwd, self.prefix = exe, cwd, prefix
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("OBUS_")}
        self.env.update(OBUS_BOOTSTRAP=bootstrap, OBUS_LOG_JSON="1", PYTHONPATH="")
        # root and node keys are encrypted at rest; their passphrases come from the environment
        self.env.update(
            OBUS_ROOT_KEY_PASSPHRASE=ROOT_PASSPHRASE, OBUS_NODE_KEY_PASSPHRASE=NODE_PASSPHRASE
        )

    def __call__(self, *argv: str, code: int | None = 0, prefix: bool = True) -> str:
        """Run one command; assert its exit code (unless None) and that no traceback shows."""
        extra = ["--topic-prefix", self.prefix] if prefix else []
        done = subprocess.run(
            [str(self.exe), *argv, *extra], cwd=self.cwd, env=self.env,
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert code is None or done.returncode == code, (
            f"obus {' '.join(argv)} exited {done.returncode}:\n{out}"
        )
        assert "Traceback" not in out, out
        return out

    def start(self, *argv: str, log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as err:
            return subprocess.Popen(
                [str(self.exe), *argv, "--topic-prefix", self.prefix], cwd=self.cwd, env=self.env,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            )  # fmt: skip


def _registry_end(bootstrap: str, topics: Topics) -> int:
    ends = asyncio.run(end_offsets(bootstrap, re.escape(topics.registry) + "$"))
    return sum(ends.values())


def _ops_url(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The ops server's base URL, from the process's ``ops_listening`` event (it was started
    with ``--ops-listen 127.0.0.1:0``: a free port, known only from its log)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        for line in log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "ops_listening":
                return str(event["url"])
        assert proc.poll() is None, f"exited {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no ops_listening event:\n{log.read_text()}"
        time.sleep(0.2)


async def _wait_ops(
    url: str, route: str, proc: subprocess.Popen[bytes], log: Path
) -> dict[str, Any]:
    """Poll the ops server's ``route`` (``healthz`` or ``readyz``) until it answers 200; its
    body. Fails when the process exits, or with the last answer after :data:`WAIT_S`."""
    last: Any = None
    async with aiohttp.ClientSession() as s:
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    if proc.poll() is not None:
                        raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()}")  # noqa: ASYNC240 - failure path
                    try:
                        async with s.get(url + route) as resp:
                            last = await resp.json()
                            if resp.status == 200:
                                return dict(last)
                    except aiohttp.ClientError as exc:
                        last = exc
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"{url}{route} not 200 within {WAIT_S} s: {last!r}") from None


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_first_deployment_from_the_installed_package(kafka_bootstrap: str, tmp_path: Path) -> None:
    obus_exe = _install(tmp_path / "venv", tmp_path)
    work = tmp_path / "deploy"
    work.mkdir()
    prefix = f"first-{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    obus = Obus(obus_exe, work, kafka_bootstrap, prefix)
    assert re.fullmatch(r"obus \d+\.\d+\.\d+\S*\n", obus("--version", prefix=False))

    # Keys: the organization's root key and a node key, encrypted at rest.
    root_pub = re.search(
        r"public key ([0-9a-f]{64})", obus("keygen", "--kind", "root", "un-root.json", prefix=False)
    )
    node_pub = re.search(
        r"public key ([0-9a-f]{64})", obus("keygen", "--kind", "node", "un-node.json", prefix=False)
    )
    assert root_pub and node_pub
    for name in ("un-root.json", "un-node.json"):
        assert '"obus-ed25519-encrypted"' in (work / name).read_text()
        assert (work / name).stat().st_mode & 0o777 == 0o600

    # The mandate from the example file: un's root key pasted in, threshold 1 (one
    # organization trying it out); a typo is refused with the nearest key.
    example = (REPO / "examples" / "mandate.toml").read_text()
    un_key = re.search(r'org = "un"\nname = .*\nroot_public_key = "([0-9a-f]{64})"', example)
    assert un_key
    desc = example.replace(un_key.group(1), root_pub.group(1)).replace(
        "threshold = 4", "threshold = 1"
    )
    (work / "typo.toml").write_text(desc.replace("threshold = 1", "thresold = 1"))
    err = obus("mandate", "draft", "typo.toml", "--out", "typo.draft", code=2, prefix=False)
    assert "thresold" in err and "did you mean threshold?" in err
    (work / "mandate.toml").write_text(desc)
    obus("mandate", "draft", "mandate.toml", "--out", "v1.draft", prefix=False)
    obus("mandate", "sign", "--key", "un-root.json", "v1.draft", prefix=False)
    obus("mandate", "combine", "v1.draft", "v1.draft.un.sig", "--out", "mandate.bin", prefix=False)
    obus("mandate", "verify", "mandate.bin", prefix=False)

    # Topics: the replication factor fits the cluster (one broker here).
    err = obus("topics", "--mandate", "mandate.bin", "--replication-factor", "2", code=2)
    assert "does not fit a cluster of 1 broker" in err
    assert "replication factor of new topics: 1" in obus("topics", "--mandate", "mandate.bin")
    obus("mandate", "publish", "mandate.bin")

    # Accreditation: every refusal before anything is published.
    base = [
        "org",
        "accredit",
        "--org",
        "un",
        "--root-key",
        "un-root.json",
        "--mandate",
        "mandate.bin",
    ]
    refusals = [
        (["--role", "node", "--subject", "node-1", "--public-key", node_pub.group(1)], "outside un's namespace"),
        (["--role", "node", "--subject", "un-node-1", "--public-key", node_pub.group(1),
          "--not-after", "2031-06-01T00:00:00Z"], "--not-after"),
        (["--role", "node", "--subject", "un-node-1", "--public-key", "abc"], "--public-key"),
        (["--role", "node", "--subject", "osce-node-1", "--public-key", node_pub.group(1)], "outside un's namespace"),
    ]  # fmt: skip
    before = _registry_end(kafka_bootstrap, topics)
    for extra, expected in refusals:
        assert expected in obus(*base, *extra, code=2)
        assert _registry_end(kafka_bootstrap, topics) == before
    obus(*base, "--role", "node", "--subject", "un-node-1", "--public-key", node_pub.group(1))
    after_node = _registry_end(kafka_bootstrap, topics)
    assert after_node == before + 1
    # the same key for another subject: every node would refuse it (duplicate_conflict)
    err = obus(
        *base, "--role", "node", "--subject", "un-node-2", "--public-key", node_pub.group(1), code=2
    )
    assert "duplicate_conflict" in err
    assert _registry_end(kafka_bootstrap, topics) == after_node

    # An observer: init (key encrypted), the organization accredits its request.
    (gw_port,) = free_ports(1)
    obus.env.update(OBUS_OBSERVER_HOME=str(work / "observer"), OBUS_PASSPHRASE=PASSPHRASE)
    obus("observer", "init", "--observer-id", "un-obs-7", "--org", "un", "--mandate",
         "mandate.bin", "--gateway", f"http://127.0.0.1:{gw_port}", prefix=False)  # fmt: skip
    obus(
        *base,
        "--role",
        "observer",
        "--request",
        str(work / "observer" / "accreditation-request.json"),
    )

    listed = obus("org", "list", "--mandate", "mandate.bin", "--org", "un")
    assert re.search(r"un-node-1\s+[0-9a-f]{64}\s+node .* active", listed), listed
    assert re.search(r"un-obs-7\s+[0-9a-f]{64}\s+observer .* active", listed), listed

    # No broker: one line naming the bootstrap and the fix, exit 3.
    (dead,) = free_ports(1)
    err = obus(
        "org", "list", "--mandate", "mandate.bin", "--bootstrap", f"127.0.0.1:{dead}", code=3
    )
    assert err.count("\n") == 1 and f"127.0.0.1:{dead}" in err and "fix:" in err

    # A node, a gateway, an observer's report delivered.
    policy = work / "un.toml"
    shutil.copy(REPO / "deploy" / "policies" / "un.toml", policy)
    # The README's commands, with the ops servers on free ports (the defaults 9464 and 9465 may
    # be taken by another test on this host).
    node = obus.start("node", "--org", "un", "--mandate", "mandate.bin", "--db", "un.db",
                      "--policy", str(policy), "--node-key", "un-node.json",
                      "--ops-listen", "127.0.0.1:0", log=work / "node.log")  # fmt: skip
    gateway = None
    try:
        node_ops = _ops_url(node, work / "node.log")
        # ready: the broker answers, every report partition read, stores writable, sealer calm
        ready = asyncio.run(_wait_ops(node_ops, "readyz", node, work / "node.log"))
        assert ready["ready"] is True and ready["reasons"] == [], ready
        gateway = obus.start("gateway", "--org", "un", "--mandate", "mandate.bin", "--node-key",
                             "un-node.json", "--db", "gateway.db", "--final-db", "un.final.db",
                             "--port", str(gw_port), "--ops-listen", "127.0.0.1:0",
                             log=work / "gateway.log")  # fmt: skip
        gw_ops = _ops_url(gateway, work / "gateway.log")
        assert gw_ops != node_ops
        health = asyncio.run(_wait_ops(gw_ops, "healthz", gateway, work / "gateway.log"))
        assert health["status"] == "ok", health
        observed = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        (work / "report.yaml").write_text(
            (REPO / "examples" / "report.yaml")
            .read_text()
            .replace("2026-11-01T06:30:00Z", observed.strftime("%Y-%m-%dT%H:%M:%SZ"))
        )
        obus("observer", "submit", "report.yaml", prefix=False)
        deadline = time.monotonic() + WAIT_S
        while "delivered 1" not in (out := obus("observer", "sync", prefix=False, code=None)):
            assert time.monotonic() < deadline, out
            time.sleep(1)
    finally:
        if gateway is not None:
            _stop(gateway)
        _stop(node)

    # The audit of the live bus: no violation.
    obus("audit", "--mandate", "mandate.bin", "--json-out", "audit.json")
    assert (work / "audit.json").exists()
