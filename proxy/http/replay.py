"""Answers to byte-identical requests, sent again without parsing them.

Browsers, CDNs and health checkers ask for the same small asset with the
same bytes over and over. When a pool that answers itself (pythrust's static
files and cache hits) makes a whole response from memory for a request that
arrived as one read, it offers the answer for the bytes of that read. The
next read of exactly those bytes, on a connection with nothing in progress,
is answered with one dict lookup: no parser callbacks, no routing, no header
dict. The same bytes are the same request (method, target, Host,
Accept-Encoding, cookies: every header), so the answer can only differ if
its source changed; each kept answer carries the expiry and the freshness
check of the response it copies.

An answer is kept at the second offer for the same bytes; the first only
notes the bytes' hash, so traffic that never repeats (a header that changes
on every request: a trace id, a cookie) costs a set entry per request, not a
kept answer. Only bodiless keep-alive requests of up to 4 KiB with answers of
up to 64 KiB are kept, at most 16,384 of them in about 32 MiB; the noted
hashes are at most 100,000. A full table is emptied at once (a few
milliseconds), as a client sending endless distinct requests would make it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from proxy.http.request import Downstream

if TYPE_CHECKING:
    from proxy.http.request import Request

MAX_REQUEST = 4096
MAX_RESPONSE = 64 * 1024
MAX_HELD_BYTES = 32 * 1024 * 1024
MAX_KEPT = 16_384
MAX_NOTED = 100_000
ENTRY_OVERHEAD = 400  # about what a kept answer costs beyond its request, response and log fields
_HEAD_END = b"\r\n\r\n"


class Replay:
    """One kept answer: the response bytes, the access log's fixed fields, and how long it holds."""

    __slots__ = ("expires", "log_end", "log_middle", "response", "size", "still_valid")

    def __init__(
        self,
        response: bytes,
        log_parts: tuple[bytes, bytes],
        expires: float,
        still_valid: Callable[[], bool] | None,
        request_size: int,
    ) -> None:
        self.response = response
        self.log_middle, self.log_end = log_parts
        self.expires = expires  # loop time
        self.still_valid = still_valid  # e.g. "the file is the one the answer was made from"
        self.size = request_size + len(response) + len(self.log_middle) + len(self.log_end) + ENTRY_OVERHEAD


class Replays:
    """The answers kept for one listener scheme, keyed by the exact request bytes.

    `log_parts` cuts a kept answer's access-log line into the fields around its duration
    (accesslog.AccessLog.fixed_fields)."""

    def __init__(self, log_parts: Callable[[Downstream, Request], tuple[bytes, bytes]]) -> None:
        self.log_parts = log_parts
        self.held: dict[bytes, Replay] = {}
        self.held_bytes = 0
        self.noted: set[int] = set()  # hashes of request bytes offered once

    def find(self, data: bytes, now: float) -> Replay | None:
        """The answer for a read of exactly `data`, if one is kept and still holds."""
        replay = self.held.get(data)
        if replay is None:
            return None
        if replay.expires < now or (replay.still_valid is not None and not replay.still_valid()):
            del self.held[data]
            self.held_bytes -= replay.size
            return None
        return replay

    def seen_before(self, data: bytes) -> bool:
        """Whether `data` was offered before; notes it if not."""
        fingerprint = hash(data)
        if fingerprint in self.noted:
            return True
        if len(self.noted) >= MAX_NOTED:
            self.noted.clear()
        self.noted.add(fingerprint)
        return False

    def keep(self, data: bytes, replay: Replay) -> None:
        held = self.held
        known = held.pop(data, None)
        if known is not None:
            self.held_bytes -= known.size
        if self.held_bytes + replay.size > MAX_HELD_BYTES or len(held) >= MAX_KEPT:
            held.clear()
            self.held_bytes = 0
        held[data] = replay
        self.held_bytes += replay.size


class KeepingClient(Downstream, Protocol):
    """A client connection that may keep answers: an HTTP/1.1 one (others have no `replays`)."""

    replays: Replays | None
    fresh_read: bytes | None  # the read being parsed, while it may hold one whole request


def offer(
    client: KeepingClient,
    request: Request,
    response: bytes,
    expires: float,
    still_valid: Callable[[], bool] | None = None,
) -> None:
    """Offer `response` (already sent whole for `request`) for the same request bytes read again.

    Called by pools that answer from memory, after setting the request's
    status and response size. Nothing is kept unless the read that brought
    `request` held that request alone, without a body, on a keep-alive
    connection that is not closing.
    """
    replays = client.replays
    if replays is None:
        return
    data = client.fresh_read
    if data is None:
        return
    if not request.keep_alive or not request.complete or client.closing or len(response) > MAX_RESPONSE:
        return
    if data.find(_HEAD_END) != len(data) - 4:
        return  # part of a request, or more than one (ClientConnection keeps only reads of MAX_REQUEST)
    if replays.seen_before(data):
        log_parts = replays.log_parts(client, request)
        replays.keep(data, Replay(response, log_parts, expires, still_valid, len(data)))
