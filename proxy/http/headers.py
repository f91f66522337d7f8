"""Header names the data plane treats specially, and the rewriting of response heads.

Request headers are checked by length first: most have a length no special
name has, so they are forwarded without being lower-cased.
"""

# Request headers, lower-cased, mapped to what the client connection does with them.
HOST = 1
CONNECTION = 2
DROP = 3
TRANSFER_ENCODING = 4
UPGRADE = 5
FORWARDED_FOR = 6
FORWARDED_PROTO = 7
FORWARDED_HOST = 8
REQUEST_ID = 9
REQUEST_START = 10
USER_AGENT = 11
CONTENT_LENGTH = 12
KAMAL_TARGET = 13
PROXY_CONNECTION = 14  # dropped, but noted: llhttp reads it as a Connection header

REQUEST_SPECIAL = {
    b"host": HOST,
    b"connection": CONNECTION,
    b"keep-alive": DROP,
    b"proxy-connection": PROXY_CONNECTION,
    b"proxy-authorization": DROP,
    b"te": DROP,
    b"trailer": DROP,
    b"forwarded": DROP,
    b"transfer-encoding": TRANSFER_ENCODING,
    b"upgrade": UPGRADE,
    b"x-forwarded-for": FORWARDED_FOR,
    b"x-forwarded-proto": FORWARDED_PROTO,
    b"x-forwarded-host": FORWARDED_HOST,
    b"x-request-id": REQUEST_ID,
    b"x-request-start": REQUEST_START,
    b"user-agent": USER_AGENT,
    b"content-length": CONTENT_LENGTH,
    b"x-kamal-target": KAMAL_TARGET,
}
REQUEST_SPECIAL_LENGTHS = frozenset(len(name) for name in REQUEST_SPECIAL)

# Request header names as clients spell them, each with its REQUEST_SPECIAL kind (0: none), learnt as
# they arrive: a spelling seen before costs one dict lookup, not a length check and a lower-cased copy.
# Bounded: once a client inventing names has filled it, new spellings take the long way every time.
REQUEST_KIND_BY_SPELLING: dict[bytes, int] = {}
_MAX_SPELLINGS = 2048
_MAX_SPELLING_LENGTH = 64  # longer names are never kept: 2048 of 64 KiB each would hold 128 MiB


def learn_request_header(name: bytes) -> int:
    """The REQUEST_SPECIAL kind of a name not in REQUEST_KIND_BY_SPELLING (0: none), noted there."""
    kind = REQUEST_SPECIAL.get(name.lower(), 0) if len(name) in REQUEST_SPECIAL_LENGTHS else 0
    if len(name) <= _MAX_SPELLING_LENGTH and len(REQUEST_KIND_BY_SPELLING) < _MAX_SPELLINGS:
        REQUEST_KIND_BY_SPELLING[name] = kind
    return kind


# Response headers never relayed; Transfer-Encoding stays because the body is
# relayed with its framing unchanged.
RESPONSE_DROP = (b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"upgrade")


def relay_response_head(raw: bytes) -> tuple[bytes, bool]:
    """A target's response head made ready for the client, and whether it frames its body.

    `raw` is the status line and header lines as received, each ending in CRLF,
    without the blank line. Hop-by-hop headers (and any the Connection header
    names) are cut out of it, and an HTTP/1.0 status line becomes HTTP/1.1.
    The checks are substring tests on one lower-cased copy ("\r\n" anchors a
    header name): much cheaper than a Python call per header. They run on str
    because `bytes in bytes` first tries its argument as an int (CPython 3.11).
    """
    text = raw.decode("latin-1").lower()
    framed = "\r\ncontent-length:" in text or "\r\ntransfer-encoding:" in text
    if (
        "\r\nconnection:" in text
        or "\r\nkeep-alive:" in text
        or "\r\nproxy-" in text
        or "\r\nupgrade:" in text
    ):
        raw = _without_hop_headers(raw, text)
    if raw.startswith(b"HTTP/1.0"):
        raw = b"HTTP/1.1" + raw[8:]
    return raw, framed


def _without_hop_headers(raw: bytes, text: str) -> bytes:
    plain = text.find("\r\nconnection: keep-alive\r\n")
    if (
        plain >= 0
        and text.count("\r\nconnection:") == 1
        and not ("\r\nkeep-alive:" in text or "\r\nproxy-" in text or "\r\nupgrade:" in text)
    ):
        # The usual case (nginx, Node): one "Connection: keep-alive" line.
        return raw[: plain + 2] + raw[plain + 26 :]
    lines = raw.split(b"\r\n")
    names = [line.partition(b":")[0].strip().lower() for line in lines]
    drop = set(RESPONSE_DROP)
    for line, name in zip(lines, names, strict=True):
        if name == b"connection":
            drop.update(connection_tokens(line.partition(b":")[2]))
    kept = [lines[0]] + [
        line for line, name in zip(lines[1:-1], names[1:-1], strict=True) if name not in drop
    ]
    return b"\r\n".join(kept) + b"\r\n"


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a Connection header value."""
    return [token.strip().lower() for token in value.split(b",") if token.strip()]
