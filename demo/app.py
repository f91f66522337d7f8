"""A tiny web app for the demo: answers `/up` and says which version served the page."""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(version: str) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path == "/up":
                body = b"OK\n"
            else:
                info = {
                    "version": version,
                    "path": self.path,
                    "forwarded_for": self.headers["X-Forwarded-For"],
                }
                body = (json.dumps(info) + "\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain" if self.path == "/up" else "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: pyproxy's access log already shows every request."""

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="v1")
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(args.version)).serve_forever()


if __name__ == "__main__":
    main()
