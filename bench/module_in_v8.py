"""The module's own cost per request and its host calls, without Envoy:
bench/module_in_v8.mjs in Node's V8, on compare.py's bench policy and the
request scenarios of bench/paired.py.

    bench/module_in_v8.py [MODULE.wasm ...]   (default: the release build)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from compare import MODULE, PEPPER, bench_policy
from paired import scenarios


def main():
    modules = sys.argv[1:] or [str(MODULE)]
    spec = {"policy": bench_policy(), "env": {"EDGE_AUTH_PEPPER": PEPPER},
            "scenarios": {name: list(s.headers.items()) for name, s in scenarios().items()}}
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(spec, f)
        f.flush()
        for module in modules:
            subprocess.run(["node", str(Path(__file__).with_name("module_in_v8.mjs")), module, f.name], check=True)


if __name__ == "__main__":
    main()
