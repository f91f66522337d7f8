"""pythrust's in-memory HTTP response cache (spec 8): keys, cacheability, Vary and LRU storage.

A hit is one dict lookup, a clock read and, only for an entry that varies, a comparison of a few
request headers; the stored head is already encoded, so nothing is built to serve it.

Deviations from thruster, each on the standard or the safe side:
* the key is the bytes themselves, not a 64-bit hash, so no two URLs share an entry by collision;
* only the order of query parameters is canonical, not their escaping, so two queries share an entry
  only when no app can tell them apart;
* `s-maxage` is read as well as thruster's `s-max-age`; `private` and `no-store` prevent storing too;
  directives are matched by name, not as substrings; an unparsable lifetime prevents storing;
* eviction is plain least-recently-used instead of thruster's sampled one;
* If-None-Match accepts `*` and weak comparison (see not_modified).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

Header = Callable[[bytes], bytes | None]

# The entry object, its key and its dict slot, roughly: counted so that tiny entries still cost something.
ENTRY_OVERHEAD = 256
_REFUSING = frozenset((b"no-cache", b"no-store", b"private"))
# RFC 9111 1.2.2: a lifetime too large to represent counts as 2**31 seconds.
_MAX_LIFETIME = 2**31


@dataclass(slots=True)
class CachedResponse:
    """A stored response, ready to write: `head` ends after the last header's CRLF (the caller appends its
    connection headers and the blank line)."""

    status: int
    head: bytes
    body: bytes
    etag: bytes | None
    expires: float
    vary: tuple[tuple[bytes, bytes | None], ...]
    vary_source: bytes | None = None  # the Vary value, for variants made from this entry
    sendfile: str | None = None  # an X-Sendfile response: the file is sent again on each hit
    compressible: bool = False  # worth compressing for a client that accepts it
    size: int = field(init=False)
    stored: bool = field(default=False, init=False)  # in the cache now (not evicted, replaced, expired)

    def __post_init__(self) -> None:
        # Everything the entry holds counts, the request's Vary values too (a client picks those).
        vary = sum(len(name) + len(value or b"") for name, value in self.vary)
        self.size = len(self.head) + len(self.body) + vary + ENTRY_OVERHEAD


def _param_name(param: bytes) -> bytes:
    return param.partition(b"=")[0]


def cache_key(method: bytes, target: bytes, host: bytes) -> bytes:
    """The primary key. Parameters are sorted by name, stably, so `?b=2&a=1` is `?a=1&b=2` but `?a=2&a=1`
    is not `?a=1&a=2`; a target without a query is not parsed. Neither method nor target holds a space
    or a line feed and the host holds no line feed, so distinct requests get distinct keys."""
    path, _, query = target.partition(b"?")
    if query:
        params = sorted((p for p in query.split(b"&") if p), key=_param_name)
        if params:
            path += b"?" + b"&".join(params)
    return b"%s %s\n%s" % (method, path, host.lower())


def vary_names(vary: bytes | None) -> tuple[bytes, ...]:
    """The request header names a Vary value lists, in one canonical form for comparing and keying."""
    if not vary:
        return ()
    return tuple(sorted({name.strip().lower() for name in vary.split(b",")} - {b""}))


def freshness(status: int, cache_control: bytes | None, vary: bytes | None) -> float:
    """Seconds a response may be stored, 0.0 when it may not be (spec 8.3, rules in the module docstring).

    `cache_control` is all of the response's Cache-Control lines joined by commas. The first occurrence of
    a directive counts; the shared-cache lifetime (`s-maxage`) wins over `max-age`, even when it is 0.
    """
    if not 200 <= status < 400 or status == 304 or cache_control is None or b"*" in vary_names(vary):
        return 0.0
    directives: dict[bytes, bytes] = {}
    for item in cache_control.split(b","):
        name, _, value = item.partition(b"=")
        # RFC 9111 5.2: an argument may come quoted.
        directives.setdefault(name.strip().lower(), value.strip().strip(b'"'))
    if b"public" not in directives or not _REFUSING.isdisjoint(directives):
        return 0.0
    lifetime = directives.get(b"s-maxage", directives.get(b"s-max-age", directives.get(b"max-age", b"")))
    if not lifetime.isdigit():
        return 0.0  # RFC 9111 4.2.1: invalid freshness information makes the response stale
    # Eleven digits already exceed the cap; int() of a very long string would raise.
    return float(min(int(lifetime[:11]), _MAX_LIFETIME))


def not_modified(entry: CachedResponse, if_none_match: bytes | None) -> bool:
    """Whether a hit is answered 304: If-None-Match is `*`, or lists the entry's ETag (comma separated,
    trimmed) under weak comparison, so `W/"x"` matches `"x"` (RFC 9110 13.1.2). thruster compares exactly
    and ignores `*`; an ETag that itself contains a comma never matches here, so it gets a full response."""
    if if_none_match is None:
        return False
    etag = entry.etag.removeprefix(b"W/") if entry.etag else None
    for tag in if_none_match.split(b","):
        tag = tag.strip()
        if tag == b"*" or (etag is not None and tag.removeprefix(b"W/") == etag):
            return True
    return False


def _matches(vary: tuple[tuple[bytes, bytes | None], ...], header: Header) -> bool:
    """Whether the request has the header values the entry was stored with. A loop, not all(): a third
    less time on a hit, and most responses vary (on Accept-Encoding)."""
    for name, value in vary:  # noqa: SIM110
        if header(name) != value:
            return False
    return True


def _secondary_key(key: bytes, vary: tuple[tuple[bytes, bytes | None], ...], header: Header) -> bytes:
    """The key of the request's variant: a header the request lacks is the bare name, so it differs from
    an empty value. Names hold no `=`, values no line feed, so variants get distinct keys."""
    parts = [key]
    for name, _ in vary:
        value = header(name)
        parts.append(name if value is None else name + b"=" + value)
    return b"\n".join(parts)


class HttpCache:
    """Entries by key, least recently used first, holding at most `capacity` accounted bytes.

    A primary entry that varies tells which request headers pick a variant; the variants it does not
    match live under secondary keys made of the primary key and those headers' values.
    """

    def __init__(self, capacity: int, max_item_size: int, *, clock: Callable[[], float] = time.monotonic):
        self.capacity = capacity
        self.max_item_size = max_item_size
        self.size = 0
        self._clock = clock
        self._entries: OrderedDict[bytes, CachedResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, header: Header) -> CachedResponse | None:
        """The live entry for a request, made most recently used; expired entries are dropped on the spot."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.vary and not _matches(entry.vary, header):
            key = _secondary_key(key, entry.vary, header)
            entry = self._entries.get(key)
            if entry is None or not _matches(entry.vary, header):
                return None
        if entry.expires <= self._clock():
            self._remove(key)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: bytes, response: CachedResponse, header: Header) -> bool:
        """Store a response for a request, evicting the least recently used entries to make room; False
        when it is too large to store at all. A live primary entry for other header values is kept and
        the response goes under the request's secondary key."""
        primary = self._entries.get(key)
        if primary is not None and primary.expires > self._clock() and not _matches(primary.vary, header):
            key = _secondary_key(key, primary.vary, header)
        # The key counts as well: URLs and secondary keys can be long, and a client chooses them.
        response.size += len(key)
        if response.size > self.max_item_size or response.size > self.capacity:
            return False
        self._remove(key)
        while self.size + response.size > self.capacity:
            _, evicted = self._entries.popitem(last=False)
            self.size -= evicted.size
            evicted.stored = False
        self._entries[key] = response
        self.size += response.size
        response.stored = True
        return True

    def _remove(self, key: bytes) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry.size
            entry.stored = False
