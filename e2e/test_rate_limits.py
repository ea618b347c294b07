"""Per-key token buckets shared by every Envoy worker, end to end."""

import http.client
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import pytest
from demo_upstream import LoopbackServer

from harness import Envoy, key_hash

BURST = "sk_live_acme_BurstKey01"
OTHER = "sk_live_acme_OtherKey01"
REFILL = "sk_live_acme_RefillKey01"
UNLIMITED = "sk_live_acme_Unlimited01"
N = 20


def policy():
    def key(key_id, key, plan=None):
        record = {"id": key_id, "hash": key_hash(key), "org": "o", "account": "acme"}
        if plan:
            record["plan"] = plan
        return record

    return {
        "api_keys": {"keys": [
            key("key_burst", BURST, "burst"),
            key("key_other", OTHER, "burst"),
            key("key_refill", REFILL, "refill"),
            key("key_unlimited", UNLIMITED),
        ]},
        "rate_limits": {"plans": {
            # N per hour: no token comes back during the test.
            "burst": [{"name": "burst", "requests": N, "per_s": 3600}],
            # 2 tokens, one back every 2 s.
            "refill": [{"name": "burst", "requests": 2, "per_s": 4},
                       {"name": "day", "requests": 1000, "per_s": 86400}],
        }},
    }


@pytest.fixture(scope="module", params=[2, 4], ids=["concurrency-2", "concurrency-4"])
def envoy(request, envoy_factory):
    return envoy_factory(policy(), concurrency=request.param)


def burst(envoy, key, count, marker):
    """`count` requests at once, each on its own connection."""
    def one(_):
        return envoy.request(f"/v1/tasks?probe={marker}", [("x-api-key", key)])

    with ThreadPoolExecutor(max_workers=32) as pool:
        return list(pool.map(one, range(count)))


def test_a_plan_of_n_admits_exactly_n_of_a_concurrent_burst(envoy, upstream):
    marker = uuid.uuid4().hex
    responses = burst(envoy, BURST, 4 * N, marker)
    ok = [r for r in responses if r.status == 200]
    limited = [r for r in responses if r.status == 429]
    assert (len(ok), len(limited)) == (N, 3 * N), [r.status for r in responses]
    assert len([r for r in upstream.requests() if marker in r[1]]) == N

    for r in limited:
        assert r.code == "rate_limited"
        body = r.json()["error"]
        assert body["retry_after"] >= 1 and int(r.headers["retry-after"]) == body["retry_after"]
        assert r.headers["x-ratelimit-limit"] == str(N)
        assert r.headers["x-ratelimit-remaining"] == "0"
        assert int(r.headers["x-ratelimit-reset"]) > 0
    remaining = sorted(int(r.headers["x-ratelimit-remaining"]) for r in ok)
    assert remaining == list(range(N)), "each admitted request saw one token fewer"

    # Other keys on the same plan have their own buckets.
    assert envoy.request("/v1/tasks", [("x-api-key", OTHER)]).status == 200
    # Callers without a plan are not limited and get no rate-limit headers.
    r = envoy.request("/v1/tasks", [("x-api-key", UNLIMITED)])
    assert r.status == 200 and "x-ratelimit-limit" not in r.headers


def test_invalid_credentials_never_drain_a_bucket(envoy):
    for _ in range(5):
        assert envoy.request("/v1/tasks", [("x-api-key", "sk_live_acme_Forged")]).code == "invalid_api_key"
    assert envoy.request("/v1/tasks", [("x-api-key", OTHER)]).status == 200


def test_tokens_come_back_at_the_configured_rate(envoy):
    statuses = [envoy.request("/v1/tasks", [("x-api-key", REFILL)]).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    refused = envoy.request("/v1/tasks", [("x-api-key", REFILL)])
    assert refused.headers["retry-after"] == "2"
    time.sleep(2.2)  # one token (every 2 s) is back, not two
    statuses = [envoy.request("/v1/tasks", [("x-api-key", REFILL)]).status for _ in range(2)]
    assert statuses == [200, 429]


def test_rate_limited_responses_are_counted(envoy):
    stats = envoy.stats()
    assert stats["wasmcustom.edge_auth.denied.rate_limited"] >= 3 * N
    assert stats.get("wasmcustom.edge_auth.rate_limit.table_full", 0) == 0
    assert stats.get("wasmcustom.edge_auth.rate_limit.contended", 0) == 0


class _OwnLimits(BaseHTTPRequestHandler):
    """An upstream that sends x-ratelimit-* of its own, in any case."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("X-RateLimit-Limit", "999")
        self.send_header("x-ratelimit-remaining", "998")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_the_edge_quota_replaces_the_one_upstream_sends():
    """Clients see one x-ratelimit-limit, the edge's: the filter adds its
    headers only when upstream sent none, and sets them otherwise."""
    own = LoopbackServer(0, _OwnLimits).start()
    envoy = Envoy(policy(), own)
    try:
        envoy.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", envoy.port, timeout=10)
        conn.request("GET", "/v1/tasks", headers={"x-api-key": OTHER})
        response = conn.getresponse()
        response.read()
        conn.close()
        headers = [(k.lower(), v) for k, v in response.getheaders()]
        assert response.status == 200
        assert [v for k, v in headers if k == "x-ratelimit-limit"] == [str(N)], headers
        assert len([v for k, v in headers if k == "x-ratelimit-remaining"]) == 1, headers
        assert len([v for k, v in headers if k == "x-ratelimit-reset"]) == 1, headers
    finally:
        envoy.stop()
        own.shutdown()
