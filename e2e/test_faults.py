"""Faults: policies swapped under traffic, key servers that are huge or slow."""

import json
import os
import threading
import time
import uuid

import pytest

from harness import key_hash, set_policy
from key_server import KeyServer, add_cluster

GOOD = "sk_live_acme_FaultGood01"
OTHER = "sk_live_acme_FaultOther1"


def policy(revoked=()):
    return {"api_keys": {"keys": [
        {"id": "key_good", "hash": key_hash(GOOD), "org": "o", "account": "acme"},
        {"id": "key_other", "hash": key_hash(OTHER), "org": "o", "account": "acme"}],
        "revoked": list(revoked)}}


class DynamicListener:
    """Moves the listener into an LDS file Envoy watches, so tests can swap it."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.path = os.path.join(self.dir, "lds.json")
        self.listener = None

    def __call__(self, config):
        self.listener = config["static_resources"].pop("listeners")[0]
        self._write(self.listener)
        config["node"] = {"id": "edge-auth-test", "cluster": "edge-auth"}
        config["dynamic_resources"] = {"lds_config": {
            "path_config_source": {"path": self.path, "watched_directory": {"path": self.dir}},
            "resource_api_version": "V3"}}

    def _write(self, listener):
        doc = {"resources": [{"@type": "type.googleapis.com/envoy.config.listener.v3.Listener", **listener}]}
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)  # atomic: Envoy sees the old file or the new one

    def swap_policy(self, text):
        listener = json.loads(json.dumps(self.listener))
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        set_policy(hcm["http_filters"][0], text)
        self._write(listener)


def test_policy_swaps_under_traffic_never_let_a_forged_request_through(envoy_factory, upstream, tmp_path):
    lds = DynamicListener(tmp_path)
    envoy = envoy_factory(json.dumps(policy()), edit=lds)
    deadline = time.monotonic() + 10
    while True:  # the listener arrives through LDS after Envoy is ready
        try:
            if envoy.request("/x", [("x-api-key", GOOD)]).status == 200:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the dynamic listener never came up"
        time.sleep(0.05)
    marker = uuid.uuid4().hex
    stop = threading.Event()
    forged_statuses = []

    def forge():
        while not stop.is_set():
            r = envoy.request(f"/x?forged={marker}", [("x-api-key", "sk_live_acme_Forged999")])
            forged_statuses.append(r.status)

    threads = [threading.Thread(target=forge) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        assert envoy.request("/x", [("x-api-key", GOOD)]).status == 200
        # A valid new policy (revoking the key in use) takes over.
        lds.swap_policy(json.dumps(policy(revoked=["key_good"])))
        deadline = time.monotonic() + 10
        while envoy.request("/x", [("x-api-key", GOOD)]).code != "revoked_api_key":
            assert time.monotonic() < deadline, "the new policy never applied"
            time.sleep(0.05)
        # An invalid policy is refused: Envoy keeps serving the last good one.
        lds.swap_policy('{"api_keys": {"keys": [{"id": "x", "hash": "not-hex", "org": "o", "account": "a"}]}}')
        time.sleep(1.5)
        assert envoy.request("/x", [("x-api-key", GOOD)]).code == "revoked_api_key"
        assert envoy.request("/x", [("x-api-key", OTHER)]).status == 200
        assert envoy.proc.poll() is None, "envoy died"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert forged_statuses and set(forged_statuses) == {401}, set(forged_statuses)
    assert [r for r in upstream.requests() if marker in r[1]] == []
    assert "edge-auth: config: api_keys.keys[0].hash" in envoy.wait_for_log("api_keys.keys[0].hash")


@pytest.fixture
def server():
    srv = KeyServer().start()
    yield srv
    srv.shutdown()


def envoy_with_key_server(envoy_factory, server, path):
    """An Envoy whose keys come from `server` at `path`, once GOOD works."""
    server.publish(path, {"version": "1", "keys": [{"id": "key_good", "hash": key_hash(GOOD), "org": "o",
                                                     "account": "acme"}]})
    envoy = envoy_factory({"api_keys": {"source": {"cluster": "ks", "path": path, "refresh_s": 0.2}}},
                          edit=add_cluster("ks", server.port))
    deadline = time.monotonic() + 5
    while envoy.request("/x", [("x-api-key", GOOD)]).status != 200:
        assert time.monotonic() < deadline, "the key set never loaded"
        time.sleep(0.05)
    return envoy


def test_a_huge_answer_never_replaces_a_good_set(envoy_factory, server):
    path = "/keys"
    envoy = envoy_with_key_server(envoy_factory, server, path)
    before = envoy.stats().get("wasmcustom.edge_auth.keyset.refresh_failed", 0)
    # 40 MB of records (over the 32 MiB limit), all of them revoking GOOD.
    filler = [{"id": f"k{i}", "hash": f"{i:064x}", "org": "o", "account": "acme"} for i in range(300_000)]
    server.publish(path, {"version": "2", "keys": filler, "revoked": ["key_good"]})
    deadline = time.monotonic() + 20
    while envoy.stats().get("wasmcustom.edge_auth.keyset.refresh_failed", 0) <= before:
        assert time.monotonic() < deadline, "the huge answer was never refused"
        time.sleep(0.2)
    assert envoy.request("/x", [("x-api-key", GOOD)]).status == 200
    assert envoy.proc.poll() is None


def test_a_slow_key_server_never_stalls_requests(envoy_factory, server):
    envoy = envoy_with_key_server(envoy_factory, server, "/slow")
    server.mode = "hang"  # answers nothing for 8 s
    try:
        time.sleep(0.5)
        worst = 0.0
        for _ in range(50):
            start = time.monotonic()
            assert envoy.request("/x", [("x-api-key", GOOD)]).status == 200
            worst = max(worst, time.monotonic() - start)
        assert worst < 1.0, f"a request waited {worst:.2f} s on the key server"
    finally:
        server.mode = "ok"
