"""The shipped demo setup: its policy passes the checker and envoy.yaml embeds it."""

import json
import os
import subprocess

from harness import CLI, ROOT, shipped_policy_text


def test_envoy_yaml_embeds_the_demo_policy():
    assert json.loads(shipped_policy_text()) == json.loads((ROOT / "envoy/policy.json").read_text())


def test_demo_policy_passes_policy_check():
    env = {**os.environ, "EDGE_AUTH_PEPPER": "demo-pepper-not-for-production"}
    out = subprocess.run([str(CLI), "policy", "check", str(ROOT / "envoy/policy.json")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout
