"""A throwaway local Kafka cluster (N KRaft nodes) for fault and security tests.

Started and stopped with ``deploy/local/cluster.sh`` (which runs every node through
``kafka.sh``), so the tests exercise the same scripts an operator uses. Every node stops by
itself when this Python process ends, even by SIGKILL (``--exit-with``). A ``secure`` cluster
speaks SASL_SSL only: clients log in with SCRAM-SHA-512 over TLS and verify the brokers
against the CA that ``cluster.sh`` made for this data dir (:attr:`LocalKafkaCluster.cafile`).

    with LocalKafkaCluster(brokers=3) as cluster:
        cluster.kill(2)          # kill -9 node 2
        cluster.restart()        # cluster.sh up: brings back the nodes that do not run
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient

from bus.kafka.client import KafkaSecurity, client_options
from tests.kafka_broker import EXIT_PORT_IN_USE, REPO, free_ports

CLUSTER_SH = REPO / "deploy" / "local" / "cluster.sh"
START_ATTEMPTS = 3


class ClusterError(RuntimeError):
    """``cluster.sh`` failed; the message carries its output."""


class LocalKafkaCluster:
    """N combined broker+controller nodes on 127.0.0.1 (free ports, temporary data dir)."""

    def __init__(
        self,
        brokers: int = 3,
        *,
        secure: bool = False,
        users: tuple[str, ...] = ("un", "osce", "eu", "nato", "csto", "sco"),
        timeout_s: int = 180,
    ) -> None:
        self.brokers = brokers
        self.secure = secure
        self.users = users
        self._timeout_s = timeout_s
        self.data_dir: Path | None = None
        self.cafile: Path | None = None
        self.ports: list[int] = []
        self.frozen: set[int] = set()
        self.output = ""

    # -- lifecycle ---------------------------------------------------------------------

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``cluster.sh ARGS... --data-dir D`` (bounded by the start timeout)."""
        assert self.data_dir is not None
        env = {k: v for k, v in os.environ.items() if k != "OBUS_BOOTSTRAP"}
        proc = subprocess.run(
            [str(CLUSTER_SH), *args, "--data-dir", str(self.data_dir)],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
            timeout=self._timeout_s * 2 + 60,
        )
        self.output = proc.stdout
        if check and proc.returncode != 0:
            raise ClusterError(
                f"cluster.sh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}"
            )
        return proc

    def start(self) -> str:
        """Start every node on free ports; returns the bootstrap servers."""
        outputs = []
        for _ in range(START_ATTEMPTS):
            self.data_dir = Path(tempfile.mkdtemp(prefix="obus-cluster-"))
            ports = free_ports(2 * self.brokers)
            args = [
                "up",
                "--brokers", str(self.brokers),
                "--ports", ",".join(map(str, ports[: self.brokers])),
                "--controller-ports", ",".join(map(str, ports[self.brokers :])),
                "--timeout", str(self._timeout_s),
                "--exit-with", str(os.getpid()),
            ]  # fmt: skip
            if self.secure:
                args += ["--secure", "--users", ",".join(self.users)]
            try:
                proc = self.run(*args, check=False)
            except BaseException:
                self.stop()
                raise
            outputs.append(proc.stdout)
            if proc.returncode == 0:
                self.ports = ports[: self.brokers]
                if self.secure:  # where an operator finds it: cluster.sh cafile
                    self.cafile = Path(self.run("cafile").stdout.strip().splitlines()[-1])
                return self.bootstrap
            self.stop()
            if proc.returncode != EXIT_PORT_IN_USE:
                break
        raise ClusterError("cluster.sh up failed:\n" + "\n".join(outputs))

    def stop(self) -> None:
        """Thaw frozen nodes, stop every node and remove the data dir."""
        for node in list(self.frozen):
            self.thaw(node)
        if self.data_dir is not None and self.data_dir.exists():
            self.run("down", check=False)
            if os.environ.get("OBUS_KEEP_KAFKA_DATA"):
                print(f"keeping Kafka cluster data dir {self.data_dir}")
            else:
                shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir = None
        self.cafile = None

    def restart(self) -> None:
        """Bring back every node that does not run (``cluster.sh up`` on the same data dir)."""
        self.run("up", "--timeout", str(self._timeout_s), "--exit-with", str(os.getpid()))

    def __enter__(self) -> LocalKafkaCluster:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses and credentials -----------------------------------------------------

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def password(self, user: str) -> str:
        assert self.data_dir is not None
        return (self.data_dir / "secrets" / f"{user}.password").read_text().strip()

    def security(self, user: str = "admin") -> KafkaSecurity | None:
        """SASL_SSL settings of a principal: SCRAM-SHA-512 over TLS verified against the
        cluster's CA (None for a PLAINTEXT cluster)."""
        if not self.secure:
            return None
        assert self.cafile is not None
        return KafkaSecurity(
            protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512",
            username=user,
            password=self.password(user),
            ssl_cafile=str(self.cafile),
        )

    # -- faults --------------------------------------------------------------------------

    def pid(self, node: int) -> int:
        return int(self.run("pid", "--node", str(node)).stdout.strip().splitlines()[-1])

    def kill(self, node: int, timeout_s: float = 30) -> None:
        """kill -9 the node and wait (bounded) until the process is gone."""
        pid = self.pid(node)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while _alive(pid):
            if time.monotonic() > deadline:
                raise ClusterError(f"node {node} (pid {pid}) still runs after SIGKILL")
            time.sleep(0.1)

    def freeze(self, node: int) -> None:
        """SIGSTOP the node: alive, holding its sockets, answering nothing."""
        os.kill(self.pid(node), signal.SIGSTOP)
        self.frozen.add(node)

    def thaw(self, node: int) -> None:
        """SIGCONT a frozen node."""
        os.kill(self.pid(node), signal.SIGCONT)
        self.frozen.discard(node)

    async def leaders(self, topic: str, timeout_s: float = 60) -> dict[int, tuple[int, list[int]]]:
        """partition -> (leader node id, ISR) as the cluster reports it now (bounded)."""
        admin = AIOKafkaAdminClient(**client_options(self.bootstrap, self.security()))
        try:
            async with asyncio.timeout(timeout_s):
                await admin.start()
                (desc,) = await admin.describe_topics([topic])
        finally:
            await admin.close()
        return {p["partition"]: (p["leader"], list(p["isr"])) for p in desc["partitions"]}

    async def wait_isr(self, topic: str, size: int, timeout_s: float = 120) -> None:
        """Wait (bounded) until every partition of topic has `size` in-sync replicas."""
        async with asyncio.timeout(timeout_s):
            while True:
                try:
                    parts = await self.leaders(topic, timeout_s=20)
                    if all(len(isr) >= size and leader >= 0 for leader, isr in parts.values()):
                        return
                except (OSError, TimeoutError):
                    pass
                await asyncio.sleep(0.5)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (killed, not yet reaped by its parent) counts as gone
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"
