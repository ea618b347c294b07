"""Key sets at scale, end to end: a large set fetched page by page and held
once per Envoy process, a revocation applied to it through a changes answer,
and a source that never loaded (row 16)."""

import hashlib
import hmac
import time

import pytest

from harness import TEST_PEPPER, key_hash, wait_for
from key_server import add_cluster
from keys_serve import KeysServe
from longpoll_server import LongPollServer

PATH = "/v1/edge/keys"
KEYS = 150_000
PAGE = 20_000  # 8 pages


def key(n):
    return f"sk_live_acme_Scale{n:07d}"



@pytest.fixture(scope="module")
def server():
    pepper = TEST_PEPPER.encode()
    records = [{"id": f"key_{n}", "hash": hmac.new(pepper, key(n).encode(), hashlib.sha256).hexdigest(),
                "org": "org_1", "account": "acme"} for n in range(KEYS)]
    srv = LongPollServer().start()
    srv.page_keys = PAGE
    srv.publish(records)
    yield srv
    srv.shutdown()


def status(envoy, n):
    return envoy.request("/x", [("x-api-key", key(n))]).status


def test_a_large_paged_set_is_served_and_revoked_through_changes(envoy_factory, server):
    policy = {"api_keys": {"source": {"cluster": "lp", "path": PATH, "refresh_s": 30}}}
    envoy = envoy_factory(policy, edit=add_cluster("lp", server.port))
    loaded = wait_for(lambda: status(envoy, KEYS - 1) == 200, 15)
    print(f"\n{KEYS} keys in {KEYS // PAGE + 1} pages live after {loaded:.2f} s")
    assert len([h for h in server.hits if h[1] == "page"]) >= KEYS // PAGE
    # Keys from the first, middle and last pages, on both workers.
    for n in [0, 1, PAGE - 1, PAGE, 3 * PAGE + 17, KEYS // 2, KEYS - PAGE, KEYS - 1] * 2:
        assert status(envoy, n) == 200, n
    r = envoy.request("/x", [("x-api-key", key(KEYS))])
    assert (r.status, r.code) == (401, "invalid_api_key")
    stats = envoy.stats()
    prefix = "wasmcustom."
    wait_for(lambda: envoy.stats()[f"{prefix}edge_auth.keyset.size"] == KEYS, 5)
    assert stats[f"{prefix}edge_auth.keyset.refresh_ok"] >= 1
    # A revocation arrives as a changes answer on the held long poll.
    time.sleep(0.3)
    server.revoke(f"key_{KEYS // 3}")
    took = wait_for(lambda: status(envoy, KEYS // 3) == 403, 3)
    print(f"revocation refused after {took * 1e3:.0f} ms")
    assert status(envoy, KEYS // 3 + 1) == 200
    assert envoy.request("/x", [("x-api-key", key(KEYS // 3))]).code == "revoked_api_key"


def test_keys_serve_pages_its_whole_answers(envoy_factory):
    records = [{"id": f"key_{n}", "hash": key_hash(key(n)), "org": "org_1", "account": "acme"} for n in range(50)]
    server = KeysServe(records, revoked=["key_3"], args=["--page-keys", "7"]).start()
    try:
        policy = {"api_keys": {"source": {"cluster": "ks", "path": PATH, "refresh_s": 30}}}
        envoy = envoy_factory(policy, edit=add_cluster("ks", server.port))
        wait_for(lambda: status(envoy, 49) == 200, 10)
        assert [status(envoy, n) for n in (0, 3, 7, 48)] == [200, 403, 200, 200]
        assert "50 keys, 1 revoked, 8 pages" in envoy.wait_for_log("8 pages")
        # A change arrives as changes on the long poll, not as pages again.
        time.sleep(0.3)
        server.write(records[:49], revoked=["key_3", "key_7"])
        wait_for(lambda: status(envoy, 7) == 403, 5)
        assert status(envoy, 49) == 401
    finally:
        server.stop()


def test_an_unknown_key_while_the_source_never_loaded_is_503_but_inline_keys_pass(envoy_factory):
    inline = "sk_live_acme_InlineKey0001"
    policy = {"api_keys": {
        "keys": [{"id": "key_inline", "hash": key_hash(inline), "org": "org_1", "account": "acme"}],
        "source": {"cluster": "nowhere", "path": PATH, "refresh_s": 0.25}}}
    envoy = envoy_factory(policy, edit=add_cluster("nowhere", 1))
    time.sleep(0.5)
    assert envoy.request("/x", [("x-api-key", inline)]).status == 200
    r = envoy.request("/x", [("x-api-key", key(1))])
    assert (r.status, r.code) == (503, "auth_unavailable"), r
