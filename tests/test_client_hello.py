"""Reading the server name and offered protocols from a real ClientHello, as the HTTPS listener does."""

from __future__ import annotations

import contextlib
import ssl

from proxy.http.tlslistener import INCOMPLETE, ClientHello, read_client_hello


def client_hello(server_name: str | None, alpn: list[str]) -> bytes:
    """The first bytes a real TLS client (OpenSSL via the ssl module) sends."""
    context = ssl.create_default_context()
    context.check_hostname = server_name is not None
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):  # it waits for the server: the hello is out
        tls.do_handshake()
    return outgoing.read()


def test_server_name_and_protocols_are_read():
    hello = read_client_hello(client_hello("App.Example.test", ["h2", "http/1.1", "acme-tls/1"]))
    assert hello == ClientHello("app.example.test", (b"h2", b"http/1.1", b"acme-tls/1"))


def test_hello_without_sni_or_alpn():
    assert read_client_hello(client_hello(None, [])) == ClientHello(None, ())


def test_a_hello_cut_short_asks_for_more():
    data = client_hello("app.test", ["h2"])
    assert read_client_hello(data[:3]) is INCOMPLETE
    assert read_client_hello(data[: len(data) // 2]) is INCOMPLETE


def test_not_tls_or_malformed_reads_as_nothing():
    assert read_client_hello(b"GET / HTTP/1.1\r\n\r\n") == ClientHello(None, ())
    broken = bytearray(client_hello("app.test", ["h2"]))
    broken[5] = 2  # not a ClientHello
    assert read_client_hello(bytes(broken)) == ClientHello(None, ())
    assert read_client_hello(b"\x16\x03\x01\x00\x04\x01\x00\x00\xff") == ClientHello(None, ())
