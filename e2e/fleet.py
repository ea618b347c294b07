"""Real Redis servers, a real Redis Cluster and real `edge-auth rls` processes for
the fleet tests, each stopped when its test module ends."""

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from harness import CLI, free_port, stop_process


def wait_for_port(port, proc=None, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def _require(binary):
    path = shutil.which(binary)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run `make redis-tools` (Debian's redis-server)")
    return path


class Process:
    """A child process that dies with the test, and its scratch directory."""

    def __init__(self, args, **kwargs):
        self.dir = Path(tempfile.mkdtemp(prefix="edge-auth-fleet-"))
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, cwd=self.dir, **kwargs)

    def ready(self, port):
        """Waits for the process to listen; stops it if it never does."""
        try:
            wait_for_port(port, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self):
        stop_process(self.proc)
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def cluster_port():
    """A free port whose cluster-bus port (+10000) is free and valid too."""
    for _ in range(100):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no port pair for a Redis Cluster node")


class RedisServer(Process):
    def __init__(self, *extra, port=None):
        self.port = port or free_port()
        super().__init__([
            _require("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", *extra,
        ])
        self.ready(self.port)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}"


class RedisCluster:
    """Three masters, slots spread by redis-cli, no replicas."""

    def __init__(self):
        self.nodes = []
        try:
            self._start()
        except BaseException:
            self.stop()  # no node outlives a cluster that failed to form
            raise

    def _start(self):
        for _ in range(3):
            self.nodes.append(RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                          port=cluster_port()))
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run([_require("redis-cli"), "--cluster", "create", *addresses, "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            info = subprocess.run([_require("redis-cli"), "-p", str(self.nodes[0].port), "cluster", "info"],
                                  capture_output=True, text=True).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.1)
        raise RuntimeError("the Redis Cluster never reached cluster_state:ok")

    @property
    def url(self):
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def stop(self):
        for node in self.nodes:
            node.stop()


class Rls(Process):
    """`edge-auth rls`, the fleet-wide limiter."""

    def __init__(self, redis_url):
        self.port = free_port()
        super().__init__([str(CLI), "rls", "--listen", f"127.0.0.1:{self.port}", "--redis", redis_url])
        self.ready(self.port)


class Silent:
    """A TCP server that accepts connections and never answers: a hung limiter."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]

    def stop(self):
        self.sock.close()


def grpc_cluster(name, ports):
    """An Envoy cluster speaking HTTP/2 (gRPC) to the given loopback ports."""
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": p}}}}
                for p in ports
            ]}],
        },
    }
