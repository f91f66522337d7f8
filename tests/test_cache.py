"""pythrust's HTTP cache on its own: keys, cacheability, Vary variants, LRU accounting, expiry and 304s."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from thruster.cache import CachedResponse, HttpCache, cache_key, freshness, not_modified, vary_names

AE = b"accept-encoding"
HOST = b"example.com"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def response(
    body: bytes = b"body",
    *,
    expires: float = 100.0,
    vary: tuple[tuple[bytes, bytes | None], ...] = (),
    etag: bytes | None = None,
) -> CachedResponse:
    return CachedResponse(200, b"HTTP/1.1 200 OK\r\nX-Cache: hit\r\n", body, etag, expires, vary)


def stored_size(body: bytes = b"body", path: bytes = b"/a") -> int:
    """What an entry counts for once stored: the response and its key."""
    return response(body).size + len(key(path))


def request(**headers: bytes) -> Callable[[bytes], bytes | None]:
    """The request's header lookup, from keyword arguments with `_` for `-`."""
    return {name.replace("_", "-").encode(): value for name, value in headers.items()}.get


def key(target: bytes = b"/", method: bytes = b"GET", host: bytes = HOST) -> bytes:
    return cache_key(method, target, host)


# Keys


def test_key_sorts_query_parameters_by_name() -> None:
    assert key(b"/p?b=2&a=1&c") == key(b"/p?a=1&b=2&c")


def test_key_keeps_the_order_of_a_repeated_parameter() -> None:
    """The app may read a repeated parameter as a list, where order matters."""
    assert key(b"/p?a=2&a=1") != key(b"/p?a=1&a=2")
    assert key(b"/p?b=1&a=2&a=1") == key(b"/p?a=2&a=1&b=1")


def test_key_tells_paths_and_queries_apart() -> None:
    keys = {key(b"/a"), key(b"/b"), key(b"/a?x=1"), key(b"/a?x=2"), key(b"/a?y=1")}
    assert len(keys) == 5


def test_key_treats_an_empty_query_as_none() -> None:
    assert key(b"/p?") == key(b"/p?&") == key(b"/p")
    assert key(b"/p?a=1&&b=2") == key(b"/p?a=1&b=2")


def test_key_does_not_normalise_escaping() -> None:
    """Merging differently escaped queries could serve one app response for a request it tells apart."""
    assert key(b"/p?a=%41") != key(b"/p?a=A")


def test_key_ignores_host_case_but_not_host() -> None:
    assert key(host=b"Example.COM") == key(host=b"example.com")
    assert key(host=b"example.com") != key(host=b"example.org")


def test_key_separates_get_and_head() -> None:
    assert key(method=b"GET") != key(method=b"HEAD")


# Freshness


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        (b"public, max-age=60", 60.0),
        (b"Max-Age=60, PUBLIC", 60.0),
        (b"public, max-age=60, s-maxage=10", 10.0),
        (b"public, max-age=60, s-max-age=10", 10.0),
        (b'public, max-age="60"', 60.0),
        (b"public, max-age=60, x-no-cache, privateish", 60.0),
        (b"public, max-age=60, max-age=5", 60.0),
        (b"public, max-age=99999999999999999999", 2.0**31),
    ],
)
def test_fresh_lifetime(cache_control: bytes, seconds: float) -> None:
    assert freshness(200, cache_control, None) == seconds


@pytest.mark.parametrize(
    "cache_control",
    [
        None,
        b"max-age=60",
        b"x-public, max-age=60",
        b"public",
        b"public, no-cache, max-age=60",
        b"public, no-store, max-age=60",
        b"public, private, max-age=60",
        b'public, Private="Set-Cookie", max-age=60',
        b"public, max-age=0",
        b"public, max-age=60, s-maxage=0",
        b"public, max-age=abc",
        b"public, max-age=-5",
        b"public, max-age=1.5",
        b"public, max-age=",
        b"public, max-age",
    ],
)
def test_not_storable(cache_control: bytes | None) -> None:
    assert freshness(200, cache_control, None) == 0.0


@pytest.mark.parametrize(("status", "stored"), [(200, True), (301, True), (399, True), (304, False)])
def test_status_range(status: int, stored: bool) -> None:
    assert (freshness(status, b"public, max-age=60", None) > 0) is stored


@pytest.mark.parametrize("status", [100, 199, 400, 404, 500, 503])
def test_error_and_informational_statuses_are_not_stored(status: int) -> None:
    assert freshness(status, b"public, max-age=60", None) == 0.0


def test_vary_star_is_not_stored() -> None:
    assert freshness(200, b"public, max-age=60", b"Accept-Encoding") == 60.0
    assert freshness(200, b"public, max-age=60", b"*") == 0.0
    assert freshness(200, b"public, max-age=60", b"Accept, * ") == 0.0


def test_vary_names_are_canonical() -> None:
    assert vary_names(b" Accept-Encoding, accept ,ACCEPT-encoding,, ") == (b"accept", AE)
    assert vary_names(None) == vary_names(b"") == ()


# Storage


def test_hit_returns_the_stored_entry() -> None:
    cache = HttpCache(10_000, 10_000, clock=Clock())
    stored = response()
    assert cache.put(key(b"/a"), stored, request())
    assert cache.get(key(b"/a"), request()) is stored
    assert cache.get(key(b"/b"), request()) is None


def test_size_counts_head_and_body() -> None:
    assert response(b"x" * 1000).size - response(b"").size == 1000


def test_two_vary_variants_are_both_served() -> None:
    cache = HttpCache(10_000, 10_000, clock=Clock())
    gzip = response(b"gzip", vary=((AE, b"gzip"),))
    br = response(b"br", vary=((AE, b"br"),))
    assert cache.put(key(), gzip, request(accept_encoding=b"gzip"))
    assert cache.put(key(), br, request(accept_encoding=b"br"))
    assert len(cache) == 2
    assert cache.get(key(), request(accept_encoding=b"gzip")) is gzip
    assert cache.get(key(), request(accept_encoding=b"br")) is br
    assert cache.get(key(), request(accept_encoding=b"zstd")) is None


def test_a_missing_header_is_not_an_empty_one() -> None:
    cache = HttpCache(10_000, 10_000, clock=Clock())
    cache.put(key(), response(vary=((AE, b"gzip"),)), request(accept_encoding=b"gzip"))
    absent = response(b"absent", vary=((AE, None),))
    empty = response(b"empty", vary=((AE, b""),))
    cache.put(key(), absent, request())
    cache.put(key(), empty, request(accept_encoding=b""))
    assert cache.get(key(), request()) is absent
    assert cache.get(key(), request(accept_encoding=b"")) is empty


def test_a_variant_must_match_its_own_vary() -> None:
    """A variant may vary on more headers than the primary entry that led to it."""
    cache = HttpCache(10_000, 10_000, clock=Clock())
    cache.put(key(), response(vary=((AE, b"gzip"),)), request(accept_encoding=b"gzip"))
    french = response(b"fr", vary=((b"accept-language", b"fr"), (AE, b"br")))
    cache.put(key(), french, request(accept_encoding=b"br", accept_language=b"fr"))
    assert cache.get(key(), request(accept_encoding=b"br", accept_language=b"fr")) is french
    assert cache.get(key(), request(accept_encoding=b"br", accept_language=b"de")) is None


def test_same_vary_values_replace_the_primary() -> None:
    cache = HttpCache(10_000, 10_000, clock=Clock())
    cache.put(key(), response(b"old", vary=((AE, b"gzip"),)), request(accept_encoding=b"gzip"))
    new = response(b"new", vary=((AE, b"gzip"),))
    cache.put(key(), new, request(accept_encoding=b"gzip"))
    assert len(cache) == 1
    assert cache.get(key(), request(accept_encoding=b"gzip")) is new


def test_an_expired_primary_is_replaced_not_varied() -> None:
    clock = Clock()
    cache = HttpCache(10_000, 10_000, clock=clock)
    cache.put(key(), response(expires=10.0, vary=((AE, b"gzip"),)), request(accept_encoding=b"gzip"))
    clock.now = 10.0
    br = response(expires=20.0, vary=((AE, b"br"),))
    cache.put(key(), br, request(accept_encoding=b"br"))
    assert len(cache) == 1
    assert cache.get(key(), request(accept_encoding=b"br")) is br


def test_lru_evicts_the_least_recently_stored() -> None:
    size = stored_size()
    cache = HttpCache(2 * size, size, clock=Clock())
    for name in (b"/a", b"/b", b"/c"):
        cache.put(key(name), response(), request())
    assert cache.get(key(b"/a"), request()) is None
    assert cache.get(key(b"/b"), request()) is not None
    assert cache.get(key(b"/c"), request()) is not None
    assert (len(cache), cache.size) == (2, 2 * size)


def test_a_hit_protects_an_entry_from_eviction() -> None:
    size = stored_size()
    cache = HttpCache(2 * size, size, clock=Clock())
    cache.put(key(b"/a"), response(), request())
    cache.put(key(b"/b"), response(), request())
    assert cache.get(key(b"/a"), request()) is not None
    cache.put(key(b"/c"), response(), request())
    assert cache.get(key(b"/a"), request()) is not None
    assert cache.get(key(b"/b"), request()) is None


def test_a_large_entry_evicts_as_many_as_it_needs() -> None:
    small = stored_size(b"")
    big_body = b"x" * (3 * small - 5 - stored_size(b"", b"/big"))  # just fits the whole cache
    big = stored_size(big_body, b"/big")
    cache = HttpCache(3 * small, big, clock=Clock())
    for name in (b"/a", b"/b", b"/c"):
        cache.put(key(name), response(b""), request())
    assert cache.put(key(b"/big"), response(big_body), request())
    assert len(cache) == 1
    assert cache.size == big


def test_the_key_and_vary_values_count_against_the_capacity() -> None:
    """A client chooses URLs and header values: a tiny response under a long key is not free."""
    long_key = key(b"/" + b"q" * 5000)
    cache = HttpCache(4000, 10_000, clock=Clock())
    assert not cache.put(long_key, response(b""), request())
    assert response(b"", vary=((b"accept-language", b"x" * 5000),)).size > 5000


def test_larger_than_max_item_size_is_refused() -> None:
    entry = response(b"x" * 100)
    cache = HttpCache(10 * entry.size, entry.size - 1, clock=Clock())
    assert not cache.put(key(), entry, request())
    assert (len(cache), cache.size) == (0, 0)


def test_larger_than_capacity_is_refused_without_evicting() -> None:
    small = response(b"")
    big = response(b"x" * 1000)
    cache = HttpCache(big.size - 1, 10 * big.size, clock=Clock())
    cache.put(key(b"/small"), small, request())
    assert not cache.put(key(b"/big"), big, request())
    assert cache.get(key(b"/small"), request()) is small


def test_replacing_a_key_adjusts_the_size() -> None:
    cache = HttpCache(10_000, 10_000, clock=Clock())
    cache.put(key(), response(b"x" * 10), request())
    bigger = response(b"x" * 100)
    cache.put(key(), bigger, request())
    assert (len(cache), cache.size) == (1, bigger.size)


def test_replacing_frees_its_own_room_first() -> None:
    """A full cache replacing its most recently used entry by a same-size one evicts nothing else."""
    size = stored_size()
    cache = HttpCache(2 * size, size, clock=Clock())
    cache.put(key(b"/a"), response(), request())
    cache.put(key(b"/b"), response(), request())
    cache.get(key(b"/a"), request())
    cache.put(key(b"/a"), response(), request())
    assert cache.get(key(b"/b"), request()) is not None


def test_an_expired_entry_is_a_miss_and_is_dropped() -> None:
    clock = Clock()
    cache = HttpCache(10_000, 10_000, clock=clock)
    cache.put(key(), response(expires=10.0), request())
    clock.now = 9.9
    assert cache.get(key(), request()) is not None
    clock.now = 10.0
    assert cache.get(key(), request()) is None
    assert (len(cache), cache.size) == (0, 0)


def test_an_expired_variant_is_a_miss() -> None:
    clock = Clock()
    cache = HttpCache(10_000, 10_000, clock=clock)
    cache.put(key(), response(expires=100.0, vary=((AE, b"gzip"),)), request(accept_encoding=b"gzip"))
    cache.put(key(), response(expires=10.0, vary=((AE, b"br"),)), request(accept_encoding=b"br"))
    clock.now = 10.0
    assert cache.get(key(), request(accept_encoding=b"br")) is None
    assert cache.get(key(), request(accept_encoding=b"gzip")) is not None
    assert len(cache) == 1


# Conditional requests


@pytest.mark.parametrize(
    ("etag", "if_none_match", "expected"),
    [
        (b'"v1"', b'"v1"', True),
        (b'"v1"', b'"v0" , "v1"', True),
        (b'"v1"', b'W/"v1"', True),
        (b'W/"v1"', b'"v1"', True),
        (b'"v1"', b"*", True),
        (None, b"*", True),
        (b'"v1"', b'"v2"', False),
        (b'"v1"', b'"v10"', False),
        (b'"v1"', None, False),
        (None, b'"v1"', False),
    ],
)
def test_not_modified(etag: bytes | None, if_none_match: bytes | None, expected: bool) -> None:
    assert not_modified(response(etag=etag), if_none_match) is expected


def test_an_entry_knows_whether_it_is_still_stored() -> None:
    """What a replayed cache hit (proxy/http/replay.py) checks: evicted, replaced or expired ends it."""
    size = stored_size()
    clock = Clock()
    cache = HttpCache(2 * size, size, clock=clock)
    first, replacement, b, c = response(), response(), response(), response(expires=5.0)
    cache.put(key(b"/a"), first, request())
    assert first.stored
    cache.put(key(b"/a"), replacement, request())
    assert (first.stored, replacement.stored) == (False, True)
    cache.put(key(b"/b"), b, request())
    cache.put(key(b"/c"), c, request())
    assert not replacement.stored and b.stored and c.stored  # /a was the least recently used
    clock.now = 6.0
    assert cache.get(key(b"/c"), request()) is None
    assert not c.stored
    too_big = response(b"x" * 2 * size)
    assert not cache.put(key(b"/d"), too_big, request()) and not too_big.stored
