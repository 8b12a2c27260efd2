"""The gateway's HTTPS: a server TLS context from the operator's certificate and key files.

:func:`server_context` checks the two files itself before handing them to :mod:`ssl`, so that a
mistake names the flag to fix (``--tls-cert`` or ``--tls-key``) and says what is wrong with it,
rather than an OpenSSL error code: a missing or unreadable file, a file that holds no PEM
certificate or no PEM private key, an encrypted key (the gateway runs unattended, so it cannot
ask for a passphrase), or a key that is not the certificate's.

The context accepts TLS 1.2 and 1.3 only; on TLS 1.2 only forward-secret AEAD suites (ECDHE with
AES-GCM or ChaCha20-Poly1305); no renegotiation, no compression.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
)

from bus.errors import ConfigError

CERT_FLAG: Final = "--tls-cert"
KEY_FLAG: Final = "--tls-key"
_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context serving ``cert`` (PEM, the leaf first, then its chain) with ``key``.

    Raises:
        ConfigError: naming ``--tls-cert`` or ``--tls-key``: the file is missing or unreadable,
            holds no PEM certificate / unencrypted PEM private key, or the key does not match
            the certificate.
    """
    try:
        leaf = x509.load_pem_x509_certificates(_read(cert, CERT_FLAG))[0]
    except ValueError as exc:
        raise ConfigError(
            CERT_FLAG, f"{cert} holds no PEM certificate ({exc})", "give the PEM certificate file"
        ) from exc
    try:
        private = load_pem_private_key(_read(key, KEY_FLAG), password=None)
    except TypeError as exc:  # cryptography: "Password was not given but private key is encrypted"
        raise ConfigError(
            KEY_FLAG,
            f"{key} is encrypted",
            "give the key unencrypted, readable by the gateway only",
        ) from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            KEY_FLAG, f"{key} holds no PEM private key ({exc})", "give the PEM private key file"
        ) from exc
    if _spki(leaf.public_key()) != _spki(private.public_key()):
        raise ConfigError(
            KEY_FLAG,
            f"{key} is not the private key of the certificate in {cert}",
            "give the key the certificate was issued for, or the certificate of this key",
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(_TLS12_CIPHERS)  # TLS 1.3 suites are all AEAD and forward-secret
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:  # e.g. a key type or size this OpenSSL refuses
        raise ConfigError(CERT_FLAG, f"{cert} with {key}: {exc}", "check both files") from exc
    return context


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(flag, f"{path} does not exist", "give the path of the PEM file") from exc
    except OSError as exc:
        raise ConfigError(
            flag, f"cannot read {path}: {exc.strerror or exc}", "check the file's permissions"
        ) from exc


def _spki(public_key: PublicKeyTypes) -> bytes:
    """The DER SubjectPublicKeyInfo of a certificate's or private key's public key."""
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
