"""`edge-auth keys serve` as the tests and benchmarks run it: a key-set file
in a temporary directory, rewritten atomically, served on a free port."""

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from harness import CLI, free_port, stop_process

PATH = "/v1/edge/keys"


class KeysServe:
    def __init__(self, records, revoked=(), port=None, directory=None, args=()):
        self.args = list(args)
        self.dir = Path(directory or tempfile.mkdtemp(prefix="edge-auth-keys-"))
        self.file = self.dir / "keyset.json"
        self.port = port or free_port()
        self.proc = None
        self.log_path = self.dir / "keys-serve.log"
        self.write(records, revoked)

    def write(self, records, revoked=(), version="t"):
        """Replaces the file the way deploy tools do: a new file renamed over the old."""
        tmp = self.dir / ".keyset.json.tmp"
        tmp.write_text(json.dumps({"version": version, "keys": list(records), "revoked": list(revoked)}))
        os.replace(tmp, self.file)

    def start(self, timeout=20):
        self.proc = subprocess.Popen(
            [str(CLI), "keys", "serve", "--file", str(self.file), "--listen", f"127.0.0.1:{self.port}", *self.args],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "a"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{PATH}", timeout=1):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()  # never left running by a failed start
        raise AssertionError("keys serve did not start:\n" + self.log())

    def stop(self):
        return stop_process(self.proc) if self.proc else None

    def log(self):
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out
