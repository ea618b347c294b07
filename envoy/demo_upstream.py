"""A demo upstream: answers every request with a JSON echo of what it received.

The identity headers edge-auth injected are visible in the echo, which is how
`make run` shows the filter working. It also plays the key server: GET
/edge/keyset.json answers envoy/keyset.json. The tests use the same server and read
`received` to prove that denied requests never arrived.
"""

import json
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

KEYSET_PATH = "/edge/keyset.json"
KEYSET_FILE = Path(__file__).resolve().parent / "keyset.json"


class LoopbackServer(ThreadingHTTPServer):
    """A threaded HTTP server on 127.0.0.1 that can run in the background."""

    daemon_threads = True

    def __init__(self, port, handler):
        super().__init__(("127.0.0.1", port), handler)
        self.lock = threading.Lock()

    @property
    def port(self):
        return self.server_address[1]

    def start(self):
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self


class Upstream(LoopbackServer):
    def __init__(self, port=0):
        super().__init__(port, _Handler)
        self.received = []  # (method, path, [(name, value)]) in arrival order

    def requests(self):
        with self.lock:
            return list(self.received)

    def clear(self):
        with self.lock:
            self.received.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes; without this, Nagle and delayed
    # ACKs add ~40 ms to every keep-alive response.
    disable_nagle_algorithm = True

    def _echo(self):
        if self.path == KEYSET_PATH and KEYSET_FILE.exists():
            return self._keyset()
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        with self.server.lock:
            self.server.received.append((self.command, self.path, headers))
        body = json.dumps(
            {"method": self.command, "path": self.path, "headers": dict(headers)}, indent=2
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _keyset(self):
        """The demo key server: envoy/keyset.json, read afresh each time so
        edits show up at the next refresh."""
        body = KEYSET_FILE.read_bytes()
        etag = f'"{zlib.crc32(body):08x}"'
        if self.headers.get("if-none-match") == etag:
            body, status = b"", 304
        else:
            status = 200
        self.send_response(status)
        self.send_header("etag", etag)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _echo

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    server = Upstream(int(sys.argv[1]) if len(sys.argv) > 1 else 8081)
    print(f"demo upstream on 127.0.0.1:{server.port}", flush=True)
    server.serve_forever()
