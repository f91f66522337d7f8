"""Response heads are relayed with hop-by-hop headers cut out and the framing detected."""

from proxy.http.headers import relay_response_head


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
