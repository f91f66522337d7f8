"""pythrust's pass-through: a response the cache, X-Sendfile and compression leave alone is relayed as
the app sent it, with X-Cache and Vary added; header names count in any case, as HTTP has them."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.test_pythrust_features import fetch

# An app that answers raw bytes, so header names can be in any case (frameworks write canonical ones).
RAW_APP = r"""
import asyncio, os

ANSWERS = {
    b"/plain": b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5\r\n\r\nhello",
    b"/shouting": (
        b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: public, max-age=60\r\nVARY: Cookie\r\nX-CACHE: app\r\n"
        b"SET-COOKIE: session=secret\r\nContent-Length: 5\r\n\r\nhello"
    ),
    b"/per-request-id": (
        b"HTTP/1.1 200 OK\r\nCache-Control: public, max-age=60\r\nVary: X-Request-ID\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    ),
}


async def answer(reader, writer):
    while True:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            break
        writer.write(ANSWERS[head.split(b" ")[1]])
        await writer.drain()
    writer.close()


async def main():
    server = await asyncio.start_server(answer, "127.0.0.1", int(os.environ["PORT"]))
    print("app listening", flush=True)
    await server.serve_forever()


asyncio.run(main())
"""


async def start_raw_app(start_pythrust, tmp_path: Path):
    app = tmp_path / "raw_app.py"
    app.write_text(RAW_APP)
    thrust = await start_pythrust(sys.executable, str(app))
    await thrust.wait_for_line("app listening")
    return thrust


async def test_a_relayed_response_keeps_the_apps_head_and_gets_x_cache_and_vary(start_pythrust, tmp_path):
    thrust = await start_raw_app(start_pythrust, tmp_path)
    response = await fetch(thrust, "/plain")
    assert response.status == 200 and response.body == b"hello"
    names = [name.lower() for name, _ in response.headers]
    assert sorted(names) == ["connection", "content-length", "content-type", "vary", "x-cache"]
    assert response.header("Content-Type") == "image/png"
    assert (response.header("X-Cache"), response.header("Vary")) == ("miss", "Accept-Encoding")
    assert (await fetch(thrust, "/plain", method="POST")).header("X-Cache") == "bypass"


async def test_header_names_in_capitals_are_read_as_any_other(start_pythrust, tmp_path):
    thrust = await start_raw_app(start_pythrust, tmp_path)
    first = await fetch(thrust, "/shouting")
    second = await fetch(thrust, "/shouting")
    assert [value for name, value in first.headers if name.lower() == "x-cache"] == ["miss"]
    assert [value for name, value in first.headers if name.lower() == "vary"] == ["Cookie, Accept-Encoding"]
    assert not first.has("Set-Cookie"), "a stored response carries no one's cookie"
    assert (second.header("X-Cache"), second.body) == ("hit", b"hello")


async def test_vary_on_x_request_id_compares_what_the_client_sent(start_pythrust, tmp_path):
    """The engine makes up a request id when the client sent none; that made-up one is not the client's
    header, so clients without one share the cached answer."""
    thrust = await start_raw_app(start_pythrust, tmp_path)
    seen = [(await fetch(thrust, "/per-request-id")).header("X-Cache") for _ in range(3)]
    assert seen == ["miss", "hit", "hit"]
    assert (await fetch(thrust, "/per-request-id", headers={"X-Request-ID": "abc"})).header(
        "X-Cache"
    ) == "miss"
