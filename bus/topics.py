"""Topic names, patterns and topic-level configs of the bus: pure, so an offline audit
of an export never imports the Kafka client.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from bus.attachment import TOPIC_MAX_MESSAGE_BYTES

CLOUDEVENTS_SPEC: Final = "1.0"

_ORG_RE: Final = re.compile(r"[a-z0-9_-]+")


REPORT_EVENT_TYPE: Final = "org.obus.report.v1"


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names under a configurable prefix (default ``obus.``)."""

    prefix: str = "obus."

    def reports(self, org: str) -> str:
        """Topic carrying one organization's observers' reports."""
        return f"{self.prefix}reports.{org}"

    def decisions(self, org: str) -> str:
        """Topic carrying one organization's published decisions."""
        return f"{self.prefix}decisions.{org}"

    @property
    def registry(self) -> str:
        """Accreditations, revocations and encryption keys (one partition: one order; never
        compacted: every record is kept and judged in the sealed order)."""
        return f"{self.prefix}registry"

    @property
    def mandate(self) -> str:
        """Mandate versions (one partition: one order; never compacted: every version is kept
        and judged in the sealed order)."""
        return f"{self.prefix}mandate"

    @property
    def checkpoints(self) -> str:
        """The per-partition checkpoints topic of older releases, which seals replaced: only its
        name, to recognise its records in old export files. No topic of the bus any more:
        not created (:func:`standard_topics`), nobody may write it (:mod:`bus.acl`), no node
        or auditor reads it from a broker, and one an older deployment created is left alone."""
        return f"{self.prefix}checkpoints"

    @property
    def seals(self) -> str:
        """Seals of the whole bus, proposals and cosignatures (one partition: one order;
        :mod:`bus.seal`)."""
        return f"{self.prefix}seals"

    def is_sealed(self, topic: str) -> bool:
        """Whether seals cover ``topic``: every topic of the bus that carries records a verdict
        is made on (reports, decisions, attachments of every organization; registry, mandate,
        statements). Not the seals topic itself, nor the checkpoints topic of older releases."""
        if topic in (self.registry, self.mandate, self.statements):
            return True
        for head in ("reports.", "decisions.", "attachments."):
            lead = self.prefix + head
            if topic.startswith(lead) and _ORG_RE.fullmatch(topic[len(lead) :]):
                return True
        return False

    @property
    def statements(self) -> str:
        """Joint statements: drafts and co-signatures (one partition: one order)."""
        return f"{self.prefix}statements"

    @property
    def decisions_pattern(self) -> str:
        """Regex matching every organization's decisions topic."""
        return "^" + re.escape(f"{self.prefix}decisions.") + r"[a-z0-9_-]+$"

    def org_of_decision_topic(self, topic: str) -> str | None:
        """Organization id of a decisions topic, or None for any other topic."""
        head = f"{self.prefix}decisions."
        return topic[len(head) :] if topic.startswith(head) else None

    @property
    def reports_pattern(self) -> str:
        """Regex matching every organization's report topic."""
        return "^" + re.escape(f"{self.prefix}reports.") + r"[a-z0-9_-]+$"

    def org_of_report_topic(self, topic: str) -> str | None:
        """Organization id of a report topic, or None for any other topic."""
        head = f"{self.prefix}reports."
        return topic[len(head) :] if topic.startswith(head) else None

    def attachments(self, org: str) -> str:
        """Topic carrying the attachment chunks of one organization's observers."""
        return f"{self.prefix}attachments.{org}"

    @property
    def attachments_pattern(self) -> str:
        """Regex matching every organization's attachments topic."""
        return "^" + re.escape(f"{self.prefix}attachments.") + r"[a-z0-9_-]+$"


def report_headers(report_id: str, org: str, observer_id: str) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers for generic tooling. Readers never trust headers."""
    return [
        ("ce_specversion", CLOUDEVENTS_SPEC.encode()),
        ("ce_id", report_id.encode()),
        ("ce_type", REPORT_EVENT_TYPE.encode()),
        ("ce_source", f"/obus/{org}/{observer_id}".encode()),
        ("content-type", b"application/protobuf"),
    ]


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partitions and topic-level configs."""

    name: str
    partitions: int
    configs: tuple[tuple[str, str], ...] = ()


# An operator default: the broker stamps every record with its own append time, which the
# node stores as information (when the broker says it appended the record). It is no clock
# readers rely on: the operator can switch a topic to CreateTime or set the broker's clock, so
# final verdicts are judged at the sealed epoch's time t_e (bus.judge) and a node's provisional
# ones at its own clock (bus.ingest).
LOG_APPEND_TIME: Final = ("message.timestamp.type", "LogAppendTime")


# Every topic keeps every record, whatever the broker defaults (log.retention.hours=168, i.e.
# 7 days, on a stock broker): auditors replay each log from offset 0 and verify the hash chains
# from seq 1, sealers hash every record into the partitions' Merkle trees, and a node that joins
# late must read everything.
KEEP_FOREVER: Final = (("retention.ms", "-1"), ("retention.bytes", "-1"))


# No topic of the bus is compacted, and each says so itself rather than trusting the broker's
# default (log.cleanup.policy): compaction keeps only the last record per key, so whoever may
# write a topic (any organization on the shared ones, or the operator) could erase a revocation,
# an accreditation or a mandate version by writing another record, or a null one, under its key.
DELETE_POLICY: Final = ("cleanup.policy", "delete")


# Attachment chunks (bus/attachment.py): every record up to 1 MiB, whatever the broker default.
ATTACHMENT_TOPIC_CONFIGS: Final = (
    DELETE_POLICY,
    LOG_APPEND_TIME,
    ("max.message.bytes", str(TOPIC_MAX_MESSAGE_BYTES)),
    *KEEP_FOREVER,
)


def standard_topics(topics: Topics, orgs: Iterable[str], partitions: int = 3) -> list[TopicSpec]:
    """Every topic of the bus for the given organizations.

    Every one is created with ``cleanup.policy=delete`` (:data:`DELETE_POLICY`: none is
    compacted, the trust topics neither) and ``retention.ms=-1``, ``retention.bytes=-1``
    (:data:`KEEP_FOREVER`): the broker never deletes a record of them. The registry, mandate,
    statements and seals topics have one partition each (one order).
    """
    plain = (DELETE_POLICY, LOG_APPEND_TIME, *KEEP_FOREVER)
    specs: list[TopicSpec] = []
    for org in orgs:
        specs.append(TopicSpec(topics.reports(org), partitions, plain))
        specs.append(TopicSpec(topics.decisions(org), 1, plain))
        specs.append(TopicSpec(topics.attachments(org), partitions, ATTACHMENT_TOPIC_CONFIGS))
    specs.append(TopicSpec(topics.registry, 1, plain))
    specs.append(TopicSpec(topics.mandate, 1, plain))
    specs.append(TopicSpec(topics.statements, 1, plain))
    specs.append(TopicSpec(topics.seals, 1, plain))
    return specs
