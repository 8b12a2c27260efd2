"""One exception tree for observer-bus.

Every error the library raises is a :class:`BusError`. Verification failures carry a stable,
machine-readable :class:`Reason` code: the code is what nodes store in quarantine, what the auditor
reports and what the gateway answers, so codes are never renamed, only added. Transport errors
carry ``retriable`` so adapters retry exactly the failures that can heal by themselves.

Foreign exceptions are wrapped at the edge (``raise TransportError(...) from exc``); code outside
``bus`` should never need to catch anything but :class:`BusError`.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any


class Reason(enum.StrEnum):
    """Stable reason codes for rejected input. Values are part of the wire contract."""

    # Envelope / encoding
    MALFORMED = "malformed"  # bytes do not parse as the expected protobuf message
    OVERSIZED = "oversized"  # record larger than the configured limit
    WRONG_PAYLOAD_TYPE = "wrong_payload_type"  # payload_type not what this topic carries
    INVALID_FIELD = "invalid_field"  # a field parsed but breaks a documented invariant
    # Signatures and keys
    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    MALFORMED_KEY = "malformed_key"  # public key not 32 bytes or not a valid point
    UNKNOWN_KEY = "unknown_key"  # key id not accredited under the mandate
    KEY_REVOKED = "key_revoked"
    KEY_EXPIRED = "key_expired"  # outside the accreditation's validity window
    WRONG_ROLE = "wrong_role"  # key accredited, but not for this kind of message
    WRONG_ORG = "wrong_org"  # claimed organization differs from the accrediting one
    WRONG_TOPIC = "wrong_topic"  # report of organization A on organization B's topic
    SUBJECT_MISMATCH = "subject_mismatch"  # signer accredited as another subject than claimed
    # Bounded signature work (README "Trust records' limits"): refused before any signature of
    # the record is verified
    TOO_MANY_SIGNATURES = "too_many_signatures"  # above the bound, or two by one key id
    # Mandate
    THRESHOLD_NOT_MET = "threshold_not_met"
    MANDATE_EXPIRED = "mandate_expired"
    MANDATE_ROLLBACK = "mandate_rollback"
    WRONG_MANDATE = "wrong_mandate"  # report names another mandate id
    OUTSIDE_ZONE = "outside_zone"
    OUTSIDE_WINDOW = "outside_window"  # observed/signed time outside the mandate window
    CLOCK_SKEW = "clock_skew"  # claimed time too far in the future
    # Per-observer hash chain
    CHAIN_GAP = "chain_gap"
    CHAIN_FORK = "chain_fork"
    DUPLICATE_CONFLICT = "duplicate_conflict"  # same report id, other bytes
    REPLAYED = "replayed"  # the same envelope again at a later log position
    # Restricted reports (bus.sealed): the key commitment, the recipients' registered keys and
    # the padding of the content. A recipient's own findings never change a verdict (README).
    KEY_COMMITMENT_MISSING = "key_commitment_missing"  # sealed report v1: nothing commits a key
    KEY_COMMITMENT_MISMATCH = "key_commitment_mismatch"  # unwrapped key is not the committed one
    RECIPIENT_KEY_NOT_CURRENT = "recipient_key_not_current"  # not the org's current enc. key
    PADDING_INVALID = "padding_invalid"  # content not followed by 0x80, zeros, to an allowed size
    # A verifier bug met this input. The record is kept like any other rejected one and the
    # node goes on; the log event carries the traceback so the bug can be fixed.
    INTERNAL_ERROR = "internal_error"
    # Delivery (observer gateway and receipts)
    RATE_LIMITED = "rate_limited"  # too many submissions by one observer; retry after a while
    RECEIPT_MISMATCH = "receipt_mismatch"  # receipt does not name the envelope it answers
    # Sealed log (Merkle proofs, signed notes, exported logs)
    INCLUSION_PROOF_INVALID = "inclusion_proof_invalid"  # audit path does not reach the root
    CONSISTENCY_PROOF_INVALID = "consistency_proof_invalid"  # new tree does not extend old
    RECORD_MISSING = "record_missing"  # an offset of a partition is absent from the log
    RECORD_OUT_OF_ORDER = "record_out_of_order"  # an offset after a higher one, or twice
    EXPORT_CORRUPT = "export_corrupt"  # export file framing, order or digest is broken
    # Seals (bus.seal): one text per epoch stating every partition's size and root and a time,
    # final once k organizations signed it; and the witness's reasons not to cosign one
    SEAL_EPOCH_FINAL = "seal_epoch_final"  # a seal record for an epoch that is already final
    SEAL_EPOCH_AHEAD = "seal_epoch_ahead"  # a seal record for an epoch after the open one
    SEAL_ROUND_CLOSED = "seal_round_closed"  # a seal record for a dead round of the open epoch
    SEAL_ROUND_AHEAD = "seal_round_ahead"  # a seal record for a round after the open one
    SEAL_WRONG_PREV = "seal_wrong_prev"  # prev is not the digest of the epoch before's final seal
    SEAL_TIME_NOT_INCREASING = "seal_time_not_increasing"  # t_e not after the epoch before's
    SEAL_SIZE_SHRINKS = "seal_size_shrinks"  # a partition smaller than, or absent since, before
    SEAL_EQUIVOCATION = "seal_equivocation"  # one organization signed two texts in one round
    SEAL_ALREADY_COSIGNED = "seal_already_cosigned"  # this witness signed another text for it
    SEAL_TIME_OUT_OF_TOLERANCE = "seal_time_out_of_tolerance"  # t_e too far from the clock
    SEAL_UNKNOWN_PARTITION = "seal_unknown_partition"  # seals a topic that is not a bus topic
    SEAL_BEYOND_LOG = "seal_beyond_log"  # seals more records than the partition holds
    SEAL_ROOT_MISMATCH = "seal_root_mismatch"  # own root at the sealed size is another one
    SEAL_FINAL_MISMATCH = "seal_final_mismatch"  # own log differs from what a final seal sealed
    SEAL_NOT_ELECTABLE = "seal_not_electable"  # its trust state accredits node keys of < k orgs
    SEAL_WITHDRAW_NO_VOTE = "seal_withdraw_no_vote"  # a withdrawal by an org with no vote there
    SEAL_CARRIED_TRUST_MISMATCH = "seal_carried_trust_mismatch"  # seal 1 carries other NODE accs
    SEAL_FORK = "seal_fork"  # k organizations signed a text of an epoch outside this history
    SEAL_NOT_FINAL = "seal_not_final"  # a proof names a seal that is not its epoch's final one
    SEAL_QUORUM_NOT_MET = "seal_quorum_not_met"  # cosignatures of fewer than k organizations count
    RECORD_NOT_SEALED = "record_not_sealed"  # no final seal covers the record (yet)
    # Attachments (README "Attachments"): chunks on <prefix>attachments.<org>, reassembled by
    # every node and checked against the accepted report that references them
    ATTACHMENT_HASH_MISMATCH = "attachment_hash_mismatch"  # bytes do not hash to the SHA-256
    ATTACHMENT_SIZE_MISMATCH = "attachment_size_mismatch"  # size differs from the report's
    ATTACHMENT_UNREFERENCED = "attachment_unreferenced"  # no accepted report references it
    ATTACHMENT_INCOMPLETE = "attachment_incomplete"  # chunks still missing after the wait
    # The final judge over sealed epochs (bus.judge, bus.sealed_reader): verdicts on the one
    # order and the one clock (t_e, the time a quorum cosigned in the epoch's final seal)
    DELIVERY_LAG = "delivery_lag"  # signed_at earlier than t_e minus the maximum delivery lag
    SEALED_ROOT_MISMATCH = "sealed_root_mismatch"  # records hash to another root than sealed
    # Schema versions (bus.model): the mandate in force names the versions reports may state
    SCHEMA_NOT_ALLOWED = "schema_not_allowed"  # version outside the mandate's, or newer fields
    # Amendments (bus.verify.check_amendment): a correction (corrects) or retraction (retracts)
    # names a report of its own chain accepted before it in the canonical order
    AMEND_TARGET_MISSING = "amend_target_missing"  # no accepted report with that id before it
    AMEND_OTHER_OBSERVER = "amend_other_observer"  # the target is another observer's (same org)
    AMEND_OTHER_ORG = "amend_other_org"  # the target is an observer's of another organization
    AMEND_SUPERSEDED = "amend_superseded"  # the target has a later version: amend the latest
    AMEND_TARGET_RETRACTED = "amend_target_retracted"  # the target is retracted
    RETRACTION_OF_RETRACTION = "retraction_of_retraction"  # the target is itself a retraction
    CORRECTION_OF_RETRACTION = "correction_of_retraction"  # a retraction cannot be corrected


class BusError(Exception):
    """Root of every observer-bus error.

    Args:
        message: one sentence for humans.
        **context: structured fields (topic, offset, key id, ...) for logs and diagnostics.
    """

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: Mapping[str, Any] = dict(context)

    def diagnostics(self) -> str:
        """A multi-line explanation for humans: the message, then each context field."""
        lines = [self.message]
        lines.extend(f"  {k}: {v}" for k, v in sorted(self.context.items()))
        return "\n".join(lines)


class ConfigError(BusError):
    """A configuration value is missing or wrong. The message names the key and the fix."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(f"config {key}: {problem}; fix: {fix}", key=key, fix=fix)
        self.key = key
        self.fix = fix


class VerificationError(BusError):
    """Input was rejected. ``reason`` is the stable machine-readable code."""

    def __init__(self, reason: Reason, message: str, **context: Any) -> None:
        super().__init__(message, reason=reason.value, **context)
        self.reason = reason


class TransportError(BusError):
    """A broker, network or HTTP failure. ``retriable`` says whether trying again can help."""

    def __init__(self, message: str, *, retriable: bool, **context: Any) -> None:
        super().__init__(message, retriable=retriable, **context)
        self.retriable = retriable


class StoreError(BusError):
    """The local store failed (disk full, read-only, corrupt). Consumption must stop."""


class StoreConflictError(StoreError):
    """Another worker sharing the store committed first what a batch was judged against.

    Raised by :meth:`bus.store.node.NodeStore.commit_batch` when a partition's stored position, an
    observer's chain head or a report id changed since the batch read them; nothing of the
    batch was stored. Not a failure: the worker reloads the store's state, seeks back to its
    positions and judges the records again.
    """


class EpochInputError(BusError):
    """What was handed to the final judge does not fit the seals: records that are not exactly
    an epoch's (a partition's count differs from what its seal adds, an offset skipped or
    offered twice with other bytes), or a seal out of epoch order or not chained to the
    previous one. A caller's bug or a broken fetch, never a verdict: nothing was judged."""


class SealedRootMismatchError(VerificationError):
    """A partition's records hash to another RFC 6962 root than its final seal states: a
    sealed record was altered or deleted (by the operator, or on the way). Nothing of that
    epoch is judged; ``context`` names the topic, partition and sealed size."""

    def __init__(self, message: str, *, topic: str, partition: int, size: int) -> None:
        super().__init__(
            Reason.SEALED_ROOT_MISMATCH, message, topic=topic, partition=partition, size=size
        )
        self.topic = topic
        self.partition = partition
        self.size = size


class KeyStoreError(BusError):
    """A key file cannot be read, decrypted or written."""
