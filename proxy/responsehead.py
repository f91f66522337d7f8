"""Per-request rewrites of a target's response head (`Request.head_filter`), for the services that ask:
writer affinity (spec 7.3), cookie scoping (spec 4.7) and response headers for the access log (spec 13).

`head` is the status line and header lines as relayed, each ending in CRLF, without the blank line.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

from proxy.http.request import Request
from proxy.logheaders import LogHeaders
from proxy.routing import strip_port

WRITER_COOKIE = b"kamal-writer"
_WRITER_AFFINITY = re.compile(rb"\r\nx-writer-affinity[ \t]*:[ \t]*([^\r]*)", re.IGNORECASE)
_SET_COOKIE = re.compile(rb"\r\n(set-cookie[ \t]*:[ \t]*)([^\r]*)", re.IGNORECASE)


class HeadRewrite:
    """What one request's response head gets; built by the dispatcher only for services that need it."""

    __slots__ = ("affinity_ms", "log_headers", "prefix", "strip_affinity")

    def __init__(
        self,
        log_headers: LogHeaders | None = None,
        strip_affinity: bool = False,
        affinity_ms: int = 0,
        prefix: bytes = b"",
    ) -> None:
        self.log_headers = log_headers
        self.strip_affinity = strip_affinity  # the service has read targets: X-Writer-Affinity never leaves
        self.affinity_ms = affinity_ms  # > 0: a write, whose client should stick to the writers this long
        self.prefix = prefix  # non-empty: rewrite Set-Cookie paths under this stripped prefix

    def __call__(self, request: Request, head: bytes) -> bytes:
        if self.log_headers is not None:
            self.log_headers.note_response(request, head)
        if self.strip_affinity:
            head = self._writer_affinity(head)
        if self.prefix:
            host = strip_port(request.host.decode("latin-1")).lower().encode("latin-1")
            head = _SET_COOKIE.sub(lambda found: _scoped(found, self.prefix, host), head)
        return head

    def _writer_affinity(self, head: bytes) -> bytes:
        found = _WRITER_AFFINITY.findall(head)
        wanted = self.affinity_ms > 0 and not any(value.strip().lower() == b"false" for value in found)
        if found:
            head = _WRITER_AFFINITY.sub(b"", head)
        if wanted:
            head += writer_cookie(self.affinity_ms)
        return head


def writer_cookie(affinity_ms: int, now: float | None = None) -> bytes:
    """`Set-Cookie: kamal-writer=<expiry in unix ms>`: reads of this client go to the writers until then."""
    now = time.time() if now is None else now
    expires_ms = int(now * 1000) + affinity_ms
    expires = formatdate(expires_ms / 1000 + 1, usegmt=True).encode()
    return b"Set-Cookie: %s=%d; Path=/; Expires=%s; HttpOnly\r\n" % (WRITER_COOKIE, expires_ms, expires)


def _scoped(found: re.Match[bytes], prefix: bytes, host: bytes) -> bytes:
    """One Set-Cookie line with its Path moved under `prefix`, unless it is for another domain."""
    name, value = found.group(1), found.group(2)
    parts = [part.strip() for part in value.split(b";")]
    if b"=" not in parts[0]:
        return found.group(0)  # not a cookie we can read: left as it is
    path = b"/"
    kept = [parts[0]]
    for part in parts[1:]:
        key, _, attribute = part.partition(b"=")
        key = key.strip().lower()
        if key == b"domain":
            domain = attribute.strip().lstrip(b".").lower()
            if domain and domain != host:
                return found.group(0)
        if key == b"path":
            path = attribute.strip() or b"/"
        else:
            kept.append(part)
    scoped = prefix + b"/" + path.strip(b"/")
    kept.insert(1, b"Path=" + scoped.rstrip(b"/") if scoped != b"/" else b"Path=/")
    return b"\r\n" + name + b"; ".join(kept)
