"""What a signed webhook costs inside Envoy (`make bench-envoy`).

A POST of a 1 KiB and a 64 KiB body, signed (`hex`, HMAC-SHA256 over the
body) on a webhook route, against the same POST on an `auth: none` route of
the same filter, in both builds: the wasm module and the native dynamic
module. The difference is the webhook's cost: buffering the body, reading it
into the filter, the MAC. Envoy CPU microseconds per request (from
/proc/<pid>/stat), measured with bench/compare.py's set-up: nginx upstream,
wrk load, Envoy `--concurrency 1` on a core of its own, pairs interleaved over
BENCH_ROUNDS rounds (5) of BENCH_SECONDS (3), medians reported.
"""

import hashlib
import hmac
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from compare import (MODULE, ROUNDS, SECONDS, Scenario, dynamic_module, run_wrk, start_envoy, start_nginx,
                     wasm_module)

SECRET = "bench-webhook-secret-0123456789"
SECRET_ENV = "EDGE_AUTH_WEBHOOK_BENCH"
SIZES = {"1 KiB": 1024, "64 KiB": 64 * 1024}
POLICY = json.dumps({
    "api_keys": {"pepper_env": "EDGE_AUTH_PEPPER", "keys": []},
    "webhooks": [{"name": "bench", "header": "x-bench-signature", "secret_env": SECRET_ENV,
                  "format": "hex", "max_body_bytes": 1024 * 1024}],
    "routes": [{"prefix": "/hook", "methods": ["POST"], "webhook": "bench"},
               {"prefix": "/open", "auth": "none"}],
})


def wasm_filters(base):
    filters = wasm_module(base, MODULE, POLICY)
    env = filters[0]["typed_config"]["config"]["vm_config"]["environment_variables"]
    env["key_values"] = {SECRET_ENV: SECRET}
    return filters


BUILDS = {"wasm": wasm_filters, "native": lambda base: dynamic_module(POLICY)}


def scenarios(workdir):
    """Per size: the same body on the open route and signed on the webhook route."""
    out = []
    for size_name, size in SIZES.items():
        body = workdir / f"body-{size}"
        body.write_bytes(json.dumps({"event": "bench", "pad": "x" * size}).encode()[:size])
        mac = hmac.new(SECRET.encode(), body.read_bytes(), hashlib.sha256).hexdigest()
        out.append((size_name,
                    Scenario(f"{size_name} auth: none", list(BUILDS), 200, body=body, path="/open"),
                    Scenario(f"{size_name} webhook", list(BUILDS), 200, {"x-bench-signature": mac},
                             body=body, path="/hook")))
    return out


def main():
    workdir = Path(tempfile.mkdtemp(prefix="edge-auth-webhook-bench-"))
    procs = []
    try:
        nginx, upstream_port = start_nginx(workdir)
        procs.append(nginx)
        os.environ[SECRET_ENV] = SECRET  # the native build reads Envoy's environment
        envoys = {}
        for build, filters in BUILDS.items():
            proc, port = start_envoy(build, workdir, upstream_port, filters)
            procs.append(proc)
            envoys[build] = (proc, port)
        scen = scenarios(workdir)
        for _, open_route, hook in scen:  # warm up
            for build in BUILDS:
                run_wrk(envoys[build], open_route, 1)
                run_wrk(envoys[build], hook, 1)
        cpu = {(build, s.name): [] for build in BUILDS for pair in scen for s in pair[1:]}
        pairs = [(build, pair) for build in BUILDS for pair in scen]
        for r in range(ROUNDS):
            for build, (_, open_route, hook) in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
                # Within a pair, alternate which goes first.
                for s in (open_route, hook) if r % 2 == 0 else (hook, open_route):
                    cpu[(build, s.name)].append(run_wrk(envoys[build], s, SECONDS)["cpu_us"])
            print(f"round {r + 1}/{ROUNDS} done", file=sys.stderr)
        print(f"Envoy CPU µs per POST, median of {ROUNDS} rounds of {SECONDS} s (wrk, --concurrency 1)")
        print(f"{'body':<8} {'build':<7} {'auth: none':>11} {'webhook':>9} {'webhook cost':>13}")
        for size_name, open_route, hook in scen:
            for build in BUILDS:
                base = statistics.median(cpu[(build, open_route.name)])
                signed = statistics.median(cpu[(build, hook.name)])
                print(f"{size_name:<8} {build:<7} {base:>11.0f} {signed:>9.0f} {signed - base:>13.0f}")
    finally:
        for proc in procs:
            proc.stop()


if __name__ == "__main__":
    main()
