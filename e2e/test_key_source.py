"""Key distribution and revocation from a key server, end to end."""

import time

import pytest

from harness import key_hash, wait_for
from key_server import KeyServer, add_cluster

PATH = "/v1/edge/keys"
REFRESH = 0.25
KEY_A = "sk_live_acme_SourceKeyA1"
KEY_B = "sk_live_acme_SourceKeyB1"


def record(key_id, key):
    return {"id": key_id, "hash": key_hash(key), "org": "org_1", "account": "acme"}


@pytest.fixture(scope="module")
def server():
    srv = KeyServer().start()
    srv.publish(PATH, {"version": "1", "keys": [record("key_a", KEY_A)], "revoked": []})
    yield srv
    srv.shutdown()


@pytest.fixture(scope="module")
def envoy(envoy_factory, server):
    policy = {"api_keys": {"source": {"cluster": "keyserver", "path": PATH, "refresh_s": REFRESH}}}
    envoy = envoy_factory(policy, edit=add_cluster("keyserver", server.port))
    wait_for(lambda: envoy.request("/x", [("x-api-key", KEY_A)]).status == 200, 5)
    return envoy



def status(envoy, key):
    r = envoy.request("/x", [("x-api-key", key)])
    return r.status, r.code


def test_a_key_added_on_the_server_is_accepted_within_an_interval(envoy, server):
    assert status(envoy, KEY_B) == (401, "invalid_api_key")
    server.publish(PATH, {"version": "2", "keys": [record("key_a", KEY_A), record("key_b", KEY_B)]})
    took = wait_for(lambda: status(envoy, KEY_B) == (200, None), REFRESH + 1)
    assert took <= REFRESH + 1


def test_a_key_revoked_on_the_server_is_refused_within_an_interval(envoy, server):
    server.publish(PATH, {"version": "3", "keys": [record("key_a", KEY_A), record("key_b", KEY_B)],
                          "revoked": ["key_b"]})
    wait_for(lambda: status(envoy, KEY_B) == (403, "revoked_api_key"), REFRESH + 1)
    # Every worker refuses it from then on.
    assert {status(envoy, KEY_B) for _ in range(20)} == {(403, "revoked_api_key")}


def test_one_fetch_per_interval_per_process(envoy, server):
    start = time.monotonic()
    time.sleep(3)
    hits = len(server.hits_on(PATH, since=start))
    # --concurrency 2: two workers tick, one fetch per interval reaches the server.
    assert 3 / REFRESH - 3 <= hits <= 3 / REFRESH + 2, hits


@pytest.mark.parametrize("mode", ["error", "garbage", "hang"])
def test_a_failing_server_keeps_the_last_good_set(envoy, server, mode):
    before = envoy.stats().get("wasmcustom.edge_auth.keyset.refresh_failed", 0)
    server.mode = mode
    try:
        time.sleep(REFRESH * 6)
        assert status(envoy, KEY_A) == (200, None)
        assert status(envoy, KEY_B) == (403, "revoked_api_key")
    finally:
        server.mode = "ok"
    if mode != "hang":  # a hung fetch fails only at its 5 s timeout
        assert envoy.stats()["wasmcustom.edge_auth.keyset.refresh_failed"] > before


def test_refresh_counters_and_gauges(envoy):
    stats = envoy.stats()
    assert stats["wasmcustom.edge_auth.keyset.refresh_ok"] > 0
    assert stats["wasmcustom.edge_auth.keyset.size"] == 2
    assert stats["wasmcustom.edge_auth.keyset.generation"] >= 3
    assert 'key set version "3", 2 keys' in envoy.wait_for_log('key set version "3"')


def test_a_server_that_never_answers_gives_503(envoy_factory):
    # A cluster with nothing listening: the set never loads.
    policy = {"api_keys": {"source": {"cluster": "nowhere", "path": PATH, "refresh_s": REFRESH}}}
    envoy = envoy_factory(policy, edit=add_cluster("nowhere", 1))
    time.sleep(1)
    r = envoy.request("/x", [("x-api-key", KEY_A)])
    assert (r.status, r.code) == (503, "auth_unavailable"), r
    # Malformed credentials are still answered as such.
    assert envoy.request("/x", [("x-api-key", "a"), ("x-api-key", "b")]).code == "malformed_credentials"
