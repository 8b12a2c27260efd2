"""Publishing attachment chunks (the gateway) and reading a topic's message limit.

The chunks are cut by :func:`bus.attachment.split`; readers never trust the CloudEvents headers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError

from bus.attachment import (
    CHUNK_CONTENT_TYPE,
    Chunk,
    split,
)
from bus.kafka.client import KafkaSecurity, client_options, wrap
from bus.topics import CLOUDEVENTS_SPEC

CHUNK_EVENT_TYPE: Final = "org.obus.attachment-chunk.v1"
_UNKNOWN_TOPIC_OR_PARTITION: Final = 3  # Kafka protocol error code


def chunk_headers(chunk: Chunk, org: str) -> list[tuple[str, bytes]]:
    """CloudEvents binary-mode headers of a chunk record. Readers never trust headers."""
    lay = chunk.layout
    return [
        ("ce_specversion", CLOUDEVENTS_SPEC.encode()),
        ("ce_id", f"{lay.hex}/{lay.chunk_size}/{chunk.index}".encode()),
        ("ce_type", CHUNK_EVENT_TYPE.encode()),
        ("ce_source", f"/obus/{org}/attachments".encode()),
        ("content-type", CHUNK_CONTENT_TYPE.encode()),
    ]


@dataclass(frozen=True, slots=True)
class Published:
    """Where an attachment's chunks went."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    chunks: int


async def publish_attachment(
    producer: AIOKafkaProducer, topic: str, data: bytes, *, chunk_size: int, org: str
) -> Published:
    """Produce every chunk of ``data`` (all sent, then all awaited: the producer pipelines them).

    Raises:
        KafkaError: a chunk was not confirmed (some may be on the topic: publishing again is
            safe, nodes drop identical chunks).
    """
    futures = [
        await producer.send(topic, chunk.encode(), key=chunk.key, headers=chunk_headers(chunk, org))
        for chunk in split(data, chunk_size=chunk_size)
    ]
    metadata = [await f for f in futures]
    return Published(
        topic, metadata[0].partition, metadata[0].offset, metadata[-1].offset, len(metadata)
    )


async def topic_message_limit(
    bootstrap: str, topic: str, *, security: KafkaSecurity | None = None
) -> int | None:
    """The topic's ``max.message.bytes``, or None when the topic does not exist.

    Raises:
        TransportError: the broker cannot be asked.
    """
    admin = AIOKafkaAdminClient(**client_options(bootstrap, security))
    try:
        await admin.start()
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {"max.message.bytes": None})
        responses = await admin.describe_configs([resource])
    except KafkaError as exc:
        raise wrap(exc, "describing topic configs") from exc
    finally:
        await admin.close()
    for response in responses:
        for error_code, _msg, _type, name, entries in response.resources:
            if name != topic:
                continue
            if error_code == _UNKNOWN_TOPIC_OR_PARTITION:
                return None
            for entry in entries:
                if entry[0] == "max.message.bytes":
                    return int(entry[1])
    return None
