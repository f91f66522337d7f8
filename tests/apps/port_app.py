"""A tiny app for the pythrust tests: listens on $PORT, says so on stdout, obeys a few test paths.

GET /          -> "hello on <PORT>"
GET /exit?code -> exits with that code after answering
POST /         -> "got <n> bytes" (Content-Length or chunked)
SIGTERM        -> exits with $EXIT_ON_TERM (default 0)
START_DELAY    -> seconds to wait before listening (the app is "booting")
"""

import http.server
import os
import signal
import sys
import threading
import time
import urllib.parse

port = int(os.environ["PORT"])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        body = f"hello on {port}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()
        if url.path == "/exit":
            code = int(urllib.parse.parse_qs(url.query)["code"][0])
            threading.Thread(target=lambda: os._exit(code)).start()

    def do_POST(self) -> None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            size = 0
            while chunk := int(self.rfile.readline().strip(), 16):
                size += len(self.rfile.read(chunk + 2)) - 2
            self.rfile.readline()
        else:
            size = len(self.rfile.read(int(self.headers["Content-Length"])))
        body = f"got {size} bytes".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


signal.signal(signal.SIGTERM, lambda *_: os._exit(int(os.environ.get("EXIT_ON_TERM", "0"))))
time.sleep(float(os.environ.get("START_DELAY", "0")))
server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"app listening on {port} pid {os.getpid()}", flush=True)
sys.stdout.flush()
server.serve_forever()
