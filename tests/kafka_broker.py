"""A throwaway local Apache Kafka broker for tests, run through ``deploy/local/kafka.sh``.

The tests and ``make demo`` start brokers with the same script, so what the tests prove about
the broker configuration holds for the demo too.

    with LocalKafka() as kafka:          # free ports on 127.0.0.1, temporary data dir
        await create_topics(kafka.bootstrap, ["obus.reports.org1"], partitions=3)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

REPO = Path(__file__).resolve().parents[1]
KAFKA_SH = REPO / "deploy" / "local" / "kafka.sh"
HOST = "127.0.0.1"
EXIT_PORT_IN_USE = 4  # kafka.sh up: another process took one of the ports
START_ATTEMPTS = 3
TOPIC_ALREADY_EXISTS = 36


class KafkaStartError(RuntimeError):
    """``kafka.sh up`` failed; the message carries its output (with the broker log tail)."""


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Ports nobody listens on right now (held open together, so they are distinct)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class LocalKafka:
    """One single-node KRaft broker on 127.0.0.1, started and stopped with ``kafka.sh``.

    Without ``data_dir`` the broker lives in a temporary directory that :meth:`stop` removes
    (set ``OBUS_KEEP_KAFKA_DATA=1`` to keep it for a post-mortem). The broker also stops by
    itself when this Python process ends, even by SIGKILL (``kafka.sh up --exit-with``).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        timeout_s: int = 120,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        self._owns_dir = data_dir is None
        self._data_dir = data_dir
        self._timeout_s = timeout_s
        self._properties = dict(properties or {})
        self._port: int | None = None
        self.output = ""  # what the last kafka.sh call printed

    @property
    def data_dir(self) -> Path:
        if self._data_dir is None:
            raise RuntimeError("LocalKafka has no data dir before start()")
        return self._data_dir

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("LocalKafka is not started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the client listener."""
        return f"{HOST}:{self.port}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``kafka.sh ARGS...`` against a local broker, whatever ``OBUS_BOOTSTRAP`` says."""
        env = {k: v for k, v in os.environ.items() if k != "OBUS_BOOTSTRAP"}
        proc = subprocess.run(
            [str(KAFKA_SH), *args],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            check=False,
        )
        self.output = proc.stdout
        return proc

    def start(self) -> str:
        """Start the broker on free ports; return its bootstrap address."""
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="obus-kafka-"))
        extra = [arg for kv in self._properties.items() for arg in ("--set", "=".join(kv))]
        outputs = []
        for _ in range(START_ATTEMPTS):
            port, controller_port = free_ports(2)
            try:
                proc = self._up(port, controller_port, extra)
            except BaseException:  # e.g. KeyboardInterrupt while waiting: leave nothing behind
                self.run("down", "--data-dir", str(self._data_dir))
                self._cleanup()
                raise
            outputs.append(proc.stdout)
            if proc.returncode == 0:
                self._port = port
                return self.bootstrap
            if proc.returncode != EXIT_PORT_IN_USE:
                break
        self._cleanup()
        raise KafkaStartError(
            f"{KAFKA_SH.relative_to(REPO)} up failed (exit {proc.returncode}):\n"
            + "\n".join(outputs)
        )

    def _up(
        self, port: int, controller_port: int, extra: list[str]
    ) -> subprocess.CompletedProcess[str]:
        return self.run(
            "up",
            "--port",
            str(port),
            "--controller-port",
            str(controller_port),
            "--data-dir",
            str(self._data_dir),
            "--timeout",
            str(self._timeout_s),
            "--exit-with",
            str(os.getpid()),
            *extra,
        )

    def stop(self) -> None:
        """Stop the broker (if it runs) and remove a temporary data dir."""
        if self._data_dir is not None and self._data_dir.exists():
            proc = self.run("down", "--data-dir", str(self._data_dir))
            if proc.returncode != 0:
                raise RuntimeError(f"kafka.sh down failed:\n{proc.stdout}")
        self._port = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self._owns_dir and self._data_dir is not None:
            if os.environ.get("OBUS_KEEP_KAFKA_DATA"):
                print(f"keeping Kafka data dir {self._data_dir}")
            else:
                shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> LocalKafka:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def create_topics(
    bootstrap: str,
    names: Iterable[str],
    partitions: int = 3,
    *,
    replication_factor: int = 1,
    exist_ok: bool = False,
    timeout_s: float = 30.0,
) -> None:
    """Create topics and wait until every partition has a leader (ready to produce to)."""
    names = list(names)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        async with asyncio.timeout(timeout_s):
            response = await admin.create_topics(
                [NewTopic(name, partitions, replication_factor) for name in names]
            )
            for error in response.to_object()["topic_errors"]:
                code = error["error_code"]
                if code == 0 or (code == TOPIC_ALREADY_EXISTS and exist_ok):
                    continue
                raise for_code(code)(f"creating topic {error['topic']}: {error['error_message']}")
            while True:
                topics = await admin.describe_topics(names)
                if all(
                    topic["error_code"] == 0
                    and topic["partitions"]
                    and all(p["error_code"] == 0 and p["leader"] >= 0 for p in topic["partitions"])
                    for topic in topics
                ):
                    return
                await asyncio.sleep(0.1)
    finally:
        await admin.close()
