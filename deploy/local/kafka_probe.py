"""Does a Kafka broker answer on HOST:PORT? Standard library only (runs before any venv exists).

Sends ApiVersions v0 (every broker answers it, whatever its version) and then Metadata
(v4..v8, the newest both sides speak, without the flexible encoding) and requires at least
one registered broker in the answer. Prints one line describing the cluster.

    python3 deploy/local/kafka_probe.py 127.0.0.1:9092 [--wait SECONDS] [--quiet]

Exit status: 0 when the broker answers, 1 when it does not (before --wait runs out).

A SASL listener (deploy/local/cluster.sh --secure) needs credentials: set
OBUS_PROBE_SASL_FILE to a file of ``mechanism=SCRAM-SHA-512|SCRAM-SHA-256|PLAIN``,
``username=...`` and ``password=...`` lines (a file, so no secret shows up in ``ps``). A
``ssl_cafile=PATH`` line in it makes the probe speak TLS, verifying the broker's certificate
and host name against that CA (a SASL_SSL listener).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import os
import secrets
import socket
import ssl
import struct
import sys
import time
from pathlib import Path

API_METADATA = 3
API_SASL_HANDSHAKE = 17
API_VERSIONS = 18
API_SASL_AUTHENTICATE = 36
SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}
CLIENT_ID = b"obus-probe"


class ProbeError(Exception):
    """The peer did not answer like a Kafka broker."""


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> int:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ProbeError("truncated response")
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return int(value)

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8", "replace")


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise ProbeError("connection closed by peer")
        buf += chunk
    return bytes(buf)


def _request(
    sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes
) -> _Reader:
    header = struct.pack(">hhih", api_key, version, correlation_id, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    reader = _Reader(_recv_exact(sock, size))
    if reader.take(">i") != correlation_id:
        raise ProbeError("correlation id mismatch")
    return reader


def _bytes(data: bytes) -> bytes:
    return struct.pack(">i", len(data)) + data


def _str(text: str) -> bytes:
    raw = text.encode()
    return struct.pack(">h", len(raw)) + raw


def _authenticate(sock: socket.socket, token: bytes, correlation_id: int) -> bytes:
    """SaslAuthenticate v0: one token out, the server's token back."""
    reader = _request(sock, API_SASL_AUTHENTICATE, 0, correlation_id, _bytes(token))
    error = reader.take(">h")
    message = reader.string()
    if error != 0:
        raise ProbeError(f"SASL authentication failed (error {error}): {message}")
    size = reader.take(">i")
    data = reader.data[reader.pos : reader.pos + max(size, 0)]
    reader.pos += max(size, 0)
    return data


def sasl_login(sock: socket.socket, mechanism: str, username: str, password: str) -> None:
    """SaslHandshake v1, then PLAIN or SCRAM (RFC 5802, no channel binding) over v0 tokens."""
    reader = _request(sock, API_SASL_HANDSHAKE, 1, 3, _str(mechanism))
    error = reader.take(">h")
    if error != 0:
        offered = [reader.string() for _ in range(reader.take(">i"))]
        raise ProbeError(f"broker refuses SASL mechanism {mechanism}; it offers {offered}")
    if mechanism == "PLAIN":
        _authenticate(sock, f"\0{username}\0{password}".encode(), 4)
        return
    digest = SCRAM_HASHES.get(mechanism)
    if digest is None:
        raise ProbeError(f"unsupported SASL mechanism {mechanism}")
    user = username.replace("=", "=3D").replace(",", "=2C")
    first_bare = f"n={user},r={secrets.token_urlsafe(18)}"
    server_first = _authenticate(sock, f"n,,{first_bare}".encode(), 4).decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    salted = hashlib.pbkdf2_hmac(
        digest().name, password.encode(), base64.b64decode(fields["s"]), int(fields["i"])
    )
    client_key = hmac.new(salted, b"Client Key", digest).digest()
    final_bare = f"c=biws,r={fields['r']}"
    auth_message = f"{first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(digest(client_key).digest(), auth_message, digest).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    final = f"{final_bare},p={base64.b64encode(proof).decode()}"
    server_final = _authenticate(sock, final.encode(), 5).decode()
    server_key = hmac.new(salted, b"Server Key", digest).digest()
    expected = base64.b64encode(hmac.new(server_key, auth_message, digest).digest()).decode()
    if server_final != f"v={expected}":
        raise ProbeError("SCRAM server signature does not verify")


def _settings() -> dict[str, str]:
    """The lines of OBUS_PROBE_SASL_FILE (none when it is not set)."""
    path = os.environ.get("OBUS_PROBE_SASL_FILE")
    if not path:
        return {}
    with Path(path).open(encoding="utf-8") as fh:
        return dict(line.strip().split("=", 1) for line in fh if "=" in line)


def _connect(host: str, port: int, timeout: float, cafile: str | None) -> socket.socket:
    """A TCP connection, wrapped in TLS verified against ``cafile`` when one is given."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(timeout)
    if not cafile:
        return sock
    try:
        return ssl.create_default_context(cafile=cafile).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def probe(host: str, port: int, timeout: float) -> str:
    """Return a one-line description of the cluster, or raise OSError/ProbeError."""
    settings = _settings()
    sasl = None
    if "username" in settings:
        sasl = (
            settings.get("mechanism", "SCRAM-SHA-512"),
            settings["username"],
            settings["password"],
        )
    with _connect(host, port, timeout, settings.get("ssl_cafile")) as sock:
        reader = _request(sock, API_VERSIONS, 0, 1, b"")
        error = reader.take(">h")
        if error != 0:
            raise ProbeError(f"ApiVersions error code {error}")
        versions = {}
        for _ in range(reader.take(">i")):
            key, low, high = reader.take(">h"), reader.take(">h"), reader.take(">h")
            versions[key] = (low, high)
        if API_METADATA not in versions:
            raise ProbeError("broker does not offer Metadata")
        if sasl is not None:
            sasl_login(sock, *sasl)
        low, high = versions[API_METADATA]
        version = min(high, 8)
        if version < max(low, 4):
            raise ProbeError(f"no common Metadata version (broker offers v{low}..v{high})")
        body = struct.pack(">ib", -1, 0)  # all topics, no auto-creation
        if version >= 8:
            body += struct.pack(">bb", 0, 0)  # no authorized operations
        reader = _request(sock, API_METADATA, version, 6, body)
        reader.take(">i")  # throttle_time_ms
        brokers = []
        for _ in range(reader.take(">i")):
            node_id = reader.take(">i")
            node_host = reader.string()
            node_port = reader.take(">i")
            reader.string()  # rack
            brokers.append(f"{node_id}@{node_host}:{node_port}")
        cluster_id = reader.string()
        controller = reader.take(">i")
        if not brokers:
            raise ProbeError("no broker registered yet")
        return (
            f"cluster {cluster_id} answers on {host}:{port}: "
            f"brokers {','.join(brokers)}, controller {controller}, "
            f"{len(versions)} APIs"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap", help="HOST:PORT")
    parser.add_argument("--wait", type=float, default=0.0, help="retry for this many seconds")
    parser.add_argument("--timeout", type=float, default=3.0, help="socket timeout per attempt")
    parser.add_argument("--quiet", action="store_true", help="print nothing on success")
    args = parser.parse_args(argv)
    host, sep, port_text = args.bootstrap.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        parser.error(f"expected HOST:PORT, got {args.bootstrap!r}")
    deadline = time.monotonic() + args.wait
    while True:
        try:
            line = probe(host.strip("[]"), int(port_text), args.timeout)
        except (OSError, ProbeError) as exc:
            if time.monotonic() >= deadline:
                print(f"no Kafka broker answers on {args.bootstrap}: {exc}", file=sys.stderr)
                return 1
            time.sleep(0.5)
        else:
            if not args.quiet:
                print(line)
            return 0


if __name__ == "__main__":
    sys.exit(main())
