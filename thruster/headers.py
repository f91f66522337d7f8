"""Reading request headers and editing response heads, for pythrust's decisions.

The proxy engine keeps request headers as the raw lines it forwards and
relays response heads as raw bytes; pythrust needs a few of them by name
(Accept-Encoding, Range, validators, Cache-Control...), and to change a few.
"""

from __future__ import annotations


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


class ResponseHead:
    """A response head as a status line and header lines, to read and change by name."""

    __slots__ = ("lines", "status", "status_line")

    def __init__(self, raw: bytes) -> None:
        """`raw` ends with the blank line (as the engine writes heads to clients)."""
        lines = raw.rstrip(b"\r\n").split(b"\r\n")
        self.status_line = lines[0]
        self.status = int(lines[0][9:12])
        self.lines = lines[1:]

    def get(self, name: bytes) -> bytes | None:
        """The value of `name` (lower-case), repeated ones joined with ", "."""
        found = [value for line_name, value in self._pairs() if line_name == name]
        return b", ".join(found) if found else None

    def has(self, name: bytes) -> bool:
        return any(line_name == name for line_name, _ in self._pairs())

    def remove(self, *names: bytes) -> None:
        """Drop every line of the given lower-case names."""
        self.lines = [line for line in self.lines if line.partition(b":")[0].strip().lower() not in names]

    def set(self, name: bytes, value: bytes) -> None:
        """Replace `name` (given in its canonical case) with one line."""
        self.remove(name.lower())
        self.lines.append(name + b": " + value)

    def add_vary(self, token: bytes) -> None:
        """Merge `token` into Vary (thruster replaced the app's Vary instead: a fault fixed here)."""
        current = self.get(b"vary")
        if current is None:
            self.lines.append(b"Vary: " + token)
        elif token.lower() not in [item.strip().lower() for item in current.split(b",")]:
            self.set(b"Vary", current + b", " + token)

    def set_status(self, status: int, reason: bytes) -> None:
        self.status = status
        self.status_line = b"HTTP/1.1 %d %s" % (status, reason)

    def to_bytes(self, tail: bytes = b"\r\n") -> bytes:
        """The head, ending with `tail`: the blank line, or the connection headers and the blank line."""
        return b"\r\n".join((self.status_line, *self.lines)) + b"\r\n" + tail

    def _pairs(self) -> list[tuple[bytes, bytes]]:
        pairs = []
        for line in self.lines:
            name, _, value = line.partition(b":")
            pairs.append((name.strip().lower(), value.strip()))
        return pairs
