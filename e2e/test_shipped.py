"""Everything shipped under envoy/ is consistent and accepted by the real tools."""

import json
import os
import re
import subprocess

import pytest
import yaml

from harness import CLI, ENVOY_BIN, MODULE_DIR, ROOT, WASM, shipped_policy_text, use_dynamic_module

DEMO_PEPPER = "demo-pepper-not-for-production"
DEMO_JWT_SECRET = "demo-jwt-secret-not-for-production-0001"
# What envoy/run_local.py and docker-compose give the demo policy's *_env variables.
DEMO_ENV = {"EDGE_AUTH_PEPPER": DEMO_PEPPER, "EDGE_AUTH_DEMO_JWT_SECRET": DEMO_JWT_SECRET}
ENVOY_CONFIGS = ["envoy/envoy.yaml", "envoy/envoy-dynamic.yaml"]


def policy_check(path):
    env = {**os.environ, **DEMO_ENV}
    return subprocess.run([str(CLI), "policy", "check", str(path)], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("config", ENVOY_CONFIGS)
def test_real_envoy_validates_every_shipped_config(config):
    # Validate mode loads the module and configures it, so a bad policy fails here too.
    # The native config loads libedge_auth.so (`make dynamic`) from the search path.
    env = {**os.environ, **DEMO_ENV, "ENVOY_DYNAMIC_MODULES_SEARCH_PATH": str(MODULE_DIR)}
    out = subprocess.run(
        [str(ENVOY_BIN), "--mode", "validate", "-c", config, "-l", "error"],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout + out.stderr


def shipped_policies(tmp_path):
    istio = list(yaml.safe_load_all((ROOT / "envoy/istio/wasmplugin.yaml").read_text()))
    plugin = next(d for d in istio if d["kind"] == "WasmPlugin")
    istio_policy = tmp_path / "istio-policy.json"
    istio_policy.write_text(json.dumps(plugin["spec"]["pluginConfig"]))
    embedded = tmp_path / "envoy-yaml-policy.json"
    embedded.write_text(shipped_policy_text())
    return [ROOT / "envoy/policy.json", istio_policy, embedded]


def test_every_shipped_policy_passes_policy_check(tmp_path):
    for path in shipped_policies(tmp_path):
        out = policy_check(path)
        assert out.returncode == 0, f"{path}: {out.stderr}"


def test_envoy_yaml_embeds_the_demo_policy():
    assert json.loads(shipped_policy_text()) == json.loads((ROOT / "envoy/policy.json").read_text())


def test_the_native_config_is_envoy_yaml_with_the_dynamic_module():
    """envoy/envoy-dynamic.yaml is envoy/envoy.yaml with the wasm filter
    swapped as the tests swap it (same policy, clusters, listener settings),
    without what only the wasm build publishes (route stats tags, access-log fields)."""
    native = yaml.safe_load((ROOT / "envoy/envoy-dynamic.yaml").read_text())
    expected = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    use_dynamic_module(expected)
    del expected["stats_config"]
    del expected["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]
    assert native == expected


def test_the_istio_plugin_fails_closed_and_takes_the_pepper_from_the_host():
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "envoy/istio/wasmplugin.yaml").read_text())}
    spec = docs["WasmPlugin"]["spec"]
    assert spec["failStrategy"] == "FAIL_CLOSE" and spec["phase"] == "AUTHN"
    assert spec["vmConfig"]["env"] == [{"name": "EDGE_AUTH_PEPPER", "valueFrom": "HOST"}]
    assert "pepper" not in json.dumps(spec["pluginConfig"]).replace("pepper_env", "")
    env = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"][0]
    assert env["valueFrom"]["secretKeyRef"]["name"] == docs["Secret"]["metadata"]["name"]


def test_shipped_configs_refuse_header_names_with_underscores():
    envoy_yaml = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    hcm = envoy_yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "envoy/istio/wasmplugin.yaml").read_text())}
    patch = docs["EnvoyFilter"]["spec"]["configPatches"][0]
    assert patch["match"]["listener"]["filterChain"]["filter"]["name"] == "envoy.filters.network.http_connection_manager"
    options = patch["patch"]["value"]["typed_config"]["common_http_protocol_options"]
    assert options["headers_with_underscores_action"] == "REJECT_REQUEST"
    selector = docs["EnvoyFilter"]["spec"]["workloadSelector"]["labels"]
    assert selector == docs["WasmPlugin"]["spec"]["selector"]["matchLabels"]


def test_docker_compose_runs_the_shipped_config_and_module():
    compose = yaml.safe_load((ROOT / "envoy/docker-compose.yaml").read_text())
    envoy = compose["services"]["envoy"]
    mounts = dict(v.rsplit(":", 2)[:2] for v in envoy["volumes"])
    envoy_yaml = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    wasm_path = envoy_yaml["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]["http_filters"][0]["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
    assert mounts["./envoy.yaml"] == f"{envoy['working_dir']}/envoy/envoy.yaml"
    assert mounts["../" + str(WASM.relative_to(ROOT))] == f"{envoy['working_dir']}/{wasm_path}"
    assert envoy["environment"] == DEMO_ENV
    upstream_mounts = [v.split(":")[0] for v in compose["services"]["upstream"]["volumes"]]
    assert "./keyset.json" in upstream_mounts and "./demo_upstream.py" in upstream_mounts


def test_the_dashboard_queries_only_metrics_the_module_defines():
    # The engine's catalogue, and the wasm build's per-route family.
    sources = (ROOT / "src/metrics.rs").read_text() + (ROOT / "src/wasm/metrics.rs").read_text()
    defined = set(re.findall(r'"(edge_auth\.[a-z_.]+)"', sources))
    names = {d.replace(".", "_") for d in defined}
    prefixes = {n + "_" for n in names}  # per-code families: edge_auth_denied_<code>
    text = (ROOT / "envoy/grafana-dashboard.json").read_text()
    used = set(re.findall(r"edge_auth_[a-z_]+", text))
    assert used
    for metric in used:
        assert metric in names or any(metric.startswith(p) for p in prefixes), metric


def test_the_limiter_manifests_agree_with_each_other():
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "envoy/istio/rls.yaml").read_text())}
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["args"][0] == "rls" and "--redis" in container["args"]
    assert docs["Service"]["spec"]["selector"] == pod["metadata"]["labels"]
    grpc = next(p for p in docs["Service"]["spec"]["ports"] if p["targetPort"] == "grpc")
    assert grpc["name"].startswith("grpc")
    assert "0.0.0.0:%d" % next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc") in container["args"]
    compose = yaml.safe_load((ROOT / "envoy/docker-compose.yaml").read_text())["services"]
    listen = compose["rls"]["command"][compose["rls"]["command"].index("--listen") + 1]
    envoy_yaml = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    cluster = next(c for c in envoy_yaml["static_resources"]["clusters"] if c["name"] == "edge_auth_rls")
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"]
    assert listen == f"{address['address']}:{address['port_value']}"
    assert "http2_protocol_options" in json.dumps(cluster)


def test_the_envoy_gateway_manifests_agree_and_carry_a_valid_policy(tmp_path):
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "envoy/gateway/edge-auth.yaml").read_text())}
    secret, proxy, gateway = docs["Secret"], docs["EnvoyProxy"], docs["Gateway"]
    route, policy = docs["HTTPRoute"], docs["EnvoyExtensionPolicy"]
    namespaces = {d["metadata"]["namespace"] for d in docs.values()}
    assert len(namespaces) == 1
    assert gateway["spec"]["infrastructure"]["parametersRef"] == {
        "group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": proxy["metadata"]["name"]}
    env = proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"]
    ref = env[0]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["stringData"]
    assert [p["name"] for p in route["spec"]["parentRefs"]] == [gateway["metadata"]["name"]]
    assert policy["spec"]["targetRefs"] == [
        {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": route["metadata"]["name"]}]
    (wasm,) = policy["spec"]["wasm"]
    assert wasm["failOpen"] is False and wasm["rootID"] == "edge_auth"
    config = wasm["config"]
    pepper_env = config["api_keys"]["pepper_env"]
    assert wasm["env"]["hostKeys"] == [pepper_env] == [e["name"] for e in env]
    assert "pepper" not in json.dumps(config).replace("pepper_env", "")
    version = re.search(r'^version = "(.*)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    assert wasm["code"]["type"] == "Image" and wasm["code"]["image"]["url"].endswith(f"/edge-auth:{version}")
    path = tmp_path / "gateway-policy.json"
    path.write_text(json.dumps(config))
    out = policy_check(path)
    assert out.returncode == 0, out.stderr
