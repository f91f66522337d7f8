"""Routing table behaviour (spec §4.1-4.6): host selection, prefix matching, stripping, conflicts."""

import re
from dataclasses import dataclass

import pytest

from proxy.routing import (
    Match,
    RoutingTable,
    normalize_hosts,
    normalize_prefixes,
    validate_host,
)


@dataclass(frozen=True)
class Svc:
    name: str
    hosts: tuple[str, ...] = ("",)
    path_prefixes: tuple[str, ...] = ("/",)
    strip_prefix: bool = True


def table(*services: Svc) -> RoutingTable:
    return RoutingTable.build(services)


def served_by(tbl: RoutingTable, host: str, target: str) -> str | None:
    match = tbl.lookup(host, target)
    return None if match is None else match.service.name


# --- normalisation and validation ---------------------------------------------------------------


def test_normalize_hosts_strips_lowercases_and_dedupes_in_order():
    assert normalize_hosts([" B.example.com ", "a.example.com", "b.EXAMPLE.com"]) == (
        "b.example.com",
        "a.example.com",
    )


def test_normalize_hosts_empty_means_default_binding():
    assert normalize_hosts([]) == ("",)


def test_normalize_prefixes_adds_leading_and_drops_trailing_slashes():
    assert normalize_prefixes(["api/", "/api", "/app/v1/", "/", ""]) == ("/api", "/app/v1", "/")


def test_normalize_prefixes_empty_means_root():
    assert normalize_prefixes([]) == ("/",)


@pytest.mark.parametrize(
    "host", ["", "example.com", "a.b.example.com", "*.example.com", "[::1]", "localhost"]
)
def test_validate_host_accepts_valid_patterns(host):
    validate_host(host)


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("*", '"*"'),
        ("*example.com", '"*"'),
        ("a.*.example.com", '"*"'),
        ("*.*.example.com", '"*"'),
        ("example.*", '"*"'),
        ("a..example.com", "empty label"),
        (".example.com", "empty label"),
        ("example.com.", "empty label"),
        ("exa mple.com", "spaces"),
        ("example.com:8080", "port"),
        ("example.com/app", "slashes"),
        ("[not-ipv6]", "IPv6"),
    ],
)
def test_validate_host_rejects_invalid_patterns(host, reason):
    with pytest.raises(ValueError, match=reason) as info:
        validate_host(host)
    assert f'"{host}"' in str(info.value)


# --- host selection -----------------------------------------------------------------------------


def test_exact_host_selects_its_service():
    tbl = table(Svc("a", hosts=("a.example.com",)), Svc("b", hosts=("b.example.com",)))
    assert served_by(tbl, "a.example.com", "/") == "a"
    assert served_by(tbl, "b.example.com", "/") == "b"
    assert served_by(tbl, "c.example.com", "/") is None


def test_host_port_is_ignored():
    tbl = table(Svc("a", hosts=("a.example.com",)))
    assert served_by(tbl, "a.example.com:8080", "/") == "a"


def test_host_matching_is_case_insensitive():
    tbl = table(Svc("a", hosts=("a.example.com",)))
    assert served_by(tbl, "A.Example.COM", "/") == "a"
    assert served_by(tbl, "A.EXAMPLE.COM:443", "/") == "a"


def test_ipv6_literal_host_keeps_brackets_and_drops_port():
    tbl = table(Svc("v6", hosts=("[::1]",)), Svc("other", hosts=("[::2]",)))
    assert served_by(tbl, "[::1]:8080", "/") == "v6"
    assert served_by(tbl, "[::1]", "/") == "v6"
    assert served_by(tbl, "[::2]:80", "/") == "other"


def test_wildcard_matches_exactly_one_label():
    tbl = table(Svc("wild", hosts=("*.example.com",)))
    assert served_by(tbl, "a.example.com", "/") == "wild"
    assert served_by(tbl, "A.Example.com:80", "/") == "wild"
    assert served_by(tbl, "a.b.example.com", "/") is None
    assert served_by(tbl, "example.com", "/") is None
    assert served_by(tbl, ".example.com", "/") is None


def test_exact_host_wins_over_wildcard_and_default():
    tbl = table(Svc("exact", hosts=("a.example.com",)), Svc("wild", hosts=("*.example.com",)), Svc("default"))
    assert served_by(tbl, "a.example.com", "/") == "exact"
    assert served_by(tbl, "b.example.com", "/") == "wild"
    assert served_by(tbl, "other.org", "/") == "default"


def test_default_service_serves_unknown_and_missing_hosts():
    tbl = table(Svc("a", hosts=("a.example.com",)), Svc("default"))
    assert served_by(tbl, "unknown.example.com", "/x") == "default"
    assert served_by(tbl, "", "/x") == "default"
    assert served_by(tbl, "localhost", "/x") == "default"
    assert served_by(tbl, "127.0.0.1:3000", "/x") == "default"


def test_only_default_service_serves_every_host():
    tbl = table(Svc("default"))
    assert served_by(tbl, "anything.example.com:8443", "/x?y=1") == "default"


def test_no_fallthrough_when_host_matches_but_prefix_does_not():
    tbl = table(
        Svc("api", hosts=("a.example.com",), path_prefixes=("/api",)),
        Svc("wild", hosts=("*.example.com",)),
        Svc("default"),
    )
    assert served_by(tbl, "a.example.com", "/api/x") == "api"
    assert tbl.lookup("a.example.com", "/other") is None


def test_no_fallthrough_from_wildcard_to_default():
    tbl = table(Svc("wild", hosts=("*.example.com",), path_prefixes=("/app",)), Svc("default"))
    assert tbl.lookup("a.example.com", "/other") is None


def test_empty_table_matches_nothing():
    assert RoutingTable.build([]).lookup("example.com", "/") is None


# --- path matching ------------------------------------------------------------------------------


def test_longest_prefix_wins():
    tbl = table(
        Svc("root"), Svc("api", path_prefixes=("/api",)), Svc("internal", path_prefixes=("/api/internal",))
    )
    assert served_by(tbl, "", "/api/internal/x") == "internal"
    assert served_by(tbl, "", "/api/internal") == "internal"
    assert served_by(tbl, "", "/api/x") == "api"
    assert served_by(tbl, "", "/other") == "root"


@pytest.mark.parametrize("target", ["/api", "/api/", "/api/x", "/api?q=1", "/api/x?q=/apiary"])
def test_prefix_matches_whole_segments(target):
    tbl = table(Svc("api", path_prefixes=("/api",)))
    match = tbl.lookup("", target)
    assert match is not None
    assert match.prefix == "/api"


@pytest.mark.parametrize("target", ["/apiary", "/apiary/x", "/ap", "/", "/x/api", "/ap%69ary", "/api%3Fx"])
def test_prefix_does_not_match_partial_segments(target):
    tbl = table(Svc("api", path_prefixes=("/api",)))
    assert tbl.lookup("", target) is None


def test_query_string_does_not_affect_matching():
    tbl = table(Svc("root"), Svc("api", path_prefixes=("/api",)))
    assert served_by(tbl, "", "/x?next=/api") == "root"


def test_root_prefix_matches_everything_and_forwards_unchanged():
    tbl = table(Svc("root"))
    assert tbl.lookup("", "/any/path;p?a=1&b=%zz") == Match(tbl.routes()[0], "/", "/any/path;p?a=1&b=%zz")


def test_percent_encoded_path_matches_decoded_prefix():
    tbl = table(Svc("root"), Svc("api", path_prefixes=("/api",)))
    assert served_by(tbl, "", "/ap%69/x") == "api"
    assert served_by(tbl, "", "/%61pi") == "api"


def test_percent_encoded_slash_is_a_segment_boundary_after_decoding():
    tbl = table(Svc("root"), Svc("api", path_prefixes=("/api",)))
    assert served_by(tbl, "", "/api%2Fx") == "api"


def test_percent_in_query_only_does_not_decode_the_path():
    tbl = table(Svc("app", path_prefixes=("/app",)))
    match = tbl.lookup("", "/app/a|b?x=%41")
    assert match is not None
    assert match.upstream_path == "/a|b?x=%41"


def test_multiple_prefixes_of_one_service():
    tbl = table(Svc("root"), Svc("app", path_prefixes=("/app", "/assets")))
    assert served_by(tbl, "", "/assets/x.css") == "app"
    assert served_by(tbl, "", "/app") == "app"


# --- prefix stripping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "target", "upstream"),
    [
        ("/app", "/app/show", "/show"),
        ("/app", "/app", "/"),
        ("/app", "/app/", "/"),
        ("/app", "/app?a=b", "/?a=b"),
        ("/api/internal", "/api/internal/x?a=b", "/x?a=b"),
        ("/api", "/api/x?p=a;b&q=%x&r=%2F", "/x?p=a;b&q=%x&r=%2F"),
        ("/api", "/ap%69?q=%20", "/?q=%20"),
    ],
)
def test_strip_prefix(prefix, target, upstream):
    tbl = table(Svc("svc", path_prefixes=(prefix,)))
    assert tbl.lookup("", target) == Match(tbl.routes()[0], prefix, upstream)


def test_no_stripping_when_disabled():
    tbl = table(Svc("svc", path_prefixes=("/app",), strip_prefix=False))
    match = tbl.lookup("", "/app/show?a=b")
    assert match is not None
    assert match.prefix == "/app"
    assert match.upstream_path == "/app/show?a=b"


def test_no_stripping_for_root_prefix():
    tbl = table(Svc("root"), Svc("app", path_prefixes=("/app",)))
    assert tbl.lookup("", "/other/x?a=b") == Match(tbl.routes()[0], "/", "/other/x?a=b")


def test_stripping_a_percent_encoded_path_reencodes_the_rest():
    tbl = table(Svc("api", path_prefixes=("/api",)))
    match = tbl.lookup("", "/ap%69/a%20b/caf%C3%A9/50%25/%FF:@!$&'()*+,;=?q=%20x")
    assert match is not None
    assert match.upstream_path == "/a%20b/caf%C3%A9/50%25/%FF:@!$&'()*+,;=?q=%20x"


def test_unstripped_percent_encoded_path_is_forwarded_byte_for_byte():
    tbl = table(Svc("api", path_prefixes=("/api",), strip_prefix=False))
    match = tbl.lookup("", "/ap%69/a%2fb?q=%20")
    assert match is not None
    assert match.upstream_path == "/ap%69/a%2fb?q=%20"


# --- other request-target forms -----------------------------------------------------------------


def test_absolute_form_uses_its_path_and_authority():
    tbl = table(Svc("a", hosts=("a.example.com",), path_prefixes=("/app",)), Svc("default"))
    assert tbl.lookup("ignored", "http://A.example.com:80/app/x?q=1") == Match(
        tbl.routes()[0], "/app", "/x?q=1"
    )
    assert tbl.lookup("", "https://other.org?q=1") == Match(tbl.routes()[1], "/", "/?q=1")


def test_asterisk_form_matches_only_a_root_binding():
    tbl = table(
        Svc("root", hosts=("a.example.com",)), Svc("api", hosts=("b.example.com",), path_prefixes=("/api",))
    )
    assert tbl.lookup("a.example.com", "*") == Match(tbl.routes()[0], "/", "*")
    assert tbl.lookup("b.example.com", "*") is None


def test_unsupported_target_forms_match_nothing():
    tbl = table(Svc("root"))
    assert tbl.lookup("", "example.com:443") is None
    assert tbl.lookup("", "") is None


# --- conflicts ----------------------------------------------------------------------------------


def test_conflict_names_the_other_service_host_and_prefix():
    tbl = table(Svc("billing", hosts=("api.example.com",), path_prefixes=("/v1", "/v2")))
    assert tbl.conflicts("web", ("api.example.com",), ("/v2",)) == (
        'host settings conflict with another service: "api.example.com/v2" is served by "billing"'
    )


def test_conflict_on_default_host_is_spelled_out():
    tbl = table(Svc("web"))
    assert tbl.conflicts("other", ("",), ("/",)) == (
        'host settings conflict with another service: "(default host)/" is served by "web"'
    )


def test_same_service_may_redeploy_over_its_bindings():
    tbl = table(
        Svc("web", hosts=("example.com",)), Svc("api", hosts=("example.com",), path_prefixes=("/api",))
    )
    assert tbl.conflicts("web", ("example.com",), ("/",)) is None
    assert tbl.conflicts("api", ("example.com", "new.example.com"), ("/api", "/v2")) is None


def test_wildcard_exact_and_default_hosts_never_conflict():
    tbl = table(Svc("wild", hosts=("*.example.com",)), Svc("exact", hosts=("example.com",)), Svc("default"))
    assert tbl.conflicts("new", ("a.example.com", "*.other.com", "example.org"), ("/",)) is None
    assert tbl.conflicts("new", ("*.example.com", "example.com", ""), ("/api",)) is None
    assert tbl.conflicts("new", ("example.com",), ("/",)) is not None


def test_build_rejects_two_services_on_one_binding():
    with pytest.raises(ValueError, match=re.escape('"example.com/api" is served by "first"')):
        table(
            Svc("first", hosts=("example.com",), path_prefixes=("/api",)),
            Svc("second", hosts=("example.com",), path_prefixes=("/api",)),
        )


def test_routes_are_returned_in_build_order():
    services = (Svc("b", hosts=("b.example.com",)), Svc("a", hosts=("a.example.com",)), Svc("c"))
    assert RoutingTable.build(iter(services)).routes() == services


def test_lookup_result_is_an_immutable_match():
    match = table(Svc("root")).lookup("", "/x")
    assert isinstance(match, Match)
    with pytest.raises(AttributeError):
        match.upstream_path = "/y"  # type: ignore[misc]
