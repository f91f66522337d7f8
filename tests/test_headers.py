"""Response heads are relayed with hop-by-hop headers cut out and the framing detected."""

from proxy.http.headers import REQUEST_KIND_BY_SPELLING, learn_request_header, relay_response_head


def test_hop_by_hop_headers_and_those_connection_names_are_removed():
    raw = (
        b"HTTP/1.1 200 OK\r\nServer: app\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\n"
        b"Set-Cookie: a=1\r\nContent-Length: 2\r\n"
    )
    head, framed = relay_response_head(raw)
    assert head == b"HTTP/1.1 200 OK\r\nServer: app\r\nSet-Cookie: a=1\r\nContent-Length: 2\r\n"
    assert framed


def test_header_names_match_case_insensitively_and_only_whole_names():
    raw = b"HTTP/1.1 200 OK\r\nCONNECTION: close\r\nX-Connection: kept\r\nTransfer-Encoding: chunked\r\n"
    head, framed = relay_response_head(raw)
    assert head == b"HTTP/1.1 200 OK\r\nX-Connection: kept\r\nTransfer-Encoding: chunked\r\n"
    assert framed


def test_unframed_http10_response_is_reported_and_upgraded_to_http11():
    head, framed = relay_response_head(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n")
    assert head == b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
    assert not framed


def test_plain_keep_alive_line_is_cut_without_touching_the_rest():
    raw = b"HTTP/1.1 204 No Content\r\nDate: x\r\nConnection: keep-alive\r\nProxy-Status: fine\r\n"
    head, framed = relay_response_head(raw)
    assert head == b"HTTP/1.1 204 No Content\r\nDate: x\r\nProxy-Status: fine\r\n"
    assert not framed
    head, _ = relay_response_head(b"HTTP/1.1 200 OK\r\nA: 1\r\nConnection: keep-alive\r\nB: 2\r\n")
    assert head == b"HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\n"


def test_long_header_names_a_client_makes_up_are_not_kept():
    """The table of header-name spellings lives as long as the process: 2048 made-up names of 64 KiB each
    would hold 128 MiB. Long names are looked up every time instead."""
    kept = len(REQUEST_KIND_BY_SPELLING)
    for index in range(100):
        assert learn_request_header(b"X-%05d-" % index + b"a" * 1000) == 0
    assert learn_request_header(b"HOST") != 0  # a short special name is still recognised
    assert len(REQUEST_KIND_BY_SPELLING) <= kept + 1
