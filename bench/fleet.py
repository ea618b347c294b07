"""A hot key through the fleet-wide limiter (`make bench-fleet`).

One Redis, one `edge-auth rls` (release build), nginx upstream, and four Envoys
(`--concurrency 2`), each limiting the same key to a bucket that never runs out:
  local        edge-auth, the bucket in shared data (no engine);
  leases       edge-auth, the bucket global, leases of up to 16 tokens;
  no leases    edge-auth, the bucket global, `max_lease: 1` (a call per request);
  native       Envoy's own envoy.filters.http.ratelimit with the same descriptors
               on the same edge-auth rls (a call per request).
wrk drives each for a few seconds, in interleaved rounds; medians are printed with
the engine round trips per request (from edge-auth's counters).
Environment: BENCH_ROUNDS (3), BENCH_SECONDS (3), BENCH_CONNECTIONS (16).
"""

import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))

from compare import LUA, Proc, hcm_of, local_config, start_nginx, wait_http, wasm_module  # noqa: E402
from fleet import RedisServer, Rls, grpc_cluster  # noqa: E402
from harness import ENVOY_BIN, WASM  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
PEPPER = "bench-pepper"
KEY = "sk_live_acme_FleetBench0001"
HUGE = 1_000_000_000
DAY = 86_400


def policy(scope, max_lease=16):
    digest = hmac.new(PEPPER.encode(), KEY.encode(), hashlib.sha256).hexdigest()
    rate_limits = {"plans": {"hot": [{"name": "day", "requests": HUGE, "per_s": DAY, "scope": scope}]},
                   "default_plan": "hot"}
    if scope == "global":
        rate_limits["global"] = {"cluster": "edge_auth_rls", "timeout_ms": 1000, "max_lease": max_lease}
    return {"api_keys": {"keys": [{"id": "key_hot", "hash": digest, "org": "o", "account": "acme"}]},
            "rate_limits": rate_limits}


def native_filters(base):
    route = hcm_of(base)["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["rate_limits"] = [{"actions": [
        {"request_headers": {"header_name": "x-caller", "descriptor_key": "edge_auth_caller"}},
        {"generic_key": {"descriptor_key": "edge_auth_bucket", "descriptor_value": "hot.day"}},
        {"generic_key": {"descriptor_key": "requests", "descriptor_value": str(HUGE)}},
        {"generic_key": {"descriptor_key": "per_s", "descriptor_value": str(DAY)}},
    ]}]
    return [{"name": "envoy.filters.http.ratelimit", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit",
        "domain": "edge-auth", "failure_mode_deny": True, "timeout": "1s",
        "rate_limit_service": {"transport_api_version": "V3",
                               "grpc_service": {"envoy_grpc": {"cluster_name": "edge_auth_rls"}}}}}]


CONFIGS = {
    "local": lambda base: wasm_module(base, WASM, json.dumps(policy("local"))),
    "leases": lambda base: wasm_module(base, WASM, json.dumps(policy("global"))),
    "no leases": lambda base: wasm_module(base, WASM, json.dumps(policy("global", max_lease=1))),
    "native": native_filters,
}


def start_envoy(name, workdir, upstream_port, rls_port):
    base, port, admin = local_config(upstream_port)  # the limiter's cluster is replaced below
    clusters = base["static_resources"]["clusters"]
    clusters[:] = [c for c in clusters if c["name"] != "edge_auth_rls"] + [grpc_cluster("edge_auth_rls", [rls_port])]
    hcm = hcm_of(base)
    hcm["http_filters"] = CONFIGS[name](base) + [hcm["http_filters"][-1]]
    path = workdir / f"envoy-{name.replace(' ', '-')}.json"
    path.write_text(json.dumps(base))
    proc = Proc([str(ENVOY_BIN), "-c", str(path), "--concurrency", "2", "--disable-hot-restart", "-l", "warning"],
                None, env={**os.environ, "EDGE_AUTH_PEPPER": PEPPER}, log=path.with_suffix(".log"))
    wait_http(f"http://127.0.0.1:{admin}/ready", proc, f"envoy ({name})")
    return proc, port, admin


def engine_calls(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?format=json") as r:
        stats = {s["name"]: s.get("value") for s in json.load(r)["stats"] if "name" in s}
    return stats.get("wasmcustom.edge_auth.rate_limit.global.calls", 0)


def wrk(port, seconds):
    import subprocess

    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA),
            "-H", f"x-api-key: {KEY}", "-H", "x-caller: k:key_hot", f"http://127.0.0.1:{port}/bench"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    result = json.loads(out.strip().splitlines()[-1])
    if result["non_2xx"] or result["socket_errors"]:
        raise SystemExit(f"port {port}: {result['non_2xx']} non-2xx, {result['socket_errors']} socket errors")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def main():
    procs, extra = [], []
    with tempfile.TemporaryDirectory(prefix="edge-auth-fleet-bench-") as tmp:
        workdir = Path(tmp)
        try:
            redis = RedisServer()
            extra.append(redis)
            rls = Rls(redis.url)
            extra.append(rls)
            nginx, upstream_port = start_nginx(workdir)
            procs.append(nginx)
            envoys = {}
            for name in CONFIGS:  # each stopped at the end, even if a later one fails to start
                envoys[name] = start_envoy(name, workdir, upstream_port, rls.port)
                procs.append(envoys[name][0])
            for _, port, _ in envoys.values():
                wrk(port, 1)
            runs = {name: [] for name in CONFIGS}
            for r in range(ROUNDS):
                names = list(CONFIGS)
                for name in names[r % len(names):] + names[:r % len(names)]:
                    _, port, admin = envoys[name]
                    before = engine_calls(admin)
                    result = wrk(port, SECONDS)
                    result["trips"] = (engine_calls(admin) - before) / result["requests"]
                    runs[name].append(result)
                print(f"round {r + 1}/{ROUNDS} done", file=sys.stderr)
            print(f"Envoy --concurrency 2, one edge-auth rls, one Redis, wrk 1 thread x {CONNECTIONS} connections, "
                  f"{ROUNDS} rounds of {SECONDS} s, medians.\n")
            print("| path | req/s | p50 µs | p99 µs | engine round trips / request |")
            print("| --- | ---: | ---: | ---: | ---: |")
            for name in CONFIGS:
                med = {k: statistics.median(r[k] for r in runs[name]) for k in ("rps", "p50_us", "p99_us", "trips")}
                trips = {"local": "0", "native": "1"}.get(name, f"{med['trips']:.3f}")
                print(f"| {name} | {med['rps']:,.0f} | {med['p50_us']:,.0f} | {med['p99_us']:,.0f} | {trips} |")
        finally:
            for proc in procs:
                proc.stop()
            for p in extra:
                p.stop()


if __name__ == "__main__":
    main()
