"""Instructions per request, by object, with Envoy under callgrind.

    bench/instructions.py [VARIANT ...]

A VARIANT is `plain`, `native keys` (api_key_auth + local_ratelimit),
`native jwt cached`, `dynamic floor` and `dynamic effects` (bench/noop-dynamic:
a dynamic module that does nothing, and the same doing only edge-auth's header
effects), a `.so` (a build of the native dynamic module, loaded as edge_auth)
or a directory holding one. Default: plain, the native chain, both floors and
target/release. BENCH_REQUEST=jwt sends a cached RS256 token instead of an
`x-api-key` (then compare with `native jwt cached`).

Each Envoy (`--concurrency 1`, the policy and x-api-key request of
compare.py) runs under valgrind's callgrind with instrumentation off while it
starts and warms up; then it counts every instruction Envoy's worker, the
module and libc execute over BENCH_SECONDS (10) of wrk load, divided by the
requests Envoy served. Unlike CPU time on a shared machine, the count does not
move between runs, so an A/B of two module builds is exact to a few
instructions. It does not see cache misses, which is where much of a
module's time goes inside Envoy: it complements compare.py, it does not
replace it.

Valgrind offers no SHA extensions, so SHA-256 (the key's HMAC, the caller's
placement) runs in software here: with a module built with symbols its share
is printed apart, and the module's count without it is what compare.py's
machines run more or less of.

A wasm module is not measured: V8's generated code has no object to count by.
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import envoy as envoy_package

import compare
from compare import CONFIGS, PEPPER, api_key, dynamic_filter, dynamic_module, hcm_of, local_config, sign, start_nginx

ENVOY_REAL = Path(envoy_package.__file__).parent / "_bin/envoy"
SECONDS = int(os.environ.get("BENCH_SECONDS", "10"))
JWT = os.environ.get("BENCH_REQUEST") == "jwt"
NOOP_DYNAMIC = compare.ROOT / "target/noop-dynamic/release"
FLOORS = {"dynamic floor": "{}", "dynamic effects": '{"effects": true}'}
DEFAULT = ["plain", "native jwt cached" if JWT else "native keys", *FLOORS,
           str(compare.ROOT / "target/release/libedge_auth.so")]
HEADER = f"authorization: Bearer {sign('RS256', exp=int(time.time()) + 7200)}" if JWT else f"x-api-key: {api_key(7)}"


def envoy_config(workdir, upstream_port, filters):
    base, port, admin = local_config(upstream_port)
    hcm = hcm_of(base)
    hcm["http_filters"] = filters(base) + [hcm["http_filters"][-1]]
    path = workdir / "envoy.json"
    path.write_text(json.dumps(base))
    return path, port, admin


def served(admin):
    stats = urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats?filter=downstream_rq_total").read().decode()
    return sum(int(n) for n in re.findall(r"http\.ingress_http\.downstream_rq_total: (\d+)", stats))


def wrk(port, seconds):
    subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", "-H", HEADER,
                    f"http://127.0.0.1:{port}/"], capture_output=True, check=True)


def callgrind(variant, upstream_port):
    """Runs one variant under callgrind; returns (requests, self cost by (object, function))."""
    workdir = Path(tempfile.mkdtemp(prefix="edge-auth-instructions-"))
    module_dir = None
    if variant in CONFIGS:
        filters = CONFIGS[variant]
    elif variant in FLOORS:
        module_dir = NOOP_DYNAMIC
        filters = lambda base: dynamic_module(FLOORS[variant])  # noqa: E731
    else:
        so = Path(variant)
        module_dir = so if so.is_dir() else so.parent
        if so.is_file() and so.name != "libedge_auth.so":
            raise SystemExit(f"{so}: Envoy loads the module as libedge_auth.so; pass its directory")
        filters = dynamic_filter
    config, port, admin = envoy_config(workdir, upstream_port, filters)
    env = {**os.environ, "EDGE_AUTH_PEPPER": PEPPER}
    if module_dir:
        env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(module_dir)
    out = workdir / "callgrind.out"
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
                             str(ENVOY_REAL), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                             "-l", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit(f"{variant}: Envoy did not start under valgrind")
                time.sleep(1)
        wrk(port, 3)  # warm up: connections, caches, the module's first compile
        control = ["callgrind_control", str(proc.pid)]
        subprocess.run(control[:1] + ["-i", "on"] + control[1:], capture_output=True, check=True)
        before = served(admin)
        wrk(port, SECONDS)
        requests = served(admin) - before - 1  # the stats request itself is not counted
        subprocess.run(control[:1] + ["-i", "off"] + control[1:], capture_output=True, check=True)
        subprocess.run(control[:1] + ["-d"] + control[1:], capture_output=True, check=True)
    finally:
        proc.terminate()
        proc.wait(60)
    dumps = [d for d in workdir.glob("callgrind.out*") if d.stat().st_size > 0]
    return requests, self_cost(max(dumps, key=lambda d: d.stat().st_size))


def self_cost(path):
    """Exclusive instructions by (object, function) from a callgrind dump."""
    names = {"ob": {}, "fn": {}}
    cost = Counter()
    ob = fn = None
    call_line = False
    for line in path.read_text(errors="replace").splitlines():
        field, eq, value = line.partition("=")
        if eq and field in ("ob", "cob", "fn", "cfn"):
            kind = field[-2:]
            m = re.match(r"\((\d+)\)(?: (.*))?", value)
            if m and m.group(2) is not None:
                names[kind][m.group(1)] = m.group(2)
            name = names[kind].get(m.group(1), value) if m else value
            if field == "ob":
                ob = name
            elif field == "fn":
                fn = name
        elif line.startswith("calls="):
            call_line = True  # the next cost line is a call's inclusive cost
        elif line[:1].isdigit() or line[:1] in "+-*":
            if call_line:
                call_line = False
            elif len(parts := line.split()) >= 2:
                cost[(ob, fn)] += int(parts[1])
    return cost


def summary(requests, cost):
    per = Counter()
    for (ob, fn), ir in cost.items():
        ob = ob or "?"
        if "libedge_auth" in ob:
            per["module, SHA-256" if fn and "sha2::" in fn else "module"] += ir
        elif ob.endswith("/envoy") or ob == "???":  # Envoy remaps its text to huge pages
            per["envoy"] += ir
        elif "libc.so" in ob:
            per["libc"] += ir
        else:
            per["other"] += ir
    return {k: v / max(requests, 1) for k, v in per.items()}


def main():
    variants = sys.argv[1:] or DEFAULT
    workdir = Path(tempfile.mkdtemp(prefix="edge-auth-instructions-"))
    nginx, upstream_port = start_nginx(workdir)
    rows = []
    try:
        for variant in variants:
            requests, cost = callgrind(variant, upstream_port)
            rows.append((variant, requests, summary(requests, cost)))
            print(f"{variant}: {requests} requests", file=sys.stderr)
    finally:
        nginx.stop()
    columns = ["envoy", "libc", "module", "module, SHA-256", "other"]
    plain = next((sum(per.values()) for v, _, per in rows if v == "plain"), None)
    what = "cached RS256 JWT" if JWT else "x-api-key"
    print(f"Instructions per {what} request under callgrind ({SECONDS} s of wrk, Envoy --concurrency 1)")
    print("| variant | requests | " + " | ".join(columns) + " | total | over plain |")
    print("| --- | ---: | " + " | ".join("---:" for _ in columns) + " | ---: | ---: |")
    for variant, requests, per in rows:
        total = sum(per.values())
        over = f"{total - plain:+,.0f}" if plain is not None else "–"
        cells = " | ".join(f"{per.get(c, 0):,.0f}" for c in columns)
        print(f"| {variant} | {requests:,} | {cells} | {total:,.0f} | {over} |")


if __name__ == "__main__":
    main()
