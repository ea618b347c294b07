"""A paired A/B of two builds of the module on the same scenarios.

    bench/paired.py OLD.wasm NEW.wasm [scenario ...]
    bench/paired.py OLD.so NEW.so [scenario ...]

Two `.so` files are two builds of the native dynamic module
(libedge_auth.so, under any name): each is loaded from a directory of its own.

Two Envoys (`--concurrency 1`, the bench policy of compare.py), one running
each module, stay up for the whole run; every round drives both on each
scenario, alternating which goes first. Prints the median Envoy CPU
µs/request of each and the median of the per-round differences (NEW − OLD):
the noise of a shared machine hits both sides of a round alike, so the paired
difference is steadier than either median.

Scenarios: x-api-key, bearer, jwt (RS256, same token), 429 (default: all).
Environment: BENCH_ROUNDS (12), BENCH_SECONDS (3), BENCH_CONNECTIONS (16).
"""

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import compare
from compare import LIMITED, Scenario, api_key, bench_policy, dynamic_module, request, run_wrk, sign, start_envoy, \
    start_nginx, wasm_module

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "12"))


def scenarios():
    exp = int(time.time()) + 7200
    return {
        "x-api-key": Scenario("x-api-key", [], 200, {"x-api-key": api_key(7)}),
        "bearer": Scenario("Bearer sk_live_", [], 200, {"authorization": f"Bearer {api_key(7)}"}),
        "jwt": Scenario("RS256, same token", [], 200, {"authorization": f"Bearer {sign('RS256', exp=exp)}"}),
        "429": Scenario("429 (bucket empty)", [], 429, {"x-api-key": api_key(LIMITED)}),
    }


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    modules = {"old": Path(sys.argv[1]).resolve(), "new": Path(sys.argv[2]).resolve()}
    every = scenarios()
    chosen = [every[name] for name in (sys.argv[3:] or every)]
    workdir = Path(tempfile.mkdtemp(prefix="edge-auth-paired-"))
    procs = []
    try:
        nginx, upstream_port = start_nginx(workdir)
        procs.append(nginx)
        policy = bench_policy()
        envoys = {}
        for side, path in modules.items():
            if path.suffix == ".so":  # Envoy finds a dynamic module by its name in a directory
                module_dir = workdir / side
                module_dir.mkdir()
                shutil.copy(path, module_dir / "libedge_auth.so")
                proc, port = start_envoy(side, workdir, upstream_port, module_dir=module_dir,
                                         filters=lambda base: dynamic_module(policy))
            else:
                proc, port = start_envoy(side, workdir, upstream_port,
                                         filters=lambda base, path=path: wasm_module(base, path, policy))
            procs.append(proc)
            envoys[side] = (proc, port)
        for s in chosen:
            for side in envoys:
                if s.expect == 429:  # the one request the bucket holds
                    request(envoys[side][1], s.headers)
                run_wrk(envoys[side], s, 1)  # warm up: JIT, caches, connection pools
        cpu = {s.name: {side: [] for side in envoys} for s in chosen}
        for r in range(ROUNDS):
            order = ["old", "new"] if r % 2 == 0 else ["new", "old"]
            for s in chosen:
                for side in order:
                    cpu[s.name][side].append(run_wrk(envoys[side], s, compare.SECONDS)["cpu_us"])
            print(f"round {r + 1}/{ROUNDS} done", file=sys.stderr)
        print(f"{ROUNDS} paired rounds of {compare.SECONDS} s; Envoy CPU µs/request, medians")
        print(f"old: {modules['old']}\nnew: {modules['new']}")
        print("| scenario | old | new | new − old: median of paired differences | their quartiles |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for s in chosen:
            old, new = cpu[s.name]["old"], cpu[s.name]["new"]
            diffs = [n - o for o, n in zip(old, new)]
            low, _, high = statistics.quantiles(diffs, n=4)
            print(f"| {s.name} | {statistics.median(old):.1f} | {statistics.median(new):.1f} | "
                  f"{statistics.median(diffs):+.1f} | {low:+.1f} … {high:+.1f} |")
    finally:
        for proc in procs:
            proc.stop()


if __name__ == "__main__":
    main()
