"""Revocation latency (`make bench-envoy`): from the key server's change to
the first 403 on every worker of two Envoys (--concurrency 2 each), with
10,000 and 100,000 keys and `refresh_s: 30`, through `edge-auth keys serve`
(the change is the key-set file's atomic replacement) and through a
long-polling test server (the change is made in memory).

Every worker is watched through several keep-alive connections per Envoy,
each polled by its own thread; a revocation's latency is the time until the
last of them answered 403. Prints p50/p99/max per size and server.
"""

import argparse
import hashlib
import hmac
import http.client
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import TEST_PEPPER, Envoy, start_upstream  # noqa: E402
from jwt_in_envoy import answer_directly  # noqa: E402
from key_server import add_cluster  # noqa: E402
from keys_serve import PATH, KeysServe  # noqa: E402
from longpoll_server import LongPollServer  # noqa: E402

CONNECTIONS = 6  # per Envoy: Envoy spreads connections over its workers
REVOCATIONS = {10_000: 40, 100_000: 20}


def key(i):
    return f"sk_live_acme_Bench{i:08d}"


def records(n):
    pepper = TEST_PEPPER.encode()
    return [{"id": f"key_{i}", "hash": hmac.new(pepper, key(i).encode(), hashlib.sha256).hexdigest(),
             "org": "org_1", "account": "acme"} for i in range(n)]


def status(conn, k):
    conn.request("GET", "/x", headers={"x-api-key": k})
    resp = conn.getresponse()
    resp.read()
    return resp.status


class FileChanges:
    """keys serve: each revocation rewrites the file (serialised beforehand)."""

    def __init__(self, all_records):
        self.server = KeysServe(all_records)
        self.server.start(timeout=120)
        import json
        self.prefix = '{"version":"b","keys":' + json.dumps(all_records) + ',"revoked":'
        self.revoked = []
        self.port = self.server.port

    def revoke(self, key_id):
        import json
        self.revoked.append(key_id)
        text = self.prefix + json.dumps(self.revoked) + "}"
        tmp = self.server.dir / ".next"
        # Written and synced first, as atomic writers do: the rename is the
        # change (the clock includes the filesystem's rename, not the write).
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        start = time.monotonic()
        os.replace(tmp, self.server.file)
        return start

    def stop(self):
        self.server.stop()


class MemoryChanges:
    def __init__(self, all_records):
        self.server = LongPollServer().start()
        self.server.publish(all_records)
        self.port = self.server.port

    def revoke(self, key_id):
        start = time.monotonic()
        self.server.revoke(key_id)
        return start

    def stop(self):
        self.server.shutdown()


def measure(size, all_records, make_server):
    server = make_server(all_records)
    upstream = start_upstream()
    policy = {"api_keys": {"source": {"cluster": "keyserver", "path": PATH, "refresh_s": 30}}}

    def edit(config):
        add_cluster("keyserver", server.port)(config)
        answer_directly(config)

    envoys = [Envoy(policy, upstream, edit=edit).wait_ready() for _ in range(2)]
    try:
        conns = [http.client.HTTPConnection("127.0.0.1", e.port) for e in envoys for _ in range(CONNECTIONS)]
        deadline = time.monotonic() + 120
        for conn in conns:
            while status(conn, key(0)) != 200:
                if time.monotonic() > deadline:
                    raise SystemExit("key set never loaded")
                time.sleep(0.05)
        time.sleep(1)  # the long polls settle on the loaded version
        latencies = []
        for n in range(REVOCATIONS[size]):
            i = 100 + n
            seen = [None] * len(conns)

            def watch(j, conn=None):
                conn = conns[j]
                while status(conn, key(i)) != 403:
                    pass
                seen[j] = time.monotonic()

            threads = [threading.Thread(target=watch, args=(j,)) for j in range(len(conns))]
            for t in threads:
                t.start()
            start = server.revoke(f"key_{i}")
            for t in threads:
                t.join(60)
            latencies.append((max(seen) - start) * 1000)
            time.sleep(0.15)
        return latencies
    finally:
        for e in envoys:
            e.stop()
        upstream.shutdown()
        server.stop()


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


SERVERS = {"keys-serve": ("keys serve (file)", FileChanges),
           "test-server": ("long-poll test server", MemoryChanges)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="key-set sizes, comma-separated (10000, 100000)")
    parser.add_argument("--servers", default="keys-serve,test-server", help="comma-separated: " + ", ".join(SERVERS))
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    servers = [SERVERS[s] for s in args.servers.split(",")]
    print("refresh_s 30; two Envoys, --concurrency 2 each; latency to the last worker's first 403")
    print(f"{'keys':>8} {'server':<22} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for size in sizes:
        all_records = records(size)
        for name, make in servers:
            ms = measure(size, all_records, make)
            print(f"{size:>8} {name:<22} {statistics.median(ms):>8.1f} {pct(ms, 99):>8.1f} {max(ms):>8.1f}",
                  flush=True)


if __name__ == "__main__":
    main()
