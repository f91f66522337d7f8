"""Header names the data plane treats specially, and status-line caching.

Checks are by length first: most headers have a length no special name has,
so they are forwarded without being lower-cased.
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

REQUEST_SPECIAL = {
    b"host": HOST,
    b"connection": CONNECTION,
    b"keep-alive": DROP,
    b"proxy-connection": DROP,
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
}
REQUEST_SPECIAL_LENGTHS = frozenset(len(name) for name in REQUEST_SPECIAL)

# Response headers never relayed; Transfer-Encoding stays because the body is
# relayed with its framing unchanged.
RESPONSE_DROP = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"upgrade"]
)
FRAMING = frozenset([b"content-length", b"transfer-encoding"])
RESPONSE_SPECIAL_LENGTHS = frozenset(len(name) for name in RESPONSE_DROP | FRAMING)

_status_lines: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """`HTTP/1.1 <status> <reason>\\r\\n`, cached for the few pairs a target uses."""
    key = (status, reason)
    line = _status_lines.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_status_lines) < 512:
            _status_lines[key] = line
    return line


def connection_tokens(value: bytes) -> list[bytes]:
    """The lower-cased tokens of a Connection header value."""
    return [token.strip().lower() for token in value.split(b",") if token.strip()]
