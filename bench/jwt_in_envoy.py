"""JWT verification cost inside Envoy's wasm runtime (`make bench-envoy`).

Runs the module in the pinned Envoy (--concurrency 1) and times requests over
one keep-alive connection, Envoy answering itself: a public route (no auth work), an API key, and JWTs
of each algorithm, repeated (cache hit) and distinct (a signature check each).
The difference of medians to the public route is the filter's cost.
"""

import http.client
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from harness import Envoy, key_hash, start_upstream  # noqa: E402
from jwt_keys import ISSUER, jwks, sign  # noqa: E402

N = 1500
API_KEY = "sk_live_acme_BenchKey0001"
LIMITED_KEY = "sk_live_acme_BenchKey0002"


def timed(conn, path, headers):
    start = time.perf_counter_ns()
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    resp.read()
    elapsed = time.perf_counter_ns() - start
    if resp.status != 200:
        raise SystemExit(f"{path} {headers}: HTTP {resp.status}")
    return elapsed


def median_us(conn, path, header_sets):
    for headers in header_sets[:50]:  # warm up
        timed(conn, path, headers)
    return statistics.median(timed(conn, path, h) for h in header_sets) / 1000


def answer_directly(config):
    """Envoy answers 200 itself, so no upstream's jitter hides the filter's cost."""
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    for route in hcm["route_config"]["virtual_hosts"][0]["routes"]:
        route.pop("route", None)
        route["direct_response"] = {"status": 200, "body": {"inline_string": "ok"}}


def main():
    policy = {
        "api_keys": {"keys": [
            {"id": "k", "hash": key_hash(API_KEY), "org": "o", "account": "acme"},
            {"id": "k2", "hash": key_hash(LIMITED_KEY), "org": "o", "account": "acme", "plan": "big"}]},
        # Two buckets too large to run out: the rate-limit step's cost, never a 429.
        "rate_limits": {"plans": {"big": [{"name": "burst", "requests": 1000000000, "per_s": 1},
                                          {"name": "day", "requests": 1000000000, "per_s": 86400}]}},
        "jwt": {"providers": [{"name": "bench", "issuer": ISSUER, "audiences": ["api"],
                               "algorithms": ["RS256", "ES256", "HS256"], "jwks": jwks()}]},
        "routes": [{"prefix": "/public", "auth": "none"}],
    }
    upstream = start_upstream()
    envoy = Envoy(policy, upstream, concurrency=1, edit=answer_directly).wait_ready()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port)
        base = median_us(conn, "/public", [{}] * N)
        rows = [("public route (baseline)", base)]
        rows.append(("x-api-key", median_us(conn, "/x", [{"x-api-key": API_KEY}] * N)))
        rows.append(("x-api-key + 2-bucket plan", median_us(conn, "/x", [{"x-api-key": LIMITED_KEY}] * N)))
        for alg in ["HS256", "ES256", "RS256"]:
            token = sign(alg, sub="repeat")
            rows.append((f"{alg} repeated (cached)", median_us(conn, "/x", [{"authorization": f"Bearer {token}"}] * N)))
            distinct = [{"authorization": f"Bearer {sign(alg, sub=f'u{i}')}"} for i in range(N + 50)]
            rows.append((f"{alg} distinct (uncached)", median_us(conn, "/x", distinct)))
        print(f"{'request':<28} {'median µs':>10} {'filter cost µs':>15}")
        for name, value in rows:
            print(f"{name:<28} {value:>10.0f} {value - base:>15.0f}")
    finally:
        envoy.stop()
        upstream.shutdown()


if __name__ == "__main__":
    main()
