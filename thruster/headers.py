"""Reading request headers and editing response heads, for pythrust's decisions.

The proxy engine keeps request headers as the raw lines it forwards and
relays response heads as raw bytes; pythrust needs a few of them by name
(Accept-Encoding, Range, validators, Cache-Control...), and to change a few.
Neither side is split into lines: a name is found by one C-level search of a
lower-cased copy of the block (`\\r\\n` anchors a header name), as the
engine's own relay_response_head does, and only a name that is there costs
a slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.http.request import Request

# Headers the engine keeps apart from the forwarded lines (proxy/http/headers.py), as Request attributes.
_KEPT_APART = {
    b"host": "host",
    b"user-agent": "user_agent",
    b"x-forwarded-for": "xff",
    b"x-forwarded-proto": "xfp",
    b"x-forwarded-host": "xfh",
    b"x-request-id": "request_id",
}


def request_headers(lines: list[bytes]) -> dict[bytes, bytes]:
    """The forwarded header lines (`Name: value\\r\\n`; [0] is the request line) by lower-case name.

    Repeated headers are joined with ", " as RFC 9110 allows for list headers.
    """
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        value = value.strip()
        previous = headers.get(name)
        headers[name] = value if previous is None else previous + b", " + value
    return headers


def _value(block: bytes, lowered: bytes, name: bytes) -> bytes | None:
    """The value of `name` (lower-case) in `block` (`\\r\\nName: value` lines, ending in CRLF), repeated
    ones joined with ", "."""
    key = b"\r\n" + name + b":"
    start = lowered.find(key)
    if start < 0:
        return None
    values = []
    while start >= 0:
        start += len(key)
        end = lowered.find(b"\r\n", start)
        values.append(block[start:end].strip())
        start = lowered.find(key, end)
    return values[0] if len(values) == 1 else b", ".join(values)


class RequestHeaders:
    """A request's headers by lower-case name, as the client sent them (the engine's kept-apart ones
    too, so they count for Vary like any other), read when asked for.

    Made when the request is routed: the lines added for the app after that (X-Sendfile-Type) are not
    the client's.
    """

    __slots__ = ("block", "lowered", "request", "request_id")

    def __init__(self, request: Request) -> None:
        self.request = request
        # The engine makes up an X-Request-ID after routing when the client sent none: the client's is
        # the one a cached answer's `Vary: X-Request-ID` must compare.
        self.request_id = request.request_id
        self.block = b"\r\n" + b"".join(request.headers)  # [0], the request line, is still empty
        self.lowered = self.block.lower()

    def get(self, name: bytes) -> bytes | None:
        if name == b"x-request-id":
            return self.request_id or None
        attribute = _KEPT_APART.get(name)
        if attribute is not None:
            return getattr(self.request, attribute) or None
        return _value(self.block, self.lowered, name)

    def __contains__(self, name: bytes) -> bool:
        if name in _KEPT_APART:
            return self.get(name) is not None
        return self.lowered.find(b"\r\n" + name + b":") >= 0


class ResponseHead:
    """A response head as a status line and header lines, to read and change by name."""

    __slots__ = ("block", "lowered", "status", "status_line")

    def __init__(self, raw: bytes) -> None:
        """`raw` ends with the blank line (as the engine writes heads to clients)."""
        end = raw.find(b"\r\n")
        self.status_line = raw[:end]
        self.status = int(raw[9:12])
        self._set_block(raw[end:-2])

    def _set_block(self, block: bytes) -> None:
        self.block = block  # `\r\nName: value` per header line, then CRLF ("\r\n" alone: none)
        self.lowered = block.lower()

    def get(self, name: bytes) -> bytes | None:
        """The value of `name` (lower-case), repeated ones joined with ", "."""
        return _value(self.block, self.lowered, name)

    def has(self, name: bytes) -> bool:
        return self.lowered.find(b"\r\n" + name + b":") >= 0

    def remove(self, *names: bytes) -> None:
        """Drop every line of the given lower-case names."""
        block, lowered = self.block, self.lowered
        for name in names:
            key = b"\r\n" + name + b":"
            start = lowered.find(key)
            while start >= 0:
                end = lowered.find(b"\r\n", start + len(key))
                block, lowered = block[:start] + block[end:], lowered[:start] + lowered[end:]
                start = lowered.find(key, start)
        self.block, self.lowered = block, lowered

    def set(self, name: bytes, value: bytes) -> None:
        """Replace `name` (given in its canonical case) with one line."""
        self.remove(name.lower())
        self.append(name, value)

    def append(self, name: bytes, value: bytes) -> None:
        """Add a line (the head holds no `name` yet, or may hold it twice)."""
        line = name + b": " + value + b"\r\n"
        self.block += line
        self.lowered += line.lower()

    def copy(self) -> ResponseHead:
        """Another head with the same status and lines, to change apart from this one."""
        other = ResponseHead.__new__(ResponseHead)
        other.status_line, other.status, other.block, other.lowered = (
            self.status_line,
            self.status,
            self.block,
            self.lowered,
        )
        return other

    def clear(self) -> None:
        """Drop every header line, keeping the status."""
        self._set_block(b"\r\n")

    def lines(self) -> list[bytes]:
        """The header lines, without their CRLF."""
        return self.block[2:-2].split(b"\r\n") if len(self.block) > 2 else []

    def add_vary(self, token: bytes, current: bytes | None) -> None:
        """Merge `token` into Vary, whose `current` value the caller has read (thruster replaced the
        app's Vary instead: a fault fixed here)."""
        if current is None:
            self.append(b"Vary", token)
        elif token.lower() not in [item.strip().lower() for item in current.split(b",")]:
            self.set(b"Vary", current + b", " + token)

    def set_status(self, status: int, reason: bytes) -> None:
        self.status = status
        self.status_line = b"HTTP/1.1 %d %s" % (status, reason)

    def to_bytes(self, tail: bytes = b"\r\n") -> bytes:
        """The head, ending with `tail`: the blank line, or the connection headers and the blank line."""
        return self.status_line + self.block + tail
