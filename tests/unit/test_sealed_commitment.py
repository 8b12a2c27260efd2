"""Restricted reports, format version 2: the key commitment (also against a dual-key AES-GCM
ciphertext), recipient key ids against the registry, the inner report's window, padding to
size buckets, the round trip, and version 1 refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from bus.errors import Reason
from bus.ingest import AcceptedSealed, Outcome, Quarantined
from bus.model import (
    PAYLOAD_SEALED_REPORT,
    Attachment,
    EncryptionKey,
    Envelope,
    Location,
    Report,
    SealedReport,
    encode,
)
from bus.sealed import (
    PAYLOAD_SEALED_REPORT_V1,
    DecryptionKey,
    Readability,
    VerifiedSealed,
    bucket_size,
    content_aad,
    content_aead_key,
    is_sealed,
    pad_content,
    seal_report,
    unpad_content,
)
from bus.sign import sign_encryption_key, sign_envelope
from tests.mission import Mission, demo_key, make_mission, ref
from tests.unit.test_sealed import UN, _ingestor, _keys, _publish_keys, _resign

K1 = bytes(range(32))
K2 = bytes(range(32, 64))
NONCE = bytes(range(12))


def _judge(m: Mission, raw: bytes, holder: DecryptionKey | None) -> Outcome:
    return _ingestor(m, [holder] if holder else []).judge(ref(UN, 0), raw, "un")


def _view(m: Mission, raw: bytes, holder: DecryptionKey | None) -> VerifiedSealed:
    out = _judge(m, raw, holder)
    assert isinstance(out, AcceptedSealed), out  # never a verdict that depends on a private key
    return out.verified


def _setup() -> tuple[Mission, dict[str, DecryptionKey], dict[str, EncryptionKey]]:
    m = make_mission()
    keys = _keys()
    return m, keys, _publish_keys(m, keys)


# -- the key commitment ------------------------------------------------------------------------


def test_a_recipient_wrapped_another_content_key_sees_the_commitment_mismatch() -> None:
    # The observer commits to K1, wraps K1 to UN and K2 to OSCE, and signs the whole record.
    m, keys, eks = _setup()
    d = m.draft()
    honest = seal_report(d, [eks["un"], eks["osce"]], content_key=K1, nonce=NONCE)
    other = seal_report(d, [eks["un"], eks["osce"]], content_key=K2, nonce=NONCE)
    raw = _resign(m, dataclasses.replace(honest, recipients=(honest.recipients[0],
                                                             other.recipients[1])))  # fmt: skip
    un, osce = _view(m, raw, keys["un"]), _view(m, raw, keys["osce"])
    eu, auditor = _view(m, raw, keys["eu"]), _view(m, raw, None)
    assert un.readability is Readability.READABLE
    assert un.report is not None and un.report.narrative == "Impacts counted."
    assert osce.readability is Readability.INCONSISTENT  # the recipient with the odd key
    assert osce.reason is Reason.KEY_COMMITMENT_MISMATCH
    assert osce.detail.startswith("key_commitment_mismatch: ")
    assert (osce.report, osce.content) == (None, b"")
    assert eu.readability is auditor.readability is Readability.NOT_RECIPIENT
    assert len({v.envelope_digest for v in (un, osce, eu, auditor)}) == 1  # one verdict


# GF(2^128) as AES-GCM uses it (NIST SP 800-38D, 6.3): blocks as big-endian integers.
_R = 0xE1 << 120


def _gf_mul(x: int, y: int) -> int:
    z, v = 0, x
    for i in range(127, -1, -1):
        if (y >> i) & 1:
            z ^= v
        v = (v >> 1) ^ _R if v & 1 else v >> 1
    return z


def _gf_pow(x: int, e: int) -> int:
    out = 1 << 127  # the field's one
    while e:
        if e & 1:
            out = _gf_mul(out, x)
        x = _gf_mul(x, x)
        e >>= 1
    return out


def _aes(key: bytes, block: bytes) -> int:
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return int.from_bytes(enc.update(block) + enc.finalize())


def _ghash(h: int, blocks: list[int]) -> int:
    y = 0
    for x in blocks:
        y = _gf_mul(y ^ x, h)
    return y


def _blocks(data: bytes) -> list[int]:
    data += bytes(-len(data) % 16)
    return [int.from_bytes(data[i : i + 16]) for i in range(0, len(data), 16)]


def _two_key_ciphertext(
    k1: bytes, k2: bytes, nonce: bytes, aad: bytes, plain: bytes, free: int
) -> bytes:
    """AES-GCM ciphertext and tag of ``plain`` under k1, block ``free`` changed so that it also
    opens under k2: GHASH is linear in each ciphertext block, so one block solves the tag."""
    assert len(plain) % 16 == 0 and len(nonce) == 12
    h1, h2 = _aes(k1, bytes(16)), _aes(k2, bytes(16))
    j0 = nonce + (1).to_bytes(4)
    c = [p ^ _aes(k1, nonce + (2 + i).to_bytes(4)) for i, p in enumerate(_blocks(plain))]
    c[free] = 0
    lengths = [int.from_bytes((8 * len(aad)).to_bytes(8) + (8 * len(plain)).to_bytes(8))]
    a = _blocks(aad)
    xs = [*a, *c, *lengths]
    e = len(xs) - (len(a) + free)  # the power of H that multiplies the free block
    rhs = _aes(k1, j0) ^ _aes(k2, j0) ^ _ghash(h1, xs) ^ _ghash(h2, xs)
    c[free] = _gf_mul(rhs, _gf_pow(_gf_pow(h1, e) ^ _gf_pow(h2, e), 2**128 - 2))
    tag = _aes(k1, j0) ^ _ghash(h1, [*a, *c, *lengths])
    return b"".join(x.to_bytes(16) for x in [*c, tag])


def test_a_ciphertext_that_opens_under_two_keys_is_read_only_under_the_committed_one() -> None:
    # "Invisible salamanders": without the commitment, UN and OSCE would both decrypt this one
    # signed ciphertext, to different bytes. The free block lies in an attachment's SHA-256.
    m, keys, eks = _setup()
    marker = b"\xaa" * 32
    d = m.draft(attachments=(Attachment(marker, 1000, "image/jpeg"),))
    context = content_aad(d.report_id, d.observer_id, d.org, d.seq)
    plain = pad_content(encode(d))
    free = -(-plain.index(marker) // 16)
    assert 16 * free + 16 <= plain.index(marker) + 32
    k1, k2 = content_aead_key(K1, context), content_aead_key(K2, context)
    ct = _two_key_ciphertext(k1, k2, NONCE, context, plain, free)
    under_k1 = AESGCM(k1).decrypt(NONCE, ct, context)
    assert AESGCM(k2).decrypt(NONCE, ct, context) != under_k1  # the attack works on AES-GCM
    honest = seal_report(d, [eks["un"], eks["osce"]], content_key=K1, nonce=NONCE)
    other = seal_report(d, [eks["un"], eks["osce"]], content_key=K2, nonce=NONCE)
    raw = _resign(m, dataclasses.replace(honest, ciphertext=ct, recipients=(
        honest.recipients[0], other.recipients[1])))  # fmt: skip
    un, osce = _view(m, raw, keys["un"]), _view(m, raw, keys["osce"])
    assert un.readability is Readability.READABLE
    assert un.content == unpad_content(under_k1)
    assert un.report is not None and un.report.attachments[0].sha256 != marker
    assert (osce.readability, osce.reason) == (
        Readability.INCONSISTENT,
        Reason.KEY_COMMITMENT_MISMATCH,
    )


def test_version_1_without_a_commitment_is_quarantined_everywhere() -> None:
    m, keys, eks = _setup()
    pb = seal_report(m.draft(), [eks["un"]]).to_pb()
    pb.ClearField("key_commitment")
    v1 = sign_envelope(PAYLOAD_SEALED_REPORT_V1, pb.SerializeToString(), [m.observer()[1]])
    v2 = sign_envelope(PAYLOAD_SEALED_REPORT, pb.SerializeToString(), [m.observer()[1]])
    assert is_sealed(v1.encode()) and is_sealed(v2.encode())
    for holder in (keys["un"], keys["eu"], None):
        old = _judge(m, v1.encode(), holder)
        assert isinstance(old, Quarantined)
        assert old.reason == Reason.KEY_COMMITMENT_MISSING.value, old.detail
        empty = _judge(m, v2.encode(), holder)  # the current type without a commitment
        assert isinstance(empty, Quarantined)
        assert (empty.reason, "key_commitment" in empty.detail) == ("invalid_field", True)


# -- recipient key ids against the registry ----------------------------------------------------


def _rogue(org: str, m: Mission) -> EncryptionKey:
    mandate = m.scenario.mandate
    k = DecryptionKey(org, demo_key(f"x25519:rogue-{org}").seed)
    return EncryptionKey(
        org, k.public_key, mandate.not_before_ms, mandate.not_after_ms, 1, m.mandate_id
    )


def _rotated(m: Mission, eks: dict[str, EncryptionKey]) -> EncryptionKey:
    raw_key = DecryptionKey("un", demo_key("x25519:un-2").seed).public_key
    new = dataclasses.replace(eks["un"], serial=2, public_key=raw_key)
    m.apply(sign_encryption_key(new, m.scenario.org_roots["un"]))
    return eks["un"]  # sealed to after the rotation: stale


def _not_yet_valid(m: Mission, eks: dict[str, EncryptionKey]) -> EncryptionKey:
    late = dataclasses.replace(eks["un"], serial=2, not_before_ms=m.now - 1000)
    m.apply(sign_encryption_key(late, m.scenario.org_roots["un"]))
    return late  # the draft was signed before it


# name -> the key the observer seals UN's copy to (after changing the registry, maybe)
WRONG_KEYS: dict[str, Callable[[Mission, dict[str, EncryptionKey]], EncryptionKey]] = {
    "a key id the organization never registered": lambda m, _eks: _rogue("un", m),
    "an organization with no encryption key": lambda m, _eks: _rogue("nato", m),
    "a key superseded by a newer serial": _rotated,
    "the current key, not valid at signed_at": _not_yet_valid,
}


@pytest.mark.parametrize("name", list(WRONG_KEYS))
def test_a_wrap_to_a_key_that_is_not_the_registered_encryption_key_is_refused(name: str) -> None:
    m, keys, eks = _setup()
    wrong = WRONG_KEYS[name](m, eks)
    raw = m.signer().sign_sealed(m.draft(), [eks["osce"], wrong])
    for holder in (keys["un"], keys["osce"], keys["eu"], None):  # the same at every reader
        out = _judge(m, raw, holder)
        assert isinstance(out, Quarantined), name
        assert out.reason == Reason.RECIPIENT_KEY_NOT_CURRENT.value, out.detail
        assert wrong.org in out.detail


# -- the inner report is checked like a plain report -------------------------------------------


def _far() -> Location:
    return Location(10.0, 10.0, 100, "elsewhere")


# name -> (changes to the draft, the reason a plain report gets)
CONTENT_DEFECTS: dict[str, tuple[Callable[[Mission], dict[str, object]], Reason]] = {
    "observed before the mandate window": (
        lambda m: {"observed_at_ms": m.scenario.mandate.not_before_ms - 60_000},
        Reason.OUTSIDE_WINDOW,
    ),
    "observed after it was signed": (
        lambda m: {"observed_at_ms": m.now - 3_000_000 + 6 * 60_000},
        Reason.INVALID_FIELD,
    ),
    "location outside its zone": (lambda _m: {"location": _far()}, Reason.OUTSIDE_ZONE),
}


@pytest.mark.parametrize("name", list(CONTENT_DEFECTS))
def test_an_inner_report_outside_the_mandate_is_refused_by_its_recipients(name: str) -> None:
    changes, reason = CONTENT_DEFECTS[name]
    m, keys, eks = _setup()
    plain = _judge(m, m.signer("un", 2).sign(m.draft("un", 2, **changes(m))), None)
    assert isinstance(plain, Quarantined)
    assert plain.reason == reason.value  # what a plain report gets
    raw = m.signer().sign_sealed(m.draft("un", 1, **changes(m)), [eks["un"]])
    un, eu = _view(m, raw, keys["un"]), _view(m, raw, keys["eu"])
    assert (un.readability, un.reason, un.report, un.content) == (
        Readability.INCONSISTENT, reason, None, b""
    )  # fmt: skip
    assert un.detail.startswith(f"{reason.value}: inner report: ")
    assert eu.readability is Readability.NOT_RECIPIENT


# -- padding -------------------------------------------------------------------------------------


def test_bucket_sizes() -> None:
    sizes = {1: 1024, 1024: 1024, 1025: 2048, 4096: 4096, 4097: 8192, 65536: 65536,
             65537: 131072, 131073: 196608, 196608: 196608}  # fmt: skip
    assert {n: bucket_size(n) for n in sizes} == sizes
    for content in (b"", b"\x80", b"a\x00\x00", b"\x00" * 1023, b"x" * 5000):
        for bucketed in (True, False):
            padded = pad_content(content, bucketed=bucketed)
            assert len(padded) == (bucket_size(len(content) + 1) if bucketed else len(content) + 1)
            assert unpad_content(padded) == content


def _ciphertext_len(m: Mission, eks: dict[str, EncryptionKey], narrative: str, pad: bool) -> int:
    return len(seal_report(m.draft(narrative=narrative), [eks["un"]], pad=pad).ciphertext)


def test_padding_hides_the_exact_size_within_a_bucket() -> None:
    m, keys, eks = _setup()
    short, longer, long = "x", "x" * 400, "x" * 3000
    assert (
        _ciphertext_len(m, eks, short, True) == _ciphertext_len(m, eks, longer, True) == 1024 + 16
    )
    assert _ciphertext_len(m, eks, long, True) == 4096 + 16
    assert _ciphertext_len(m, eks, short, False) < _ciphertext_len(m, eks, longer, False)
    for pad in (True, False):
        sealed = seal_report(m.draft(narrative=longer), [eks["un"]], pad=pad)
        v = _view(m, _resign(m, sealed), keys["un"])
        assert v.readability is Readability.READABLE
        assert v.report is not None and v.report.narrative == longer


# name -> padded plaintext from the encoded report
BAD_PADDING: dict[str, Callable[[bytes], bytes]] = {
    "no marker": lambda r: r + bytes(1024 - len(r)),
    "a non-zero byte after the marker": lambda r: r + b"\x80\x01" + bytes(1022 - len(r)),
    "zeros short of the bucket": lambda r: r + b"\x80" + bytes(700 - len(r) - 1),
    "zeros beyond the bucket": lambda r: r + b"\x80" + bytes(2048 - len(r) - 1),
    "nothing at all": lambda _r: b"",
}


@pytest.mark.parametrize("name", list(BAD_PADDING))
def test_bad_padding_is_refused(name: str) -> None:
    m, keys, eks = _setup()
    d = m.draft()
    inner = encode(d)
    assert len(inner) < 700 and inner[-1] not in (0, 0x80)
    sealed = seal_report(d, [eks["un"]], content_key=K1, nonce=NONCE)
    context = content_aad(d.report_id, d.observer_id, d.org, d.seq)
    ct = AESGCM(content_aead_key(K1, context)).encrypt(NONCE, BAD_PADDING[name](inner), context)
    v = _view(m, _resign(m, dataclasses.replace(sealed, ciphertext=ct)), keys["un"])
    assert (v.readability, v.reason, v.report) == (
        Readability.INCONSISTENT,
        Reason.PADDING_INVALID,
        None,
    )


# -- the round trip ------------------------------------------------------------------------------


def _all_keys(m: Mission) -> dict[str, DecryptionKey]:
    return {
        o.org: DecryptionKey(o.org, demo_key(f"x25519:{o.org}").seed)
        for o in m.scenario.mandate.organizations
    }


@pytest.mark.parametrize("count", ["one", "two", "all"])
def test_round_trip_for_one_two_and_all_recipients(count: str) -> None:
    m = make_mission()
    keys = _all_keys(m)
    eks = _publish_keys(m, keys)
    orgs = {"one": ["osce"], "two": ["un", "osce"], "all": list(keys)}[count]
    assert len(keys) >= 4
    raw = m.signer().sign_sealed(m.draft(), [eks[o] for o in orgs])
    payload = Envelope.decode(raw)
    assert payload.payload_type == "application/vnd.obus.sealed-report.v2+protobuf"
    assert len(SealedReport.decode(payload.payload).ciphertext) == 1024 + 16
    contents, digests = set(), set()
    for org, key in [*keys.items(), ("auditor", None)]:
        v = _view(m, raw, key)
        digests.add(v.envelope_digest)
        if org in orgs:
            assert v.readability is Readability.READABLE, (org, v.detail)
            assert v.report is not None and Report.decode(v.content) == v.report
            contents.add(v.content)
        else:
            assert v.readability is Readability.NOT_RECIPIENT
    assert len(contents) == len(digests) == 1
