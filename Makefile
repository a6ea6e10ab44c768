# VoxCPM Serve: two commands on a fresh Debian machine.
#   make serve   install the service's dependencies if missing, then serve configs/local.yaml on http://localhost:7861
#   make test    install those plus the test tools (pytest, schemathesis, playwright, Chromium), then lint and test
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SERVICE_DEPS := $(VENV)/.installed-service
TEST_DEPS := $(VENV)/.installed-test
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export RAY_USAGE_STATS_ENABLED ?= 0

.PHONY: serve test lint docs configs bench soak cluster image image-cpu docker-smoke system-deps browser node clean

# FORWARDED_ALLOW_IPS empty: Serve's proxy (uvicorn) takes X-Forwarded-For from no one (docs/security.md).
serve: $(SERVICE_DEPS)
	FORWARDED_ALLOW_IPS= $(BIN)/serve run configs/local.yaml

test: $(TEST_DEPS) browser node lint
	$(BIN)/python -m pytest

lint: $(TEST_DEPS)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# docs/configuration.md from serve_app/config/ (a test checks it is current).
docs: $(SERVICE_DEPS)
	$(BIN)/python docs/configuration.py > docs/configuration.md.tmp && mv docs/configuration.md.tmp docs/configuration.md

# configs/container.yaml from local.yaml, the KubeRay manifest's serveConfigV2 from prod.yaml (a test checks both).
configs: $(SERVICE_DEPS)
	$(BIN)/python configs/generate.py

# The CPU benchmark suite (a few minutes); results, tables and charts land in benchmarks/results/.
bench: $(TEST_DEPS)
	cd benchmarks && ../$(BIN)/python streaming_vs_normal.py --repeat 2
	cd benchmarks && ../$(BIN)/python overhead.py --repeat 10 --variants default,haproxy
	cd benchmarks && ../$(BIN)/python load.py --replicas 2 --levels 1,2,4,8 --per-client 2
	cd benchmarks && ../$(BIN)/python batching.py --mode engine --levels 1,2,4,8,16,32 --repeat 3
	cd benchmarks && ../$(BIN)/python batching.py --mode http --levels 1,2,4,8,16,32 --repeat 3
	cd benchmarks && ../$(BIN)/python batching.py --mode http --engines batched --levels 1,2,4,8,16,32 --repeat 3 --model-core
	cd benchmarks && ../$(BIN)/python batching.py --mode http --engines batched --levels 1,2,4,8,16,32 --repeat 3 --model-core --data-plane haproxy
	cd benchmarks && ../$(BIN)/python batching.py --mode http --engines batched --levels 1,2,4,8,16,32 --repeat 3 --coalesce-lead-s 0.3
	cd benchmarks && ../$(BIN)/python incremental_vae.py --repeat 5
	cd benchmarks && ../$(BIN)/python vae_batch.py --repeat 30
	cd benchmarks && ../$(BIN)/python step_phases.py --levels 1,8,8,32
	cd benchmarks && ../$(BIN)/python model_thread.py --runs 3
	cd benchmarks && ../$(BIN)/python startup.py
	cd benchmarks && ../$(BIN)/python prompt_cache.py --repeat 8
	cd benchmarks && ../$(BIN)/python overload.py --factor 10 --repeat 2
	cd benchmarks && ../$(BIN)/python overload.py --factor 10 --repeat 2 --model-core
	cd benchmarks && ../$(BIN)/python overload.py --factor 10 --repeat 2 --model-core --data-plane haproxy

# 2,000 mixed requests watching the replicas for leaks (about ten minutes).
soak: $(TEST_DEPS)
	cd benchmarks && ../$(BIN)/python soak.py --requests 2000

# A two-node Ray cluster on this machine (CPU head + fake-GPU worker) running configs/prod.yaml's
# graph, driven from min to max replicas and back (a few minutes).
cluster: $(TEST_DEPS)
	cd benchmarks && ../$(BIN)/python cluster.py

# Container images (Dockerfile). BuildKit is needed (RUN --mount). The CA bundle goes to pip as a
# build secret, for networks whose TLS is intercepted; CPU_BASE_IMAGE=voxcpm-serve-base:bookworm
# (docker/local-base.sh) where public base images cannot be pulled.
DOCKER ?= docker
IMAGE ?= voxcpm-serve
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
CPU_BASE_IMAGE ?= debian:bookworm-slim
PIP_CERT ?= /etc/ssl/certs/ca-certificates.crt
PIP_CERT_SECRET := --secret id=pip_cert,src=$(PIP_CERT)
# More `docker build` options, e.g. IMAGE_ARGS='--build-arg PIP_EXTRA_INDEX_URL=...'.
IMAGE_ARGS ?=
IMAGE_BUILD = DOCKER_BUILDKIT=1 $(DOCKER) build $(if $(wildcard $(PIP_CERT)),$(PIP_CERT_SECRET)) $(IMAGE_ARGS)

image:
	$(IMAGE_BUILD) -t $(IMAGE):$(VERSION)-gpu .

image-cpu:
	$(IMAGE_BUILD) --build-arg BASE_IMAGE=$(CPU_BASE_IMAGE) --build-arg CONFIG=configs/container.yaml \
		-t $(IMAGE):$(VERSION)-cpu .

# Builds the CPU image, runs it, speaks through it and stops it (many minutes: not part of `make test`).
# Needs Docker with BuildKit; where public base images cannot be pulled, build one first (docker/local-base.sh)
# and pass it: make docker-smoke CPU_BASE_IMAGE=voxcpm-serve-base:bookworm
docker-smoke: $(SERVICE_DEPS)
	$(BIN)/python docker/smoke.py --base-image $(CPU_BASE_IMAGE) --docker $(DOCKER)

# FFmpeg's shared libraries decode VoxCPM 1.x prompt audio (torchaudio -> torchcodec); curl runs the
# seed's examples; venv support is a separate package on Debian.
system-deps:
	@missing=""; \
	for cmd in ffmpeg ffprobe curl; do command -v $$cmd >/dev/null || missing="$$missing ffmpeg curl"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$(echo $$missing | tr ' ' '\n' | sort -u); \
	fi

# Node runs the seed's JavaScript fetch example against the service (tests only).
node:
	@command -v node >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q nodejs; }

# Debian's Chromium, driven by Playwright, runs the playground's browser test (tests only).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }

# torch and torchaudio are pinned together in pyproject.toml (torchaudio must match torch exactly).
$(BIN)/python: | system-deps
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(SERVICE_DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The test tools and what the benchmarks use (psutil), on top of the service's dependencies.
$(TEST_DEPS): $(SERVICE_DEPS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) checkpoints .pytest_cache .ruff_cache
