"""Revocation latency through a key server (`make bench-envoy`).

Serves 10,000 keys, then revokes 20 of them one at a time and measures how
long until Envoy refuses each (polling every 2 ms), at several refresh
intervals. Also times an API-key request (over a public-route baseline, Envoy
answering itself) with the 10,000 keys loaded.
"""

import hashlib
import hmac
import http.client
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import TEST_PEPPER, Envoy, start_upstream  # noqa: E402
from jwt_in_envoy import answer_directly  # noqa: E402
from key_server import KeyServer, add_cluster  # noqa: E402

KEYS = 10_000
PATH = "/v1/edge/keys"


def key(i):
    return f"sk_live_acme_Bench{i:08d}"


def records():
    pepper = TEST_PEPPER.encode()
    return [{"id": f"key_{i}", "hash": hmac.new(pepper, key(i).encode(), hashlib.sha256).hexdigest(),
             "org": "org_1", "account": "acme"} for i in range(KEYS)]


def status(conn, k):
    conn.request("GET", "/x", headers={"x-api-key": k})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def request_cost_us(conn):
    """Median µs an API-key request costs over the public route, 10,000 keys
    loaded; the two kinds are interleaved after a warm-up, so drift hits both."""
    def once(path, headers):
        start = time.perf_counter_ns()
        conn.request("GET", path, headers=headers)
        conn.getresponse().read()
        return time.perf_counter_ns() - start

    keyed, public = [], []
    for i in range(2300):
        a, b = once("/x", {"x-api-key": key(5000)}), once("/public", {})
        if i >= 300:
            keyed.append(a)
            public.append(b)
    return (statistics.median(keyed) - statistics.median(public)) / 1000


def measure(refresh, all_records):
    server = KeyServer().start()
    server.publish(PATH, {"version": "0", "keys": all_records})
    upstream = start_upstream()
    policy = {"api_keys": {"source": {"cluster": "keyserver", "path": PATH, "refresh_s": refresh}},
              "routes": [{"prefix": "/public", "auth": "none"}]}

    def edit(config):
        add_cluster("keyserver", server.port)(config)
        answer_directly(config)

    envoy = Envoy(policy, upstream, edit=edit).wait_ready()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port)
        deadline = time.monotonic() + 30
        while status(conn, key(0)) != 200:
            if time.monotonic() > deadline:
                raise SystemExit("key set never loaded")
            time.sleep(0.05)
        latencies = []
        revoked = []
        for n in range(20):
            i = 100 + n
            revoked.append(f"key_{i}")
            time.sleep(refresh * 0.37)  # land at different points of the interval
            start = time.monotonic()
            server.publish(PATH, {"version": str(n + 1), "keys": all_records, "revoked": revoked})
            while status(conn, key(i)) != 403:
                time.sleep(0.002)
            latencies.append((time.monotonic() - start) * 1000)
        fetches = len(server.hits_on(PATH))
        return statistics.median(latencies), max(latencies), request_cost_us(conn), fetches
    finally:
        envoy.stop()
        upstream.shutdown()
        server.shutdown()


def main():
    all_records = records()
    print(f"{KEYS} keys; 20 revocations each; Envoy --concurrency 2")
    print(f"{'refresh_s':>9} {'median ms':>10} {'max ms':>8} {'µs per API-key request':>23} {'fetches':>8}")
    for refresh in (1.0, 0.05):
        median, worst, request_us, fetches = measure(refresh, all_records)
        print(f"{refresh:>9} {median:>10.0f} {worst:>8.0f} {request_us:>23.0f} {fetches:>8}")


if __name__ == "__main__":
    main()
