"""Kafka adapter for broker ACLs: create the rules of :mod:`bus.acl` and read back what exists.

aiokafka 0.14 has no ACL admin API, but it ships the wire structs (CreateAcls and DescribeAcls
v1, which Kafka 4.x still serves); this module sends them with its plain client. Only the
super user may call these (``super.users=User:admin``). Creating an ACL that exists is a
no-op in Kafka, so :func:`apply_acls` is idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Final

import structlog
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import for_code
from aiokafka.protocol.admin import CreateAclsRequest_v1, DescribeAclsRequest_v1
from aiokafka.protocol.api import Request

from bus.acl import AclRule, Operation, Pattern, Resource
from bus.errors import TransportError
from bus.kafka.client import KafkaSecurity, client_options, retrying

log = structlog.get_logger(__name__)

# Numeric codes of Kafka's ResourceType, PatternType, AclOperation and AclPermissionType
# (clients/src/main/java/org/apache/kafka/common/{resource,acl}/*.java).
_RESOURCE: Final = {Resource.TOPIC: 2, Resource.GROUP: 3}
_PATTERN: Final = {Pattern.LITERAL: 3, Pattern.PREFIXED: 4}
_OPERATION: Final = {Operation.READ: 3, Operation.WRITE: 4, Operation.DESCRIBE: 8}
_ANY: Final = 1
_ALLOW: Final = 3
_ANY_HOST: Final = "*"


class _CreateAcls(Request[CreateAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 30

    def __init__(self, creations: list[tuple[int, str, int, str, str, int, int]]) -> None:
        self._creations = creations

    def build(self, request_struct_class: type[CreateAclsRequest_v1]) -> CreateAclsRequest_v1:
        return request_struct_class(self._creations)


class _DescribeAllAcls(Request[DescribeAclsRequest_v1]):  # type: ignore[misc]
    API_KEY = 29

    def build(self, request_struct_class: type[DescribeAclsRequest_v1]) -> DescribeAclsRequest_v1:
        # resource type ANY, any name, pattern ANY, any principal and host, ANY op, ANY perm
        return request_struct_class(_ANY, None, _ANY, None, None, _ANY, _ANY)


async def _call(bootstrap: str, security: KafkaSecurity | None, request: Any, what: str) -> Any:
    async def once() -> Any:
        client = AIOKafkaClient(**client_options(bootstrap, security))
        try:
            await client.bootstrap()
            return await client.send(client.get_random_node(), request)
        finally:
            await client.close()

    return await retrying(what, once)


async def apply_acls(
    bootstrap: str, rules: Iterable[AclRule], *, security: KafkaSecurity | None = None
) -> int:
    """Create every rule (ALLOW, any host); returns how many were sent.

    Raises:
        TransportError: the brokers refused a rule (e.g. the caller is not a super user) or
            did not answer.
    """
    rules = sorted(set(rules))
    creations = [
        (_RESOURCE[r.resource], r.name, _PATTERN[r.pattern], r.principal, _ANY_HOST,
         _OPERATION[r.operation], _ALLOW)
        for r in rules
    ]  # fmt: skip
    response = await _call(bootstrap, security, _CreateAcls(creations), "creating ACLs")
    for rule, (code, message) in zip(rules, response.creation_responses, strict=True):
        if code != 0:
            exc = for_code(code)(message)
            raise TransportError(
                f"creating ACL {rule}: {exc!r}", retriable=bool(getattr(exc, "retriable", False))
            )
    await _wait_visible(bootstrap, security, set(rules))
    log.info("acls_applied", rules=len(rules))
    return len(rules)


async def _wait_visible(
    bootstrap: str, security: KafkaSecurity | None, rules: set[AclRule], within_s: float = 60
) -> None:
    """Wait until every broker serves the rules: the controller commits an ACL before each
    broker's metadata cache (which its authorizer reads) has caught up."""

    async def check() -> None:
        client = AIOKafkaClient(**client_options(bootstrap, security))
        try:
            await client.bootstrap()
            for broker in client.cluster.brokers():
                while True:
                    response = await client.send(broker.nodeId, _DescribeAllAcls())
                    if rules <= _parse(response)[0]:
                        break
                    await asyncio.sleep(0.2)
        finally:
            await client.close()

    try:
        async with asyncio.timeout(within_s):
            await retrying("waiting for ACLs", check, within_s=within_s)
    except TimeoutError as exc:
        raise TransportError(
            f"ACLs not served by every broker within {within_s}s", retriable=True
        ) from exc


async def describe_acls(
    bootstrap: str, *, security: KafkaSecurity | None = None
) -> tuple[set[AclRule], list[tuple[Any, ...]]]:
    """Every ACL on the cluster: the ones the model can express, and the raw rest.

    Returns:
        (rules, others): ALLOW rules for any host on topics and groups with the model's
        operations, and every other ACL as raw (type, name, pattern, principal, host,
        operation, permission) tuples, so a caller can insist there are none.

    Raises:
        TransportError: see :func:`apply_acls`.
    """
    response = await _call(bootstrap, security, _DescribeAllAcls(), "describing ACLs")
    return _parse(response)


def _parse(response: Any) -> tuple[set[AclRule], list[tuple[Any, ...]]]:
    if response.error_code != 0:
        exc = for_code(response.error_code)(response.error_message)
        raise TransportError(f"describing ACLs: {exc!r}", retriable=False)
    resource = {v: k for k, v in _RESOURCE.items()}
    pattern = {v: k for k, v in _PATTERN.items()}
    operation = {v: k for k, v in _OPERATION.items()}
    rules: set[AclRule] = set()
    others: list[tuple[Any, ...]] = []
    for rtype, name, ptype, acls in response.resources:
        for who, host, op, perm in acls:
            if (
                rtype in resource
                and ptype in pattern
                and op in operation
                and perm == _ALLOW
                and host == _ANY_HOST
            ):
                rules.add(AclRule(who, resource[rtype], pattern[ptype], name, operation[op]))
            else:
                others.append((rtype, name, ptype, who, host, op, perm))
    return rules, others
