"""A key server and JWKS server for the tests: serves documents it is told to,
fails or hangs on demand, supports ETag, and counts every fetch."""

import json
import sys
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "envoy"))
from demo_upstream import LoopbackServer  # noqa: E402


class KeyServer(LoopbackServer):
    def __init__(self):
        super().__init__(0, _Handler)
        self.documents = {}  # path -> dict
        self.mode = "ok"  # ok | error | garbage | hang
        self.hits = []  # (monotonic time, path)
        self.versions = 0

    def publish(self, path, document):
        with self.lock:
            self.versions += 1
            self.documents[path] = dict(document)

    def hits_on(self, path, since=0.0):
        with self.lock:
            return [t for t, p in self.hits if p == path and t >= since]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        server = self.server
        with server.lock:
            server.hits.append((time.monotonic(), self.path))
            mode = server.mode
            document = server.documents.get(self.path)
        if mode == "hang":
            time.sleep(8)
            return
        if mode == "error" or document is None:
            return self._send(500, b'{"error":"down"}')
        if mode == "garbage":
            return self._send(200, b'{"version": "x", "keys": [ {"id": "broken"')
        body = json.dumps(document).encode()
        etag = f'"{hash(body) & 0xffffffff:x}"'
        if self.headers.get("if-none-match") == etag:
            return self._send(304, b"", etag)
        self._send(200, body, etag)

    def _send(self, status, body, etag=None):
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        if etag:
            self.send_header("etag", etag)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def add_cluster(name, port):
    """An Envoy config edit adding (or replacing) a static cluster `name` on 127.0.0.1:`port`."""
    def edit(config):
        clusters = config["static_resources"]["clusters"]
        clusters[:] = [c for c in clusters if c["name"] != name]
        clusters.append({
            "name": name,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]},
        })
    return edit
