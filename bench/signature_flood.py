"""CPU cost of reading one hostile trust or statement record: a signature flood.

    .venv/bin/python -m bench.signature_flood [--signatures 10000] [--rounds 3]

Each case builds one record and reads it the way a node does (``Envelope.decode`` and
:meth:`bus.lifecycle.TrustTimeline.offer_mandate` for the mandate topic,
:meth:`bus.lifecycle.TrustTimeline.apply_registry` for the registry topic,
:meth:`bus.statement.StatementBook.apply` for the statements topic). The garbage signatures
name root key ids of the mandate's organizations, so the reader cannot skip them as unknown:

* ``mandate, genuine + flood``: version 2 signed by 4 of 6 organizations behind 10,000 garbage
  signatures (about 1 MiB, the broker's default record limit);
* ``mandate, flood only``: the same without the genuine signatures;
* ``mandate, flood under the size limit``: as many garbage signatures as fit in the mandate
  record limit (or 600 where the code has none);
* ``accreditation + flood``, ``statement + flood``: a genuine record with 10,000 garbage
  signatures by its signer's key id;
* where :func:`bus.trust.decode_mandate_record` exists, the first record again through it (its
  size checked before it is decoded).

It prints, per case, the CPU time of one read (``time.process_time``, median of ``--rounds``),
how many Ed25519 verifications it ran, and the outcome. It uses only names that exist before
and after the bounds, so the same script measures both. Figures only; nothing asserts on them.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import bus.crypto
import bus.trust
from bus.errors import VerificationError
from bus.lifecycle import TrustTimeline
from bus.model import Envelope, Signature
from bus.sign import sign_mandate
from bus.statement import JointStatement, StatementBook, sign_statement
from bus.trust import KeyRing
from nodes.demo.scenario import build_scenario

NOW_MS = 1_793_491_200_000
STATEMENT_ID = "0190a5c0-0000-7000-8000-000000000001"


def _garbage(key_ids: list[bytes], count: int) -> tuple[Signature, ...]:
    return tuple(
        Signature(key_ids[i % len(key_ids)], bytes([i % 251 + 1]) * 64) for i in range(count)
    )


def _count_verifies() -> list[int]:
    calls = [0]
    real = bus.crypto.verify

    def counting(public_key: bytes, message: bytes, signature: bytes) -> None:
        calls[0] += 1
        real(public_key, message, signature)

    bus.crypto.verify = counting  # verify_pae calls the module global
    return calls


def _measure(read: Callable[[], str], rounds: int, calls: list[int]) -> tuple[float, int, str]:
    times: list[float] = []
    outcome = ""
    verifies = 0
    for _ in range(rounds):
        calls[0] = 0
        start = time.process_time()
        outcome = read()
        times.append(time.process_time() - start)
        verifies = calls[0]
    return statistics.median(times), verifies, outcome


def _outcome(fn: Callable[[], object]) -> str:
    try:
        fn()
    except VerificationError as exc:
        return f"refused: {exc.reason.value}"
    return "accepted"


def main() -> None:
    """Print the CPU time of reading each hostile record once."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--signatures", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.signatures
    sc = build_scenario(NOW_MS, observers_per_org=1)
    v1 = sc.mandate
    roots = list(sc.org_roots.values())
    root_ids = [k.key_id for k in roots]
    v2 = dataclasses.replace(v1, version=2)
    genuine_v2 = sign_mandate(v2, roots[:4])
    limit = getattr(bus.trust, "MAX_MANDATE_RECORD_BYTES", None)
    flood_cap = 600 if limit is None else (int(limit) - len(genuine_v2.encode())) // 102
    records: dict[str, bytes] = {
        "mandate, genuine + flood": dataclasses.replace(
            genuine_v2, signatures=(*_garbage(root_ids, n), *genuine_v2.signatures)
        ).encode(),
        "mandate, flood only": dataclasses.replace(
            genuine_v2, signatures=_garbage(root_ids, n)
        ).encode(),
        f"mandate, flood under the size limit ({flood_cap})": dataclasses.replace(
            genuine_v2, signatures=_garbage(root_ids, flood_cap)
        ).encode(),
    }
    acc = Envelope.decode(sc.accreditations[0])
    records["accreditation + flood"] = dataclasses.replace(
        acc, signatures=(*_garbage([acc.signatures[0].key_id], n), *acc.signatures)
    ).encode()
    statement = JointStatement(
        STATEMENT_ID, v1.mandate_id, "un", "Title", "Text", (), NOW_MS - 1000
    )
    st = Envelope.decode(sign_statement(statement, sc.org_roots["un"]))
    records["statement + flood"] = dataclasses.replace(
        st, signatures=(*_garbage([st.signatures[0].key_id], n), *st.signatures)
    ).encode()

    calls = _count_verifies()

    def mandate(raw: bytes) -> Callable[[], str]:
        return lambda: _outcome(
            lambda: TrustTimeline(v1).offer_mandate(Envelope.decode(raw), now_ms=NOW_MS)
        )

    def registry(raw: bytes) -> Callable[[], str]:
        return lambda: _outcome(lambda: TrustTimeline(v1).apply_registry(Envelope.decode(raw)))

    def statement_board(raw: bytes) -> Callable[[], str]:
        return lambda: _outcome(lambda: StatementBook(KeyRing(v1)).apply(raw))

    readers: dict[str, Callable[[bytes], Callable[[], str]]] = {
        "accreditation + flood": registry,
        "statement + flood": statement_board,
    }
    decode_first = getattr(bus.trust, "decode_mandate_record", None)
    if decode_first is not None:  # the size checked before decoding

        def mandate_bytes(raw: bytes) -> Callable[[], str]:
            return lambda: _outcome(
                lambda: TrustTimeline(v1).offer_mandate(decode_first(raw), now_ms=NOW_MS)
            )

        name = "mandate, genuine + flood, decode_mandate_record"
        records[name] = records["mandate, genuine + flood"]
        readers[name] = mandate_bytes
    print(f"{'record':<52} {'bytes':>9} {'CPU s':>8} {'verifies':>9}  outcome")
    for name, raw in records.items():
        reader = readers.get(name, mandate)
        cpu, verifies, outcome = _measure(reader(raw), args.rounds, calls)
        print(f"{name:<52} {len(raw):>9,} {cpu:>8.3f} {verifies:>9,}  {outcome}")


if __name__ == "__main__":
    main()
