"""X-Accel-Redirect, nginx's form of X-Sendfile: the app names a URI, not a path.

Rails (Rack::Sendfile) sends `X-Accel-Redirect: /files/report.pdf` when the
request says `X-Sendfile-Type: X-Accel-Redirect` and carries an
`X-Accel-Mapping: /var/www/storage/=/files/` header telling it which
directory stands behind which URI prefix; nginx then maps the URI back to
the file through an internal location. With X_ACCEL_MAPPING set (Rack's own
`DIR=URI` pairs, comma-separated) pythrust tells the app both headers and
maps the answers back itself: the URI is percent-decoded, matched against
the longest prefix, and refused when it climbs out of the directory (`..`)
or holds a NUL. Symlinks inside a mapped directory are followed, as nginx's
`alias` does, unless X_SENDFILE_ROOTS says otherwise.
"""

from __future__ import annotations

import os
from urllib.parse import unquote_to_bytes


class AccelMapping:
    def __init__(self, pairs: tuple[str, ...]) -> None:
        mappings = []
        self.ignored: list[str] = []  # entries that are not DIR=URI with both absolute
        for pair in pairs:
            directory, _, prefix = (part.strip() for part in pair.partition("="))
            if not directory.startswith("/") or not prefix.startswith("/"):
                self.ignored.append(pair)
                continue
            mappings.append((os.fsencode(prefix.rstrip("/") + "/"), os.fsencode(directory.rstrip("/") + "/")))
        self.mappings = sorted(mappings, key=lambda mapping: -len(mapping[0]))  # the longest prefix first
        self.directories = tuple(os.fsdecode(directory) for _, directory in self.mappings)
        # What the app is told, in Rack::Sendfile's format.
        self.request_lines = b"X-Sendfile-Type: X-Accel-Redirect\r\nX-Accel-Mapping: %s\r\n" % b", ".join(
            directory + b"=" + prefix for prefix, directory in self.mappings
        )

    def __bool__(self) -> bool:
        return bool(self.mappings)

    def path_for(self, uri: bytes) -> str | None:
        """The file behind `uri`; None when no mapping covers it or it leaves its directory."""
        target = unquote_to_bytes(uri.partition(b"?")[0])
        for prefix, directory in self.mappings:
            if target.startswith(prefix):
                rest = target[len(prefix) :]
                if b"\0" in rest or b".." in rest.replace(b"\\", b"/").split(b"/"):
                    return None
                return os.fsdecode(directory + rest.lstrip(b"/"))
        return None
