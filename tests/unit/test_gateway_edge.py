"""The gateway's edge without a broker: its TLS files, its limits' settings, its connection count.

The gateway under real clients (slow, hanging up, too many, HTTPS) is
tests/integration/test_gateway_abuse.py; here, what must fail before anything starts, and the
connection gate's bookkeeping against a plain protocol.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import resource
import ssl
from pathlib import Path

import pytest
import structlog
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bus.errors import ConfigError
from nodes.demo.scenario import demo_key
from nodes.gateway import connections
from nodes.gateway.connections import FD_RESERVE, ConnectionGate, fit_open_files, refusal_answer
from nodes.gateway.service import GatewayConfig
from nodes.gateway.tls import server_context
from tests.logcapture import capture_all_logs
from tests.mission import make_mission


def self_signed(directory: Path, name: str = "gateway", ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``ip`` (EC P-256) and its key: (cert.pem, key.pem).

    The certificate is its own trust anchor: a client trusts it with ``cafile=cert.pem``.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"obus test {name}")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt.pem", directory / f"{name}.key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


# -- TLS files: every mistake names the flag to fix ------------------------------------------


def test_a_certificate_and_its_key_make_a_tls12_minimum_server_context(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    context = server_context(cert, key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_a_missing_certificate_file_names_tls_cert(tmp_path: Path) -> None:
    _, key = self_signed(tmp_path)
    with pytest.raises(ConfigError) as err:
        server_context(tmp_path / "nope.pem", key)
    assert err.value.key == "--tls-cert" and "does not exist" in err.value.message


def test_a_missing_key_file_names_tls_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path)
    with pytest.raises(ConfigError) as err:
        server_context(cert, tmp_path / "nope.pem")
    assert err.value.key == "--tls-key" and "does not exist" in err.value.message


def test_a_key_that_is_not_the_certificates_names_tls_key(tmp_path: Path) -> None:
    cert, _ = self_signed(tmp_path, "one")
    _, other_key = self_signed(tmp_path, "two")
    with pytest.raises(ConfigError) as err:
        server_context(cert, other_key)
    assert err.value.key == "--tls-key" and "is not the private key" in err.value.message


def test_a_file_without_a_pem_certificate_names_tls_cert(tmp_path: Path) -> None:
    _, key = self_signed(tmp_path)
    with pytest.raises(ConfigError) as err:
        server_context(key, key)  # a key where the certificate should be
    assert err.value.key == "--tls-cert" and "no PEM certificate" in err.value.message


def test_an_encrypted_key_names_tls_key(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError) as err:
        server_context(cert, key)
    assert err.value.key == "--tls-key" and "encrypted" in err.value.message


# -- settings ---------------------------------------------------------------------------------


def _config(tmp_path: Path, **changes: object) -> GatewayConfig:
    base: dict[str, object] = {
        "org": "un", "bootstrap": "127.0.0.1:1", "db_path": tmp_path / "g.db",
        "mandate": make_mission().scenario.mandate, "node_key": demo_key("edge"),
    }  # fmt: skip
    base.update(changes)
    return GatewayConfig(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"tls_cert": Path("c.pem")}, "--tls-key"),
        ({"tls_key": Path("k.pem")}, "--tls-cert"),
        ({"header_timeout_s": 0}, "--header-timeout"),
        ({"body_timeout_s": float("inf")}, "--body-timeout"),
        ({"body_timeout_s": float("nan")}, "--body-timeout"),
        ({"max_connections": 0}, "--max-connections"),
    ],
)
def test_a_wrong_limit_or_half_a_tls_pair_names_its_flag(
    tmp_path: Path, changes: dict[str, object], flag: str
) -> None:
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, **changes)
    assert err.value.key == flag


def test_the_defaults_hold_ten_thousand_idle_connections(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    assert cfg.max_connections > 10_000
    assert (cfg.header_timeout_s, cfg.body_timeout_s) == (20.0, 30.0)


def test_the_connection_limit_is_lowered_to_fit_the_open_files_hard_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no open-files hard limit here, so nothing to lower")
    assert fit_open_files(hard + 10_000) == hard - FD_RESERVE
    assert fit_open_files(1) == 1


# -- the connection gate's count --------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(b"admitted")


async def test_the_gate_counts_exactly_and_answers_503_beyond_its_limit() -> None:
    """Connections opened and closed in bursts leave the count exact; beyond the limit the
    fixed 503 arrives whole (read before the close, not lost to a reset)."""
    with capture_all_logs() as logs:
        gate = ConnectionGate(
            _Echo, limit=3, answer=refusal_answer(3, 1, {}), log=structlog.get_logger(__name__)
        )
        server = await asyncio.get_running_loop().create_server(gate, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            for _ in range(5):  # bursts: the count returns to 0 every time
                held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
                assert [await r.readexactly(8) for r, _ in held] == [b"admitted"] * 3
                assert gate.open == 3
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
                async with asyncio.timeout(10):
                    answer = await r.read()  # to EOF: the gate closes it
                assert answer.startswith(b"HTTP/1.1 503 ")
                assert answer.endswith(b'"the gateway serves at most 3 connections at once"}')
                assert b"\r\nRetry-After: 1\r\n" in answer
                w.close()
                for _, hw in held:
                    hw.close()
                async with asyncio.timeout(10):
                    while gate.open:  # noqa: ASYNC110 - the event loop closes them
                        await asyncio.sleep(0.01)
            assert gate.counts() == {"open": 0, "limit": 3, "refused": 5}
        finally:
            server.close()
            await server.wait_closed()
    refusals = [e for e in logs if e["event"] == "connections_refused"]
    assert len(refusals) == 1, "refusals are logged once per interval, not per connection"


async def test_beyond_the_lingering_refusals_a_connection_is_reset_unanswered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flood beyond the limit must not hold a descriptor per refusal: once MAX_REFUSING
    refusals linger, the next connection is reset at once, without the 503."""
    monkeypatch.setattr(connections, "MAX_REFUSING", 1)
    monkeypatch.setattr(connections, "LINGER_S", 60.0)  # the lingering one stays for the test
    gate = ConnectionGate(
        _Echo, limit=1, answer=refusal_answer(1, 1, {}), log=structlog.get_logger()
    )
    server = await asyncio.get_running_loop().create_server(gate, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    streams = []
    try:
        streams.append(await asyncio.open_connection("127.0.0.1", port))
        assert await streams[0][0].readexactly(8) == b"admitted"
        streams.append(await asyncio.open_connection("127.0.0.1", port))
        async with asyncio.timeout(10):  # the answer, then the gate's half-close
            assert (await streams[1][0].read()).startswith(b"HTTP/1.1 503 ")
        streams.append(await asyncio.open_connection("127.0.0.1", port))
        async with asyncio.timeout(10):
            try:
                flooded = await streams[2][0].read()
            except ConnectionResetError:
                flooded = b""
        assert flooded == b""
        assert gate.counts() == {"open": 1, "limit": 1, "refused": 2}
    finally:
        for _, writer in streams:
            writer.close()
        gate.close()
        server.close()
        await server.wait_closed()
