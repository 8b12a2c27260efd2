"""The observer's HTTP edge: the client of an organization's gateway.

:class:`GatewayClient` sends a report (``POST /v1/reports``), an attachment
(``PUT /v1/attachments/<sha256 hex>``) and asks for the gateway's node accreditation
(``GET /v1/node``), its clock, an observer's signed chain head, the recipients' keys and
inclusion proofs; every answer comes back as an :class:`Answer`, whatever its status, and a
gateway that cannot be reached (refused or reset connection, timeout) as :class:`Unreachable`.
An answer's body is read up to ``max_answer_bytes`` (default :data:`MAX_ANSWER_BYTES`) and no
further: a longer one is :class:`AnswerTooLarge`, so a hostile or broken gateway cannot make
the observer's device hold an unbounded answer (the inclusion check does not trust the
gateway). What the answers mean for delivery is :mod:`nodes.observer.delivery`'s business.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote

import aiohttp

from bus.errors import TransportError
from bus.seal_proof import MAX_VALUE_BYTES

# The largest answer is an inclusion proof: its value (at most MAX_VALUE_BYTES) in base64 (4/3
# of it), with a note and the cosigners' registry records far below the remaining third.
MAX_ANSWER_BYTES: Final = 2 * MAX_VALUE_BYTES
_READ_CHUNK: Final = 64 * 1024


@dataclass(frozen=True, slots=True)
class Answer:
    """The gateway's HTTP answer."""

    status: int
    body: bytes
    retry_after_s: float | None = None

    def error(self) -> tuple[str, str]:
        """(reason, detail) of a JSON error body, or ("http_<status>", text)."""
        try:
            doc = json.loads(self.body)
            return str(doc["reason"]), str(doc.get("detail", ""))
        except (ValueError, KeyError, TypeError):
            return f"http_{self.status}", self.body[:200].decode("utf-8", "replace")


class Unreachable(TransportError):  # noqa: N818 - a state, not a failure of ours
    """The gateway could not be reached (connection refused, reset, timeout): trying again later
    can help, so it is a retriable :class:`~bus.errors.TransportError`."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=True)


class AnswerTooLarge(Unreachable):
    """The gateway's answer is longer than the client reads (``max_answer_bytes``): nothing of
    it is used. Retriable like :class:`Unreachable` (a gateway that answers so is broken or
    hostile; the report stays queued), and named so that a check can say why."""


class GatewayClient:
    """HTTP client of an organization gateway (aiohttp); ``async with`` opens the session."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 5.0,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=connect_timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self.max_answer_bytes = max_answer_bytes

    async def __aenter__(self) -> GatewayClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def _call(self, method: str, path: str, body: bytes | None = None) -> Answer:
        assert self._session is not None
        headers = {"content-type": "application/protobuf"} if body is not None else {}
        # A file-like body: aiohttp streams it (raw bytes of megabytes would block its loop).
        stream = None if body is None else io.BytesIO(body)
        try:
            async with self._session.request(
                method, self.base_url + path, data=stream, headers=headers
            ) as resp:
                data = await self._read(resp, path)
                retry = resp.headers.get("Retry-After")
                retry_s = float(retry) if retry and retry.replace(".", "", 1).isdigit() else None
                return Answer(resp.status, data, retry_s)
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot connect to {exc.host}:{exc.port} ({exc.os_error})") from exc
        except TimeoutError as exc:
            raise Unreachable(f"no answer from {self.base_url} in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc

    async def _read(self, resp: aiohttp.ClientResponse, path: str) -> bytes:
        """The body, refused as soon as it is longer than ``max_answer_bytes`` (a declared
        length is believed only to refuse early; the bytes read are what counts)."""
        limit = self.max_answer_bytes
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise AnswerTooLarge(f"{path}: the answer declares {declared} bytes, more than {limit}")
        data = bytearray()
        async for chunk in resp.content.iter_chunked(_READ_CHUNK):
            data += chunk
            if len(data) > limit:
                raise AnswerTooLarge(f"{path}: the answer runs past {limit} bytes")
        return bytes(data)

    async def submit(self, envelope: bytes) -> Answer:
        """POST the envelope bytes to /v1/reports."""
        return await self._call("POST", "/v1/reports", envelope)

    async def put_attachment(self, digest: bytes, data: bytes) -> Answer:
        """PUT an attachment's bytes to /v1/attachments/<sha256 hex>."""
        return await self._call("PUT", f"/v1/attachments/{digest.hex()}", data)

    async def node_accreditation(self) -> Answer:
        """GET /v1/node: the gateway's node-key accreditation envelope."""
        return await self._call("GET", "/v1/node")

    async def time(self) -> Answer:
        """GET /v1/time: the gateway's clock and the skew the nodes allow."""
        return await self._call("GET", "/v1/time")

    async def head(self, observer_id: str) -> Answer:
        """GET /v1/observers/{id}/head: the observer's accepted chain head, signed."""
        return await self._call("GET", f"/v1/observers/{quote(observer_id, safe='')}/head")

    async def recipients(self) -> Answer:
        """GET /v1/recipients: the organizations' current encryption keys."""
        return await self._call("GET", "/v1/recipients")

    async def proof(self, topic: str, partition: int, offset: int) -> Answer:
        """GET /v1/proofs/{topic}/{partition}/{offset}: a record's inclusion proof."""
        return await self._call("GET", f"/v1/proofs/{quote(topic, safe='')}/{partition}/{offset}")

    def json(self, answer: Answer) -> object:
        """The JSON body of a 200 answer.

        Raises:
            Unreachable: another status, or a body that is not JSON.
        """
        if answer.status != 200:
            reason, detail = answer.error()
            raise Unreachable(f"{self.base_url} answered {answer.status} {reason}: {detail}")
        try:
            return json.loads(answer.body)
        except ValueError as exc:
            raise Unreachable(f"{self.base_url} answered no JSON: {exc}") from exc
