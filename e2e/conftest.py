import pytest

from harness import Envoy, start_upstream


@pytest.fixture(scope="session")
def upstream():
    server = start_upstream()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def envoy_factory(upstream):
    """Starts Envoys with a given policy; stops them at the end of the module."""
    started = []

    def start(policy, ready=True, **kwargs):
        """`kwargs` go to `Envoy` (pepper, concurrency, edit)."""
        envoy = Envoy(policy, upstream, **kwargs)
        started.append(envoy)
        return envoy.wait_ready() if ready else envoy

    yield start
    for envoy in started:
        envoy.stop()
