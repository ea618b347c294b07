"""Key sets at scale (`make bench-keys`): Envoy's memory and CPU per request
with 1,000 to 1,000,000 fetched keys, at --concurrency 2 and 8.

A long-polling test server serves the set in pages of PAGE keys; Envoy
answers requests itself (no upstream). For each size and concurrency:

- RSS: Envoy's resident memory once the set is live, and its growth over
  the same Envoy with an empty set;
- first load: from Envoy ready to the first 200 for a key of the last page;
- CPU µs per request: Envoy's user + system CPU (from /proc/<pid>/stat)
  over REQUESTS x-api-key requests with distinct keys drawn from the whole
  set, on several keep-alive connections, divided by REQUESTS;
- revocation: from the server's change to the first 403 (median of a few);
- resync: a new version sent whole (all pages again, the spare bank), from
  the server's change to the first 200 for a key only it has; and the RSS
  after it.

Sizes and concurrencies can be narrowed: BENCH_SIZES=1000,100000
BENCH_CONCURRENCY=2. EDGE_AUTH_BUILD=dynamic measures the native build.
"""

import hashlib
import hmac
import http.client
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import BUILD, TEST_PEPPER, Envoy, start_upstream  # noqa: E402
from jwt_in_envoy import answer_directly  # noqa: E402
from key_server import add_cluster  # noqa: E402
from longpoll_server import LongPollServer  # noqa: E402

SIZES = [int(s) for s in os.environ.get("BENCH_SIZES", "1000,10000,100000,1000000").split(",")]
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "2,8").split(",")]
PAGE = 50_000  # keys per answer: about 6 MB, well under the 32 MiB cap
REQUESTS = 20_000
CONNECTIONS = 4
REVOCATIONS = 5
PATH = "/v1/edge/keys"
TICKS = os.sysconf("SC_CLK_TCK")


def key(i):
    return f"sk_live_acme_Scale{i:08d}"


def records(n):
    pepper = TEST_PEPPER.encode()
    return [{"id": f"key_{i}", "hash": hmac.new(pepper, key(i).encode(), hashlib.sha256).hexdigest(),
             "org": "org_1", "account": "acme", "scopes": ["a:read"]} for i in range(n)]


def rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_s(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def status(conn, k):
    conn.request("GET", "/x", headers={"x-api-key": k})
    resp = conn.getresponse()
    resp.read()
    return resp.status


def start(server, concurrency):
    policy = {"api_keys": {"source": {"cluster": "keyserver", "path": PATH, "refresh_s": 30}}}

    def edit(config):
        add_cluster("keyserver", server.port)(config)
        answer_directly(config)

    return Envoy(policy, UPSTREAM, concurrency=concurrency, edit=edit).wait_ready(timeout=60)


def wait_status(conn, k, want, timeout):
    start = time.monotonic()
    while status(conn, k) != want:
        if time.monotonic() - start > timeout:
            raise SystemExit(f"{k}: never {want}")
        time.sleep(0.002)
    return time.monotonic() - start


def cpu_per_request(envoy, size):
    rng = random.Random(size)
    picks = [key(rng.randrange(size)) for _ in range(REQUESTS)]
    conns = [http.client.HTTPConnection("127.0.0.1", envoy.port) for _ in range(CONNECTIONS)]
    for conn in conns:  # warm up
        for k in picks[:200]:
            status(conn, k)
    share = REQUESTS // CONNECTIONS
    bad = []

    def run(j):
        for k in picks[j * share:(j + 1) * share]:
            if status(conns[j], k) != 200:
                bad.append(k)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(CONNECTIONS)]
    before = cpu_s(envoy.proc.pid)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    used = cpu_s(envoy.proc.pid) - before
    if bad:
        raise SystemExit(f"{len(bad)} keys refused, e.g. {bad[0]}")
    return used / (share * CONNECTIONS) * 1e6


def measure(size, all_records, concurrency):
    server = LongPollServer().start()
    server.page_keys = PAGE
    server.publish(all_records)
    try:
        empty = LongPollServer().start()
        empty.publish([])
        try:
            envoy = start(empty, concurrency)
            time.sleep(1.5)
            rss_empty = rss_mb(envoy.proc.pid)
            envoy.stop()
        finally:
            empty.shutdown()
        envoy = start(server, concurrency)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", envoy.port)
            first_load = wait_status(conn, key(size - 1), 200, 300)
            time.sleep(1.5)
            rss = rss_mb(envoy.proc.pid)
            per_request = cpu_per_request(envoy, size)
            revocations = []
            for n in range(REVOCATIONS):
                time.sleep(0.3)  # the long poll settles on the current version
                i = n * (size // REVOCATIONS)
                started = time.monotonic()
                server.revoke(f"key_{i}")
                wait_status(conn, key(i), 403, 10)
                revocations.append((time.monotonic() - started) * 1e3)
            # A full resync: a new version the server cannot send as changes.
            extra = {"id": "key_extra", "hash": hmac.new(TEST_PEPPER.encode(), key(size).encode(),
                                                       hashlib.sha256).hexdigest(), "org": "org_1", "account": "acme"}
            time.sleep(0.3)
            started = time.monotonic()
            server.replace(all_records + [extra])
            wait_status(conn, key(size), 200, 300)
            resync = time.monotonic() - started
            time.sleep(1.5)
            rss_after = rss_mb(envoy.proc.pid)
            return rss_empty, rss, first_load, per_request, statistics.median(revocations), resync, rss_after
        finally:
            envoy.stop()
    finally:
        server.shutdown()


def main():
    print(f"build {BUILD}; pages of {PAGE} keys; {REQUESTS} requests with distinct keys; a loaded 2-core machine")
    print(f"{'keys':>9} {'conc':>4} {'RSS empty MB':>12} {'RSS MB':>8} {'growth MB':>9} "
          f"{'first load s':>12} {'CPU µs/req':>10} {'revoke ms':>9} {'resync s':>8} {'RSS after MB':>12}")
    for size in SIZES:
        all_records = records(size)
        for concurrency in CONCURRENCY:
            rss_empty, rss, first_load, per_request, revoke, resync, rss_after = measure(size, all_records, concurrency)
            print(f"{size:>9} {concurrency:>4} {rss_empty:>12.0f} {rss:>8.0f} {rss - rss_empty:>9.0f} "
                  f"{first_load:>12.2f} {per_request:>10.1f} {revoke:>9.1f} {resync:>8.2f} {rss_after:>12.0f}",
                  flush=True)


UPSTREAM = start_upstream()

if __name__ == "__main__":
    try:
        main()
    finally:
        UPSTREAM.shutdown()
