"""Revocation in milliseconds: long polls and changes-only answers from
`edge-auth keys serve` and a long-polling test server, end to end."""

import time

import pytest

from harness import key_hash, wait_for
from keys_serve import PATH, KeysServe
from key_server import add_cluster
from longpoll_server import LongPollServer

REFRESH = 30  # polling alone would take up to 30 s
KEYS = {f"key_{n}": f"sk_live_acme_Revocation{n:04d}" for n in range(6)}


@pytest.fixture(scope="module")
def records():
    return {key_id: {"id": key_id, "hash": key_hash(key), "org": "org_1", "account": "acme"}
            for key_id, key in KEYS.items()}


def policy(cluster="keyserver"):
    return {"api_keys": {"source": {"cluster": cluster, "path": PATH, "refresh_s": REFRESH}}}


def status(envoy, key_id):
    r = envoy.request("/x", [("x-api-key", KEYS[key_id])])
    return r.status



@pytest.fixture(scope="module")
def served(records):
    server = KeysServe([records["key_0"], records["key_1"], records["key_2"]]).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def envoy(envoy_factory, served):
    envoy = envoy_factory(policy(), edit=add_cluster("keyserver", served.port))
    wait_for(lambda: status(envoy, "key_0") == 200, 10)
    return envoy


def test_a_revocation_is_refused_at_once_not_at_refresh(envoy, served, records):
    # Let the filter's long poll settle on the current version.
    time.sleep(0.5)
    served.write([records["key_0"], records["key_1"], records["key_2"]], ["key_1"])
    took = wait_for(lambda: status(envoy, "key_1") == 403, 2)
    assert took < 2, took
    assert {status(envoy, "key_1") for _ in range(20)} == {403}
    m = served.metrics()
    assert m["edge_auth_keyserver_long_polls_total"] >= 1
    assert m['edge_auth_keyserver_answers_total{answer="changes"}'] >= 1, m


def test_changes_only_answers_are_applied(envoy, served, records):
    served.write([records["key_0"], records["key_2"], records["key_3"]], ["key_1"])
    wait_for(lambda: status(envoy, "key_3") == 200, 2)
    assert status(envoy, "key_1") == 401  # removed
    assert "changes on" in envoy.wait_for_log("changes on")
    assert envoy.stats()["wasmcustom.edge_auth.keyset.size"] == 3


def test_an_invalid_file_is_refused_and_the_last_good_set_served(envoy, served, records):
    duplicate = dict(records["key_4"], id="key_0")
    served.write([records["key_0"], records["key_2"], records["key_3"], duplicate], [])
    wait_for(lambda: "refused" in served.log(), 2)
    time.sleep(0.3)
    assert status(envoy, "key_3") == 200 and status(envoy, "key_1") == 401
    assert served.metrics()['edge_auth_keyserver_reloads_total{result="refused"}'] >= 1


def test_the_server_restarting(envoy, served, records):
    served.stop()
    served.write([records["key_0"], records["key_2"], records["key_3"]], ["key_3"])
    time.sleep(0.5)
    assert status(envoy, "key_3") == 200, "the last good set, while the server is down"
    served.start()
    wait_for(lambda: status(envoy, "key_3") == 403, 6)


def test_two_envoys_with_two_workers_each_see_the_revocation(envoy_factory, served, records):
    envoys = [envoy_factory(policy(), edit=add_cluster("keyserver", served.port)) for _ in range(2)]
    for e in envoys:
        wait_for(lambda e=e: status(e, "key_0") == 200, 10)
    time.sleep(0.5)
    served.write([records["key_0"], records["key_2"], records["key_3"]], ["key_3", "key_2"])
    for e in envoys:
        wait_for(lambda e=e: status(e, "key_2") == 403, 2)
    # New connections land on both workers of each Envoy: every one refuses.
    for e in envoys:
        assert {status(e, "key_2") for _ in range(30)} == {403}


@pytest.fixture
def longpoll(records):
    server = LongPollServer().start()
    server.publish([records["key_0"], records["key_1"]])
    yield server
    server.shutdown()


def envoy_on(envoy_factory, server):
    envoy = envoy_factory(policy("lp"), edit=add_cluster("lp", server.port))
    wait_for(lambda: status(envoy, "key_0") == 200, 10)
    time.sleep(0.3)
    return envoy


def test_a_gap_is_answered_with_the_whole_set(envoy_factory, longpoll, records):
    envoy = envoy_on(envoy_factory, longpoll)
    longpoll.forget_history()
    # The filter now holds a version the server has forgotten.
    longpoll.publish([records["key_0"], records["key_1"], records["key_4"]])
    wait_for(lambda: status(envoy, "key_4") == 200, 2)
    longpoll.revoke("key_4")
    wait_for(lambda: status(envoy, "key_4") == 403, 2)


def test_changes_on_a_base_the_filter_lacks_make_it_ask_for_the_whole_set(envoy_factory, longpoll, records):
    envoy = envoy_on(envoy_factory, longpoll)
    longpoll.mode = "wrong-base"
    before = len(longpoll.answers())
    longpoll.revoke("key_1")
    wait_for(lambda: status(envoy, "key_1") == 403, 4)
    assert any(tag is None for _, tag, _ in longpoll.answers()[before:]), "asked for the whole set"
    assert "asking for the whole set" in envoy.wait_for_log("asking for the whole set")


def test_a_failing_long_poll_server_keeps_the_last_good_set(envoy_factory, longpoll, records):
    envoy = envoy_on(envoy_factory, longpoll)
    longpoll.mode = "error"
    longpoll.revoke("key_1")  # wakes the held poll: it answers 500
    wait_for(lambda: envoy.stats().get("wasmcustom.edge_auth.keyset.refresh_failed", 0) > 0, 3)
    assert status(envoy, "key_0") == 200 and status(envoy, "key_1") == 200
    longpoll.mode = "ok"
    wait_for(lambda: status(envoy, "key_1") == 403, 5)  # retried within 2 s


def test_a_slow_long_poll_server_never_stalls_requests(envoy_factory, longpoll, records):
    envoy = envoy_on(envoy_factory, longpoll)
    longpoll.delay = 1.5
    longpoll.revoke("key_1")
    worst = 0.0
    for _ in range(30):
        start = time.monotonic()
        assert status(envoy, "key_0") == 200
        worst = max(worst, time.monotonic() - start)
    assert worst < 0.5, worst
    wait_for(lambda: status(envoy, "key_1") == 403, 6)


def test_plain_polling_servers_still_work_at_refresh_s(envoy_factory, records):
    # The demo upstream plays a key server that answers at once.
    from key_server import KeyServer
    server = KeyServer().start()
    try:
        server.publish(PATH, {"version": "1", "keys": [records["key_0"], records["key_5"]]})
        envoy = envoy_factory({"api_keys": {"source": {"cluster": "ks", "path": PATH, "refresh_s": 0.5}}},
                              edit=add_cluster("ks", server.port))
        wait_for(lambda: status(envoy, "key_5") == 200, 5)
        start = time.monotonic()
        time.sleep(2)
        hits = len(server.hits_on(PATH, since=start))
        assert 2 <= hits <= 6, hits  # one fetch per refresh_s, no tight loop
        server.publish(PATH, {"version": "2", "keys": [records["key_0"], records["key_5"]], "revoked": ["key_5"]})
        wait_for(lambda: status(envoy, "key_5") == 403, 2)
    finally:
        server.shutdown()
