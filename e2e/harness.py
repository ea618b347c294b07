"""Runs the built module inside a real Envoy, configured from envoy/envoy.yaml.

Each `Envoy` takes the shipped config, points it at free loopback ports, a test
upstream and a test policy, and starts the pinned Envoy binary from the venv.

`EDGE_AUTH_BUILD=dynamic` runs the native build instead (`make dynamic`): the
wasm filter is swapped for the dynamic module with the same policy, and stats
are read back under the wasm build's names, so every test runs against both.
"""

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target/wasm32-wasip1/release/edge_auth.wasm"
BUILD = os.environ.get("EDGE_AUTH_BUILD", "wasm")
MODULE_DIR = ROOT / "target/release"  # libedge_auth.so
# The module's counters, under Envoy's default dynamic-module stats namespace.
NATIVE_STATS = "dynamicmodulescustom."
CLI = ROOT / "target/release/edge-auth"
ENVOY_YAML = ROOT / "envoy/envoy.yaml"
ENVOY_BIN = Path(sys.prefix) / "bin/envoy"
TEST_PEPPER = "test-pepper-e2e"

sys.path.insert(0, str(ROOT / "envoy"))
from demo_upstream import Upstream  # noqa: E402


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout, every=0.005):
    """Seconds until `condition()` held, polling every `every` s; fails the
    test after `timeout` s."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s")


def stop_process(proc):
    """Asks a process to stop (SIGTERM), then kills it if it has not within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def key_hash(key, pepper=TEST_PEPPER):
    out = subprocess.run(
        [str(CLI), "key", "hash", "-"],
        input=key,
        capture_output=True,
        text=True,
        env={**os.environ, "EDGE_AUTH_PEPPER": pepper},
        check=True,
    )
    return out.stdout.strip()


def wasm_filter(config):
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        return hf["typed_config"]["config"]
    raise LookupError("no wasm filter in envoy.yaml")


def use_dynamic_module(config):
    """Swaps the wasm filter for the native module, with the policy it carried."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        policy = hf["typed_config"]["config"]["configuration"]["value"]
                        hf["name"] = "edge_auth"
                        hf["typed_config"] = {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3"
                                     ".DynamicModuleFilter",
                            "dynamic_module_config": {"name": "edge_auth"},
                            "filter_name": "edge_auth",
                            "filter_config": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                              "value": policy},
                        }


def set_policy(http_filter, text):
    """Sets the policy of an edge-auth entry of `http_filters`, whichever build it is."""
    typed = http_filter["typed_config"]
    if "filter_config" in typed:
        typed["filter_config"]["value"] = text
    else:
        typed["config"]["configuration"]["value"] = text


def shipped_policy_text():
    """The policy embedded in envoy/envoy.yaml."""
    config = yaml.safe_load(ENVOY_YAML.read_text())
    return wasm_filter(config)["configuration"]["value"]


class EnvoyFailed(Exception):
    def __init__(self, message, log):
        super().__init__(f"{message}\n--- envoy log ---\n{log[-4000:]}")
        self.log = log


class Envoy:
    def __init__(self, policy, upstream, pepper=TEST_PEPPER, concurrency=2, edit=None, secrets=None):
        """`edit`, if given, may change the Envoy config (a dict) before start.
        `secrets` are environment variables for the filter: the wasm VM's
        (`vm_config.environment_variables`), or Envoy's own for the native build."""
        self.dir = Path(tempfile.mkdtemp(prefix="edge-auth-e2e-"))
        self.port = free_port()
        self.admin_port = free_port()
        config = yaml.safe_load(ENVOY_YAML.read_text())
        listener = config["static_resources"]["listeners"][0]
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": self.port}
        config["admin"]["address"]["socket_address"]["port_value"] = self.admin_port
        cluster = config["static_resources"]["clusters"][0]
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        endpoint["address"]["socket_address"]["port_value"] = upstream.port
        wasm = wasm_filter(config)
        wasm["vm_config"]["code"]["local"]["filename"] = str(WASM)
        wasm["configuration"]["value"] = policy if isinstance(policy, str) else json.dumps(policy)
        if secrets:
            wasm["vm_config"].setdefault("environment_variables", {})["key_values"] = dict(secrets)
        if BUILD == "dynamic":
            use_dynamic_module(config)
        if edit:
            edit(config)
        self.config_path = self.dir / "envoy.json"
        self.config_path.write_text(json.dumps(config))
        self.log_path = self.dir / "envoy.log"
        env = {k: v for k, v in os.environ.items() if k != "EDGE_AUTH_PEPPER"}
        if pepper is not None:
            env["EDGE_AUTH_PEPPER"] = pepper
        if BUILD == "dynamic":
            env["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(MODULE_DIR)
            env.update(secrets or {})
        self.proc = subprocess.Popen(
            [
                str(ENVOY_BIN),
                "-c", str(self.config_path),
                "--concurrency", str(concurrency),
                "--disable-hot-restart",
                "--log-path", str(self.log_path),
                "--file-flush-interval-msec", "50",
                "-l", "info",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def log(self):
        try:
            return self.log_path.read_text()
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text, timeout=5):
        """The log once it contains `text` (Envoy writes its log file in batches)."""
        deadline = time.monotonic() + timeout
        while text not in (log := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return log

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise EnvoyFailed(f"envoy exited with {self.proc.returncode}", self.log())
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise EnvoyFailed("envoy did not become ready", self.log())

    def wait_exit(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def request(self, path="/", headers=(), method="GET"):
        """Sends one request; `headers` is a list of (name, value) so names may repeat."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            for name, value in headers:
                conn.putheader(name, value)
            conn.endheaders()
            resp = conn.getresponse()
            body = resp.read()
            return Response(resp.status, resp.getheaders(), body)
        finally:
            conn.close()

    def stats(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats?format=json") as r:
            data = json.load(r)
        stats = {s["name"]: s.get("value") for s in data["stats"] if "name" in s}
        native = {"wasmcustom." + k[len(NATIVE_STATS):]: v for k, v in stats.items() if k.startswith(NATIVE_STATS)}
        return {**stats, **native}

    def stop(self):
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class Response:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body

    def json(self):
        return json.loads(self.body)

    @property
    def code(self):
        """The decision-table code of a JSON denial, or None."""
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def upstream_headers(self):
        """For forwarded requests: the headers the demo upstream received."""
        return self.json()["headers"]

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def start_upstream():
    return Upstream().start()
