"""Who may do what on the brokers: the per-organization Kafka ACL model.

The one source of truth for broker authorization. The local secure cluster
(``deploy/local/cluster.sh --secure`` + ``obus acls apply``), the compose file and the Strimzi
``KafkaUser`` resources (``python -m nodes.demo.manifests``) are all derived from
:func:`acl_model`, and tests compare each of them, and the brokers' actual answers, with it.

The model, for every organization ``org`` of the mandate (principal ``User:<org>``):

* WRITE its own ``<prefix>reports.<org>``, ``<prefix>decisions.<org>`` and
  ``<prefix>attachments.<org>`` (its gateway's attachment chunks), and the shared
  topics (``registry``, ``mandate``, ``statements``, ``seals``): writing is what an
  organization's node and gateway do; nobody may write another organization's topics.
* READ every topic under the prefix: every organization verifies everything itself.
* READ its own consumer groups: its node's group and any group under ``<prefix><org>.``; never
  another organization's group (joining it would steal that organization's partitions).

A ``<prefix>checkpoints`` topic left by an older release (seals replaced its per-partition
checkpoints) is no topic of the model: nobody may write it, and nothing reads it.

Nothing else: no CREATE (an operator, the super user, creates topics), no ALTER, no DENY rules
(Kafka denies whatever no rule allows). Signatures, not ACLs, are what readers rely on; ACLs are
defense in depth against a compromised organization flooding or squatting others' topics.

Pure: no Kafka client import. :func:`allows` evaluates rules the way Kafka's StandardAuthorizer
does for this subset (ALLOW rules only; LITERAL and PREFIXED patterns; READ and WRITE imply
DESCRIBE), so a test can derive the expected answer of every request from the model itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from bus.errors import ConfigError
from bus.model import check_id

ADMIN: Final = "admin"  # the super user (super.users=User:admin): creates topics and ACLs


class TopicNames(Protocol):
    """The topic names the model needs (:class:`bus.topics.Topics` provides them)."""

    @property
    def prefix(self) -> str: ...

    def reports(self, org: str) -> str: ...

    def decisions(self, org: str) -> str: ...

    def attachments(self, org: str) -> str: ...

    @property
    def registry(self) -> str: ...

    @property
    def mandate(self) -> str: ...

    @property
    def statements(self) -> str: ...

    @property
    def seals(self) -> str: ...


class Resource(enum.StrEnum):
    """Kafka resource types (the names Kafka's tools and Strimzi use, lower-cased)."""

    TOPIC = "topic"
    GROUP = "group"


class Pattern(enum.StrEnum):
    """How a rule's name matches resources."""

    LITERAL = "literal"  # exactly this name
    PREFIXED = "prefixed"  # every name starting with it


class Operation(enum.StrEnum):
    """Operations the model grants (Kafka's names)."""

    READ = "Read"
    WRITE = "Write"
    DESCRIBE = "Describe"


# Kafka: READ, WRITE, DELETE and ALTER on a resource imply DESCRIBE on it.
_IMPLIES: Final = {Operation.READ: {Operation.DESCRIBE}, Operation.WRITE: {Operation.DESCRIBE}}


@dataclass(frozen=True, slots=True, order=True)
class AclRule:
    """One ALLOW rule: ``principal`` may ``operation`` on resources matching the pattern."""

    principal: str  # "User:<name>"
    resource: Resource
    pattern: Pattern
    name: str
    operation: Operation

    @property
    def user(self) -> str:
        return self.principal.removeprefix("User:")


def principal(user: str) -> str:
    """Kafka principal of a SASL user name."""
    return f"User:{user}"


def shared_topics(topics: TopicNames) -> tuple[str, ...]:
    """Topics every organization may write."""
    return (
        topics.registry,
        topics.mandate,
        topics.statements,
        topics.seals,
    )


def own_topics(topics: TopicNames, org: str) -> tuple[str, ...]:
    """Topics only this organization may write."""
    return (topics.reports(org), topics.decisions(org), topics.attachments(org))


def consumer_groups(topics: TopicNames, org: str) -> tuple[tuple[Pattern, str], ...]:
    """Consumer groups of this organization: its node's and its own namespace.

    The literal name is the group id nodes/org_node/ingest.py uses (its ``ingest_only``
    workers share it); the attachment reassembler's is under the organization's namespace,
    and the sealer and the follow-up use none.
    """
    return (
        (Pattern.LITERAL, f"{topics.prefix}node.{org}"),
        (Pattern.PREFIXED, f"{topics.prefix}{org}."),
    )


def org_rules(topics: TopicNames, org: str) -> tuple[AclRule, ...]:
    """Every ALLOW rule of one organization (see the module docstring)."""
    check_id("org", org)
    who = principal(org)
    rules = [
        AclRule(who, Resource.TOPIC, Pattern.LITERAL, name, Operation.WRITE)
        for name in (*own_topics(topics, org), *shared_topics(topics))
    ]
    rules.append(AclRule(who, Resource.TOPIC, Pattern.PREFIXED, topics.prefix, Operation.READ))
    rules += [
        AclRule(who, Resource.GROUP, pattern, name, Operation.READ)
        for pattern, name in consumer_groups(topics, org)
    ]
    return tuple(sorted(rules))


def acl_model(topics: TopicNames, orgs: Sequence[str]) -> tuple[AclRule, ...]:
    """The rules of every organization, sorted.

    Raises:
        ConfigError: no organization, a repeated one, or one named like the super user.
    """
    if not orgs:
        raise ConfigError("orgs", "no organization given", "list the mandate's organizations")
    if len(set(orgs)) != len(orgs):
        raise ConfigError("orgs", f"repeated organization in {list(orgs)}", "list each once")
    if ADMIN in orgs:
        raise ConfigError("orgs", f"{ADMIN!r} is the super user", "rename the organization")
    return tuple(sorted(r for org in orgs for r in org_rules(topics, org)))


def _matches(rule: AclRule, resource: Resource, name: str) -> bool:
    if rule.resource is not resource:
        return False
    if rule.pattern is Pattern.LITERAL:
        return rule.name in (name, "*")
    return name.startswith(rule.name)


def allows(
    rules: Iterable[AclRule], user: str, operation: Operation, resource: Resource, name: str
) -> bool:
    """Would Kafka allow ``user`` to ``operation`` the named resource under these rules?"""
    who = principal(user)
    return any(
        rule.principal == who
        and (rule.operation is operation or operation in _IMPLIES.get(rule.operation, ()))
        and _matches(rule, resource, name)
        for rule in rules
    )
