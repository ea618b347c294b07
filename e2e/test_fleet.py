"""Per-key limits across a fleet: two Envoys (two workers each), two `edge-auth rls`
instances, one Redis (and a 3-node Redis Cluster), and Envoy's own native ratelimit
filter as a client nobody here wrote."""

import json
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleet import RedisCluster, RedisServer, Rls, Silent, grpc_cluster
from harness import ENVOY_BIN, Envoy, free_port, key_hash

KEY = "sk_live_acme_FleetKey0001"
OTHER = "sk_live_acme_FleetKey0002"
CALLER = "k:key_fleet"  # how the filter names this key's caller to the engine


def policy(requests, failure_mode="deny", timeout_ms=1000, local=()):
    buckets = [{"name": "day", "requests": requests, "per_s": 86400, "scope": "global"}, *local]
    return {
        "api_keys": {"keys": [
            {"id": "key_fleet", "hash": key_hash(KEY), "org": "org_1", "account": "acme"},
            {"id": "key_other", "hash": key_hash(OTHER), "org": "org_1", "account": "acme"},
        ]},
        "rate_limits": {
            "plans": {"standard": buckets},
            "default_plan": "standard",
            "global": {"cluster": "edge_auth_rls", "timeout_ms": timeout_ms, "failure_mode": failure_mode},
        },
    }


def with_limiter(ports):
    """Points the shipped config's `edge_auth_rls` cluster at these limiters."""
    def edit(config):
        clusters = config["static_resources"]["clusters"]
        clusters[:] = [c for c in clusters if c["name"] != "edge_auth_rls"] + [grpc_cluster("edge_auth_rls", ports)]
    return edit


@pytest.fixture(scope="module")
def redis():
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def limiters(redis):
    started = [Rls(redis.url), Rls(redis.url)]
    yield started
    for rls in started:
        rls.stop()


def envoys(upstream, doc, ports, count=2):
    return [Envoy(doc, upstream, concurrency=2, edit=with_limiter(ports)).wait_ready() for _ in range(count)]


def burst(proxies, n, key=KEY, workers=16):
    """n concurrent requests spread over the proxies; the statuses."""
    def one(i):
        return proxies[i % len(proxies)].request("/v1/things", [("x-api-key", key)])
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(n)))


def test_a_global_bucket_admits_exactly_n_across_envoys(upstream, limiters):
    # 20 a day: leases of one token, so the fleet admits exactly 20.
    proxies = envoys(upstream, policy(20), [r.port for r in limiters])
    try:
        answers = burst(proxies, 60)
        admitted = [r for r in answers if r.status == 200]
        refused = [r for r in answers if r.status != 200]
        assert len(admitted) == 20, [r.status for r in answers]
        assert all(r.status == 429 and r.code == "rate_limited" for r in refused), refused[:3]
        assert all(int(r.headers["retry-after"]) >= 1 for r in refused)
        assert refused[0].headers["x-ratelimit-limit"] == "20"
        assert refused[0].headers["x-ratelimit-remaining"] == "0"
        # Another key has its own bucket.
        assert proxies[0].request("/v1/things", [("x-api-key", OTHER)]).status == 200
    finally:
        for proxy in proxies:
            proxy.stop()


def test_leases_cut_round_trips_and_never_overspend(upstream, limiters):
    # 600 a day: leases of up to 600 // 16 = 37 -> capped at 16 tokens. Stranding
    # is bounded by Envoys x workers x (16 - 1) = 60 tokens, for at most a second.
    n, bound = 600, 2 * 2 * 15
    proxies = envoys(upstream, policy(n), [r.port for r in limiters])
    try:
        answers = burst(proxies, 900, workers=24)
        admitted = sum(r.status == 200 for r in answers)
        assert n - bound <= admitted <= n, admitted
        # Whatever was leased and not spent may still be spent within the lease's life.
        later = sum(r.status == 200 for r in burst(proxies, 100))
        assert admitted + later <= n, (admitted, later)
        calls = sum(p.stats().get("wasmcustom.edge_auth.rate_limit.global.calls", 0) for p in proxies)
        leased = sum(p.stats().get("wasmcustom.edge_auth.rate_limit.global.leased", 0) for p in proxies)
        # Most admitted requests spent a leased token instead of a round trip.
        assert leased > admitted // 2 and calls > 0, (calls, leased)
    finally:
        for proxy in proxies:
            proxy.stop()


def test_a_refusal_by_the_engine_takes_nothing_from_local_buckets(upstream, limiters):
    # A local bucket of 3 and a global one of 2. Were the engine's refusals to
    # keep their local tokens, the fourth request would be refused locally
    # (x-ratelimit-limit 3); given back, every refusal is the engine's (limit 2).
    local = [{"name": "burst", "requests": 3, "per_s": 3600}]
    proxies = envoys(upstream, policy(2, local=local), [limiters[0].port], count=1)
    try:
        answers = [proxies[0].request("/v1/x", [("x-api-key", OTHER)]) for _ in range(5)]
        assert [r.status for r in answers] == [200, 200, 429, 429, 429]
        assert [r.headers["x-ratelimit-limit"] for r in answers[2:]] == ["2", "2", "2"]
    finally:
        proxies[0].stop()


@pytest.mark.parametrize("mode, status", [("deny", 503), ("allow", 200)])
def test_a_limiter_that_is_down_follows_the_failure_mode(upstream, mode, status):
    gone = free_port()  # nothing listens there
    proxy = Envoy(policy(100, failure_mode=mode, timeout_ms=200), upstream, edit=with_limiter([gone])).wait_ready()
    try:
        r = proxy.request("/v1/x", [("x-api-key", KEY)])
        assert r.status == status, r
        if status == 503:
            assert r.code == "rate_limit_unavailable" and r.headers["content-type"] == "application/json"
        assert proxy.stats()["wasmcustom.edge_auth.rate_limit.global.failed"] >= 1
    finally:
        proxy.stop()


def test_a_limiter_slower_than_the_timeout_is_a_failure(upstream):
    silent = Silent()
    proxy = Envoy(policy(100, timeout_ms=100), upstream, edit=with_limiter([silent.port])).wait_ready()
    try:
        started = time.monotonic()
        r = proxy.request("/v1/x", [("x-api-key", KEY)])
        assert r.status == 503 and r.code == "rate_limit_unavailable", r
        assert time.monotonic() - started < 5
    finally:
        proxy.stop()
        silent.stop()


def test_redis_stopped_means_the_limiter_answers_errors(upstream):
    redis = RedisServer()
    rls = Rls(redis.url)
    proxy = Envoy(policy(100), upstream, edit=with_limiter([rls.port])).wait_ready()
    try:
        assert proxy.request("/v1/x", [("x-api-key", KEY)]).status == 200
        redis.stop()
        r = proxy.request("/v1/x", [("x-api-key", KEY)])
        assert r.status == 503 and r.code == "rate_limit_unavailable", r
    finally:
        proxy.stop()
        rls.stop()
        redis.stop()


def test_a_redis_cluster_keeps_the_bucket_exact(upstream):
    cluster = RedisCluster()
    started = [Rls(cluster.url), Rls(cluster.url)]
    proxies = envoys(upstream, policy(20), [r.port for r in started])
    try:
        answers = burst(proxies, 50)
        assert sum(r.status == 200 for r in answers) == 20
    finally:
        for proxy in proxies:
            proxy.stop()
        for rls in started:
            rls.stop()
        cluster.stop()


NATIVE = """
static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: native
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route:
                  cluster: upstream
                  rate_limits:
                  - actions:
                    - request_headers: {{header_name: x-caller, descriptor_key: edge_auth_caller}}
                    - generic_key: {{descriptor_key: edge_auth_bucket, descriptor_value: standard.day}}
                    - generic_key: {{descriptor_key: requests, descriptor_value: "{requests}"}}
                    - generic_key: {{descriptor_key: per_s, descriptor_value: "86400"}}
          http_filters:
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: edge-auth
              failure_mode_deny: true
              timeout: 1s
              rate_limit_service:
                transport_api_version: V3
                grpc_service: {{envoy_grpc: {{cluster_name: edge_auth_rls}}}}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream}}}}}}}}}]}}]
  - {rls}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: {admin}}}}}
"""


def test_envoys_native_ratelimit_filter_shares_the_buckets(upstream, limiters, tmp_path):
    """Envoy's own filter, configured only from the documented descriptor entries,
    charges the same bucket as edge-auth: together they admit exactly N."""
    n = 10
    port, admin = free_port(), free_port()
    config = tmp_path / "native.yaml"
    config.write_text(NATIVE.format(port=port, admin=admin, upstream=upstream.port, requests=n,
                                    rls=json.dumps(grpc_cluster("edge_auth_rls", [limiters[1].port]))))
    native = subprocess.Popen([str(ENVOY_BIN), "-c", str(config), "--concurrency", "1", "--disable-hot-restart",
                               "-l", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = Envoy(policy(n), upstream, edit=with_limiter([limiters[0].port])).wait_ready()
    try:
        import http.client

        def via_native():
            for _ in range(100):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                    conn.request("GET", "/v1/native", headers={"x-caller": CALLER})
                    status = conn.getresponse().status
                    conn.close()
                    return status
                except OSError:
                    time.sleep(0.1)
            raise RuntimeError("the native Envoy never answered")

        statuses = []
        for i in range(2 * n):
            statuses.append(via_native() if i % 2 else proxy.request("/v1/x", [("x-api-key", KEY)]).status)
        assert statuses.count(200) == n, statuses
        assert set(statuses) == {200, 429}, statuses
    finally:
        proxy.stop()
        native.terminate()
        native.wait(10)
