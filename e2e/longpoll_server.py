"""A long-polling key server for the tests' edge cases: holds `If-None-Match`
of the current version for `Prefer: wait`, answers changes-only from any
version it has published, and can fail, be slow, forget its history or
answer changes on a base the filter does not hold."""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler

from demo_upstream import LoopbackServer


class LongPollServer(LoopbackServer):
    def __init__(self, port=0):
        super().__init__(port, _Handler)
        self.changed = threading.Condition(self.lock)
        self.sets = {}  # version -> (keys {id: record}, revoked set)
        self.version = 0
        self.mode = "ok"  # ok | error | wrong-base
        self.delay = 0.0  # seconds before every answer
        self.hits = []  # (monotonic time, If-None-Match or None, status)
        self.stopping = False
        self.log = {}  # version -> (base, changes) for one-entry changes, answered without a diff
        self.page_keys = 0  # whole answers in pages of this many keys (0: one answer)

    def publish(self, records, revoked=()):
        with self.lock:
            self.version += 1
            self.sets[str(self.version)] = ({r["id"]: r for r in records}, set(revoked))
            self.changed.notify_all()

    def replace(self, records, revoked=()):
        """Publishes a set with no history before it: every filter gets it whole."""
        with self.lock:
            self.version += 1
            self.sets = {str(self.version): ({r["id"]: r for r in records}, set(revoked))}
            self.log = {}
            self.changed.notify_all()

    def revoke(self, key_id):
        with self.lock:
            base = str(self.version)
            keys, revoked = self.sets[base]
            self.version += 1
            self.sets[str(self.version)] = (keys, revoked | {key_id})
            self.log[str(self.version)] = (base, {"revoke": [key_id]})
            self.changed.notify_all()

    def forget_history(self):
        with self.lock:
            current = str(self.version)
            self.sets = {current: self.sets[current]}

    def answers(self, status=None):
        with self.lock:
            return [h for h in self.hits if status is None or h[2] == status]

    def shutdown(self):
        with self.lock:
            self.stopping = True
            self.changed.notify_all()
        super().shutdown()

    def handle_error(self, request, client_address):
        # Envoy closing a held poll as it stops is no error.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def reply(self, held):
        """(status, body) for a filter holding `held`; under the lock."""
        current = str(self.version)
        keys, revoked = self.sets[current]
        if held == current:
            return 304, b""
        if self.mode == "wrong-base" and held is not None:
            changes = {"revoke": sorted(revoked)}
            return 200, json.dumps({"version": current, "base": "nonsense", "changes": changes}).encode()
        if current in self.log and self.log[current][0] == held:
            base, changes = self.log[current]
            return 200, json.dumps({"version": current, "base": base, "changes": changes}).encode()
        if held in self.sets:
            old_keys, old_revoked = self.sets[held]
            changes = {
                "upsert": [r for i, r in keys.items() if old_keys.get(i) != r],
                "remove": [i for i in old_keys if i not in keys],
                "revoke": sorted(revoked - old_revoked),
                "unrevoke": sorted(old_revoked - revoked),
            }
            return 200, json.dumps({"version": current, "base": held, "changes": changes}).encode()
        return self.page(current, 0)

    def page(self, version, offset):
        """(status, body) of the whole set's page from key `offset`; under the lock.
        A cursor of a version gone by gets the current one's page: the filter starts again."""
        keys, revoked = self.sets[str(self.version)]
        version = str(self.version)
        records = list(keys.values())
        answer = {"version": version}
        if self.page_keys and len(records) > self.page_keys:
            answer["keys"] = records[offset:offset + self.page_keys]
            if offset + self.page_keys < len(records):
                answer["next"] = f"{version}:{offset + self.page_keys}"
        else:
            answer["keys"] = records
        if offset == 0:
            answer["revoked"] = sorted(revoked)
        return 200, json.dumps(answer).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self):
        server = self.server
        if "?page=" in self.path:
            version, offset = self.path.split("?page=", 1)[1].replace("%3A", ":").split(":")
            with server.lock:
                status, body = server.page(version, int(offset))
                server.hits.append((time.monotonic(), "page", status))
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        tag = self.headers.get("if-none-match")
        held = tag.strip('"') if tag else None
        prefer = self.headers.get("prefer", "")
        wait = float(prefer.split("=", 1)[1]) if prefer.startswith("wait=") else 0
        if server.delay:
            time.sleep(server.delay)
        with server.lock:
            if wait and held == str(server.version) and server.mode != "error":
                server.changed.wait_for(lambda: held != str(server.version) or server.stopping, timeout=wait)
            if server.mode == "error":
                status, body = 500, b'{"error":"down"}'
            else:
                status, body = server.reply(held)
            server.hits.append((time.monotonic(), tag, status))
            etag = f'"{server.version}"'
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.send_header("etag", etag)
        if wait:
            self.send_header("preference-applied", f"wait={int(wait)}")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass
