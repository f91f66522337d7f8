"""Answers to byte-identical requests, sent again without parsing them.

Browsers, CDNs and health checkers ask for the same small asset with the
same bytes over and over. When a pool that answers itself (pythrust's static
files and cache hits) makes a whole response from memory for a request that
arrived as one read, the bytes of that read are kept with the response and
its access-log fields. The next read of exactly those bytes, on a connection
with nothing in progress, is answered with one dict lookup: no parser
callbacks, no routing, no header dict. The same bytes are the same request
(method, target, Host, Accept-Encoding, cookies: every header), so the
answer can only differ if its source changed; each kept answer carries the
expiry and the freshness check of the response it copies.

Only bodiless keep-alive requests of up to 4 KiB with answers of up to
64 KiB are kept, within 32 MiB in all (the lot is dropped when full). An
answer is kept at the second offer for the same bytes: the first only
notes the bytes, so traffic that never repeats (a cookie that changes on
every request) costs a dict entry per request, not a kept answer. The
access log's fixed fields of a kept answer are made at its first replay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http.client import ClientConnection
    from proxy.http.request import Request

MAX_REQUEST = 4096
MAX_RESPONSE = 64 * 1024
MAX_HELD_BYTES = 32 * 1024 * 1024
_HEAD_END = b"\r\n\r\n"


class Replay:
    """One kept answer: the response bytes, the access log's fixed fields, and how long it holds."""

    __slots__ = ("expires", "log_end", "log_middle", "request", "response", "still_valid")

    def __init__(
        self, response: bytes, request: Request, expires: float, still_valid: Callable[[], bool] | None
    ) -> None:
        self.response = response
        self.request: Request | None = request  # until the log's fields are made from it (first replay)
        self.log_middle = self.log_end = b""
        self.expires = expires  # loop time
        self.still_valid = still_valid  # e.g. "the file is the one the answer was made from"


class Replays:
    """The answers kept for one listener scheme, keyed by the exact request bytes (None: seen once)."""

    def __init__(self) -> None:
        self.held: dict[bytes, Replay | None] = {}
        self.held_bytes = 0

    def find(self, data: bytes, now: float) -> Replay | None:
        """The answer for a read of exactly `data`, if one is kept and still holds."""
        replay = self.held.get(data)
        if replay is None:
            return None
        if replay.expires < now or (replay.still_valid is not None and not replay.still_valid()):
            del self.held[data]
            return None
        return replay

    def offered(
        self,
        data: bytes,
        response: bytes,
        request: Request,
        expires: float,
        still_valid: Callable[[], bool] | None,
    ) -> None:
        held = self.held
        if data not in held:
            size = len(data)  # seen once: noted, not kept
            replay = None
        else:
            size = 2 * len(data) + len(response)  # the bytes, the request made from them, the answer
            replay = Replay(response, request, expires, still_valid)
        if self.held_bytes + size > MAX_HELD_BYTES:
            held.clear()
            self.held_bytes = 0
        held[data] = replay
        self.held_bytes += size


def offer(
    client: ClientConnection,
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
    if len(data) > MAX_REQUEST or data.find(_HEAD_END) != len(data) - 4:
        return  # part of a request, or more than one
    replays.offered(data, response, request, expires, still_valid)
