"""`make run`: the demo upstream and Envoy with edge-auth, on localhost.

Run from the repository root (envoy/envoy.yaml names the module by a path
relative to it). Ctrl-C stops both.
"""

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from demo_upstream import Upstream

ROOT = Path(__file__).resolve().parent.parent
DEMO_PEPPER = "demo-pepper-not-for-production"
DEMO_KEY = "sk_live_acme_DemoKey0000000000000000000000000001"
REVOKED_KEY = "sk_live_acme_RevokedKey00000000000000000000000002"
SERVED_KEY = "sk_live_globex_ServedKey000000000000000000000005"
KEYS_SERVE = ["target/release/edge-auth", "keys", "serve", "--file", "envoy/keyset.json", "--listen", "127.0.0.1:8083"]


def main():
    upstream = Upstream(8081).start()
    # The key server of the envoy.yaml `keyserver` cluster.
    keys_serve = subprocess.Popen(KEYS_SERVE, cwd=ROOT)
    env = {**os.environ, "EDGE_AUTH_PEPPER": os.environ.get("EDGE_AUTH_PEPPER", DEMO_PEPPER)}
    envoy_bin = Path(sys.prefix) / "bin/envoy"
    envoy = subprocess.Popen(
        [str(envoy_bin), "-c", "envoy/envoy.yaml", "--concurrency", "2", "-l", "warning",
         "--component-log-level", "wasm:info"],
        cwd=ROOT, env=env,
    )
    try:
        for _ in range(300):
            if envoy.poll() is not None:
                sys.exit(f"envoy exited with {envoy.returncode}")
            try:
                urllib.request.urlopen("http://127.0.0.1:9901/ready", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        print(f"""
edge-auth is running: Envoy on http://localhost:10000 -> demo upstream on :{upstream.port}
(admin and stats: http://127.0.0.1:9901/stats/prometheus). Try:

  # a good key: 200, the upstream echo shows x-org-id, x-account-id, x-key-id ...
  curl -s localhost:10000/v1/agents -H 'Authorization: Bearer {DEMO_KEY}'

  # the same key as x-api-key
  curl -s localhost:10000/v1/agents -H 'x-api-key: {DEMO_KEY}'

  # a bad key: 401 invalid_api_key
  curl -si localhost:10000/v1/agents -H 'Authorization: Bearer sk_live_acme_NotARealKey'

  # a revoked key: 403 revoked_api_key
  curl -si localhost:10000/v1/agents -H 'x-api-key: {REVOKED_KEY}'

  # a public route: no credential needed, spoofed identity headers are stripped
  curl -s localhost:10000/api/accounts -H 'x-org-id: spoofed'

  # a key from the key server (edge-auth keys serve, serving envoy/keyset.json):
  curl -s localhost:10000/v1/agents -H 'x-api-key: {SERVED_KEY}'
  # revoke it without touching Envoy: add "key_served" to "revoked" in
  # envoy/keyset.json, and within milliseconds the same curl answers 403
  # (the filter's fetch is held open until the set changes).

  # counters and the key-set gauges
  curl -s 127.0.0.1:9901/stats/prometheus | grep edge_auth_

Ctrl-C to stop.
""", flush=True)
        envoy.wait()
    except KeyboardInterrupt:
        pass
    finally:
        envoy.terminate()
        envoy.wait()
        keys_serve.terminate()
        keys_serve.wait()
        upstream.shutdown()


if __name__ == "__main__":
    main()
