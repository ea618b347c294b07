"""edge-auth beside Envoy's native filters, in one run (`make bench`).

The same nginx upstream sits behind several Envoys (`--concurrency 1`):
  plain   no auth filter at all;
  native  Envoy's own filters: api_key_auth + local_ratelimit (a per-key burst
          and day bucket), or jwt_authn with its cache (jwt_cache_config) and,
          for the pools of distinct tokens, without it;
  module  edge-auth: hashed keys, shared per-key buckets, account checks,
          identity headers;
  dynamic the same engine and policy as Envoy's native dynamic module
          (`make dynamic`: target/release/libedge_auth.so, no wasm runtime);
  floor   bench/noop-filter, a proxy-wasm filter that does nothing: what the
          wasm runtime costs per request before any filter logic;
  effects the same filter doing only the effects edge-auth applies to an
          admitted API-key request (header map read, a shared-data
          compare-and-swap, 6 request + 3 response headers): what the
          proxy-wasm host charges for the contract before any deciding.
wrk drives each (config, scenario) pair for a few seconds. Every Envoy stays
up for the whole run and the pairs are interleaved over several rounds, each
round in a rotated order; medians over rounds are reported. On two or more
cores Envoy gets a core of its own and wrk and nginx share another, so Envoy
is what saturates.

Writes bench/results.md (the table) and bench/results.svg (the chart).
Environment: BENCH_ROUNDS (5), BENCH_SECONDS (3), BENCH_CONNECTIONS (16),
EDGE_AUTH_WASM (the module to measure; default the release build).
"""

import hashlib
import hmac
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import date
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "e2e"))

from harness import ENVOY_BIN, ENVOY_YAML, MODULE_DIR, WASM, free_port, wasm_filter  # noqa: E402
from jwt_keys import ISSUER, jwks, sign  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SECONDS = int(os.environ.get("BENCH_SECONDS", "3"))
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", "16"))
MODULE = Path(os.environ.get("EDGE_AUTH_WASM", WASM))
NOOP = ROOT / "target/noop-filter/wasm32-wasip1/release/noop_filter.wasm"
KEYS = 1_000
POOL = 5_000  # distinct tokens: more than edge-auth's 4,096-entry cache, so every one is verified
PEPPER = "bench-pepper"
HUGE = 1_000_000_000  # a bucket that never runs out: the rate-limit step's cost, never a 429
LUA = Path(__file__).with_name("wrk_report.lua")
OUT_MD = Path(__file__).with_name("results.md")
OUT_SVG = Path(__file__).with_name("results.svg")

ENVOY_CPU, CLIENT_CPU = ("1", "0") if (os.cpu_count() or 1) >= 2 else (None, None)


def api_key(i):
    return f"sk_live_acme_BenchSecret{i:05d}"


def key_id(i):
    return f"key_{i:05d}"


LIMITED = KEYS  # the key whose plan admits one request a day: the 429 path


# --- the Envoy configurations ---------------------------------------------------------------

def wasm_module(base, path, configuration):
    """The wasm filter exactly as envoy/envoy.yaml ships it, running `path`."""
    wasm = next(f for f in hcm_of(base)["http_filters"] if f["name"] == "envoy.filters.http.wasm")
    config = wasm_filter(base)
    config["vm_config"]["code"]["local"]["filename"] = str(path)
    config["configuration"]["value"] = configuration
    return [wasm]


def bench_policy():
    """The policy both builds of edge-auth run."""
    keys = [{"id": key_id(i), "hash": hmac.new(PEPPER.encode(), api_key(i).encode(), hashlib.sha256).hexdigest(),
             "org": "org_bench", "account": "acme", "scopes": ["agents:read"],
             "plan": "tiny" if i == LIMITED else "standard"} for i in range(KEYS + 1)]
    policy = {
        "api_keys": {"pepper_env": "EDGE_AUTH_PEPPER", "keys": keys},
        "rate_limits": {"plans": {
            "standard": [{"name": "burst", "requests": HUGE, "per_s": 1},
                         {"name": "day", "requests": HUGE, "per_s": 86400}],
            "tiny": [{"name": "day", "requests": 1, "per_s": 86400}]}},
        "jwt": {"providers": [{"name": "bench", "issuer": ISSUER, "audiences": ["api"],
                               "algorithms": ["RS256", "ES256"], "jwks": asymmetric_jwks()}]},
    }
    return json.dumps(policy)


def module_filter(base):
    """edge-auth (wasm) with the bench policy."""
    return wasm_module(base, MODULE, bench_policy())


def dynamic_module(configuration):
    """edge-auth's native build, Envoy's dynamic module, with the policy `configuration`."""
    return [{"name": "edge_auth", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
        "dynamic_module_config": {"name": "edge_auth"},
        "filter_name": "edge_auth",
        "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": configuration}}}]


def dynamic_filter(base):
    """The native build with the same policy as the wasm module."""
    return dynamic_module(bench_policy())


def native_key_filters(base):
    """api_key_auth + local_ratelimit, and the route's descriptors for the latter:
    (bucket, client id set by api_key_auth)."""
    client = {"request_headers": {"header_name": "x-key-id", "descriptor_key": "client"}}
    route = hcm_of(base)["route_config"]["virtual_hosts"][0]["routes"][0]
    route["route"]["rate_limits"] = [{"actions": [{"generic_key": {"descriptor_key": "bucket", "descriptor_value": b}},
                                                  client]} for b in ("burst", "day")]

    def bucket(tokens, seconds):
        return {"max_tokens": tokens, "tokens_per_fill": tokens, "fill_interval": f"{seconds}s"}

    descriptors = []
    for i in range(KEYS + 1):
        for name, tokens, seconds in ([("day", 1, 86400)] if i == LIMITED else
                                      [("burst", HUGE, 1), ("day", HUGE, 86400)]):
            descriptors.append({"entries": [{"key": "bucket", "value": name}, {"key": "client", "value": key_id(i)}],
                                "token_bucket": bucket(tokens, seconds)})
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}}
    return [
        {"name": "envoy.filters.http.api_key_auth", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.api_key_auth.v3.ApiKeyAuth",
            "credentials": [{"key": api_key(i), "client": key_id(i)} for i in range(KEYS + 1)],
            "key_sources": [{"header": "x-api-key"}, {"header": "authorization"}],
            "forwarding": {"header": "x-key-id"}}},
        {"name": "envoy.filters.http.local_ratelimit", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "bench",
            "token_bucket": bucket(HUGE, 1),
            "filter_enabled": {"runtime_key": "bench_rl_enabled", **always},
            "filter_enforced": {"runtime_key": "bench_rl_enforced", **always},
            "descriptors": descriptors}},
    ]


def native_jwt_filters(cache):
    provider = {
        "issuer": ISSUER, "audiences": ["api"], "forward": True,
        "local_jwks": {"inline_string": json.dumps(asymmetric_jwks())},
        "claim_to_headers": [{"header_name": "x-auth-subject", "claim_name": "sub"},
                             {"header_name": "x-org-id", "claim_name": "org_id"}],
    }
    if cache:
        provider["jwt_cache_config"] = {"jwt_cache_size": 4096}
    return [{"name": "envoy.filters.http.jwt_authn", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {"bench": provider},
        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}}]


def asymmetric_jwks():
    return {"keys": [k for k in jwks()["keys"] if k["kty"] != "oct"]}


def hcm_of(config):
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


CONFIGS = {
    "plain": lambda base: [],
    "native keys": native_key_filters,
    "native jwt cached": lambda base: native_jwt_filters(cache=True),
    "native jwt uncached": lambda base: native_jwt_filters(cache=False),
    "module": module_filter,
    "dynamic module": dynamic_filter,
    "wasm floor": lambda base: wasm_module(base, NOOP, "{}"),
    "wasm effects": lambda base: wasm_module(base, NOOP, '{"effects": true}'),
}


class Proc:
    def __init__(self, argv, cpu, env=None, log=None):
        prefix = ["taskset", "-c", cpu] if cpu else []
        self.log = log
        out = open(log, "wb") if log else subprocess.DEVNULL
        self.proc = subprocess.Popen(prefix + argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def cpu_s(self):
        """User + system CPU seconds the process has used (all threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def start_nginx(workdir):
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1; pid {workdir}/nginx.pid; error_log stderr error;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 100000000;
  client_body_temp_path {workdir}; proxy_temp_path {workdir}; fastcgi_temp_path {workdir};
  uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
""")
    proc = Proc(["nginx", "-p", str(workdir), "-e", "stderr", "-c", str(conf)], CLIENT_CPU,
                log=workdir / "nginx.log")
    wait_http(f"http://127.0.0.1:{port}/", proc, "nginx")
    return proc, port


def local_config(upstream_port):
    """envoy/envoy.yaml on free local ports, every cluster sent to `upstream_port`:
    (the configuration, its listener's port, its admin port)."""
    base = yaml.safe_load(ENVOY_YAML.read_text())
    port, admin = free_port(), free_port()
    base["static_resources"]["listeners"][0]["address"]["socket_address"] = {"address": "127.0.0.1",
                                                                            "port_value": port}
    base["admin"]["address"]["socket_address"]["port_value"] = admin
    for cluster in base["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = upstream_port
    return base, port, admin


def start_envoy(name, workdir, upstream_port, filters=None, module_dir=MODULE_DIR):
    """An Envoy running `filters(base)` (default: CONFIGS[name]) before the router; a dynamic
    module is loaded from `module_dir`."""
    base, port, admin = local_config(upstream_port)
    hcm = hcm_of(base)
    router = hcm["http_filters"][-1]
    hcm["http_filters"] = (filters or CONFIGS[name])(base) + [router]
    path = workdir / f"envoy-{name.replace(' ', '-')}.json"
    path.write_text(json.dumps(base))
    env = {**os.environ, "EDGE_AUTH_PEPPER": PEPPER, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(module_dir)}
    proc = Proc([str(ENVOY_BIN), "-c", str(path), "--concurrency", "1", "--disable-hot-restart", "-l", "warning"],
                ENVOY_CPU, env=env, log=path.with_suffix(".log"))
    wait_http(f"http://127.0.0.1:{admin}/ready", proc, f"envoy ({name})")
    return proc, port


def wait_http(url, proc, what):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise SystemExit(f"{what} exited:\n{Path(proc.log).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not come up")


# --- scenarios ------------------------------------------------------------------------------

class Scenario:
    """`tokens`: a file of JWTs sent in turn; `body`: a file POSTed as the body."""

    def __init__(self, name, configs, expect, headers=None, tokens=None, body=None, path="/bench"):
        self.name, self.configs, self.expect = name, configs, expect
        self.headers, self.tokens, self.body, self.path = headers or {}, tokens, body, path


def scenarios(workdir):
    def pool(alg):
        path = workdir / f"{alg}.tokens"
        path.write_text("\n".join(sign(alg, sub=f"user-{i}", exp=int(time.time()) + 7200) for i in range(POOL)))
        return path

    def bearer(token):
        return {"authorization": f"Bearer {token}"}

    exp = int(time.time()) + 7200
    keys = ["plain", "wasm floor", "wasm effects", "native keys", "module", "dynamic module"]
    cached = ["plain", "wasm floor", "native jwt cached", "module", "dynamic module"]
    uncached = ["plain", "wasm floor", "native jwt uncached", "module", "dynamic module"]
    return [
        Scenario("x-api-key", keys, 200, {"x-api-key": api_key(7)}),
        Scenario("Bearer sk_live_", keys, 200, bearer(api_key(7))),
        Scenario("RS256, same token", cached, 200, bearer(sign("RS256", exp=exp))),
        Scenario("ES256, same token", cached, 200, bearer(sign("ES256", exp=exp))),
        Scenario(f"RS256, {POOL:,} distinct", uncached, 200, tokens=pool("RS256")),
        Scenario(f"ES256, {POOL:,} distinct", uncached, 200, tokens=pool("ES256")),
        Scenario("429 (bucket empty)", ["native keys", "module", "dynamic module"], 429, {"x-api-key": api_key(LIMITED)}),
    ]


def run_wrk(envoy, scenario, seconds):
    proc, port = envoy
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "5s", "-s", str(LUA)]
    for name, value in scenario.headers.items():
        argv += ["-H", f"{name}: {value}"]
    argv.append(f"http://127.0.0.1:{port}{scenario.path}")
    if scenario.tokens:
        argv.append(str(scenario.tokens))
    elif scenario.body:
        argv.append(f"post:{scenario.body}")
    if CLIENT_CPU:
        argv = ["taskset", "-c", CLIENT_CPU] + argv
    cpu = proc.cpu_s()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    cpu = proc.cpu_s() - cpu
    result = json.loads(out.strip().splitlines()[-1])
    wrong = result["non_2xx"] if scenario.expect == 200 else result["requests"] - result["non_2xx"]
    if wrong or result["socket_errors"]:
        raise SystemExit(f"{scenario.name} on port {port}: {wrong} answers other than {scenario.expect}, "
                         f"{result['socket_errors']} socket errors")
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["cpu_us"] = cpu * 1e6 / result["requests"]
    return result


def request(port, headers):
    try:
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/bench", headers=headers), timeout=5)
    except urllib.error.HTTPError:
        pass


# --- report ---------------------------------------------------------------------------------

def role(config):
    # plain | floor | effects | native | module | dynamic
    return {"wasm floor": "floor", "wasm effects": "effects", "dynamic module": "dynamic"}.get(config,
                                                                                              config.split()[0])


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}"


def report(table, rss, scen):
    envoy_version = subprocess.run([str(ENVOY_BIN), "--version"], capture_output=True, text=True).stdout.split()[2]
    lines = [
        f"Measured {date.today().isoformat()} by `make bench` on {machine()}.",
        f"Envoy {envoy_version.split('/')[1]} `--concurrency 1` (its own core), nginx upstream, "
        f"wrk 1 thread × {CONNECTIONS} connections; {ROUNDS} interleaved rounds of {SECONDS} s, medians. "
        f"Module: {MODULE.stat().st_size:,} bytes; {KEYS:,} keys in both the module and api_key_auth. "
        "*wasm floor* is bench/noop-filter, a proxy-wasm filter that does nothing, and *wasm effects* the same "
        "filter doing only edge-auth's effects (header map read, a shared-data compare-and-swap, 6 request and "
        "3 response headers); "
        "*dynamic module* is the native build (libedge_auth.so) with the same policy.",
        "",
        "| scenario | Envoy | req/s | × plain | × native | p50 µs | p99 µs | Envoy CPU µs/req |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    medians_of = {}
    for s in scen:
        medians = {c: {k: statistics.median(r[k] for r in table[s.name][c]) for k in ("rps", "p50_us", "p99_us", "cpu_us")}
                   for c in s.configs}
        medians_of[s.name] = medians
        plain = medians.get("plain", {}).get("rps")
        native = next(medians[c]["rps"] for c in s.configs if role(c) == "native")
        for c in s.configs:
            m = medians[c]
            vs_plain = f"{m['rps'] / plain:.2f}" if plain else "–"
            vs_native = f"{m['rps'] / native:.2f}" if role(c) in ("effects", "native", "module", "dynamic") else "–"
            lines.append(f"| {s.name} | {c} | {m['rps']:,.0f} | {vs_plain} | {vs_native} | "
                         f"{m['p50_us']:,.0f} | {m['p99_us']:,.0f} | {m['cpu_us']:.0f} |")
    lines += ["", "Envoy resident memory after the run: "
              + ", ".join(f"{name} {mib:.0f} MiB" for name, mib in rss.items()) + "."]
    text = "\n".join(lines) + "\n"
    OUT_MD.write_text(text)
    OUT_SVG.write_text(chart(scen, medians_of))
    print(text)
    print(f"wrote {OUT_MD.relative_to(ROOT)} and {OUT_SVG.relative_to(ROOT)}")


def chart(scen, medians_of):
    """Grouped horizontal bars: requests/s per scenario, one bar per Envoy."""
    colours = {"plain": "#9aa5b1", "floor": "#c9c3a3", "effects": "#a99a5b", "native": "#3d7dca", "module": "#e8833a",
               "dynamic": "#5aa469"}
    bar, gap, left, width = 16, 14, 190, 520
    top = max(m["rps"] for medians in medians_of.values() for m in medians.values())
    rows = sum(len(s.configs) for s in scen)
    height = 50 + rows * bar + len(scen) * gap + 30
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 90}" height="{height}" '
           'font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">Requests/s through Envoy (--concurrency 1), '
           'median of rounds</text>']
    for i, (name, colour) in enumerate(colours.items()):
        out.append(f'<rect x="{10 + i * 110}" y="30" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{26 + i * 110}" y="41">{name}</text>')
    y = 55
    for s in scen:
        out.append(f'<text x="10" y="{y + bar * len(s.configs) / 2 + 4}">{s.name}</text>')
        for c in s.configs:
            rps = medians_of[s.name][c]["rps"]
            w = width * rps / top
            out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar - 2}" fill="{colours[role(c)]}"/>'
                       f'<text x="{left + w + 4:.1f}" y="{y + bar - 5}">{rps:,.0f}</text>')
            y += bar
        y += gap
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main():
    workdir = Path(tempfile.mkdtemp(prefix="edge-auth-bench-"))
    procs = []
    try:
        nginx, upstream_port = start_nginx(workdir)
        procs.append(nginx)
        envoys = {}
        for name in CONFIGS:
            proc, port = start_envoy(name, workdir, upstream_port)
            procs.append(proc)
            envoys[name] = (proc, port)
        scen = scenarios(workdir)
        for s in scen:
            if s.expect == 429:  # the one request the bucket holds
                for c in s.configs:
                    request(envoys[c][1], s.headers)
        for s in scen:  # warm up: JIT, caches, connection pools
            for c in s.configs:
                run_wrk(envoys[c], s, 1)
        table = {s.name: {c: [] for c in s.configs} for s in scen}
        for r in range(ROUNDS):
            for s in scen:
                order = s.configs[r % len(s.configs):] + s.configs[:r % len(s.configs)]
                for c in order:
                    table[s.name][c].append(run_wrk(envoys[c], s, SECONDS))
            print(f"round {r + 1}/{ROUNDS} done", file=sys.stderr)
        report(table, {name: proc.rss_mib() for name, (proc, _) in envoys.items()}, scen)
    finally:
        for proc in procs:
            proc.stop()


if __name__ == "__main__":
    main()
