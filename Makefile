# vxfabric: run `make help` for the targets.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

GO       ?= go
BUF      := $(GO) tool -modfile=tools/go.mod buf
BIN      := bin/vxfab
PKGS     := ./...
# Every test gets this long before go test kills it; make test as a whole stays well under 15 minutes.
TEST_TIMEOUT ?= 12m
export VXFAB_BIN := $(abspath $(BIN))

.PHONY: help deps build test test-unit test-privileged lint proto verify lab bench clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install what the lab and the privileged tests run (ip, bridge, sysctl, ping, nft) when missing (root, Debian)
	@need=""; \
	command -v ip >/dev/null && command -v bridge >/dev/null || need="$$need iproute2"; \
	command -v sysctl >/dev/null || need="$$need procps"; \
	command -v ping >/dev/null || need="$$need iputils-ping"; \
	command -v nft >/dev/null || need="$$need nftables"; \
	if [ -n "$$need" ]; then \
		[ "$$(id -u)" = 0 ] || { echo "deps: missing$$need (privileged tests will skip; as root, make deps installs them)" >&2; exit 0; }; \
		echo "deps: installing$$need"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$need >/dev/null; \
	fi

# The binary is static (CGO_ENABLED=0): no libc or dynamic loader is mapped into each process (about
# 1 MiB less RSS per agent) and it runs on any Linux distribution. Nothing in vxfabric needs cgo.
build: ## build the vxfab binary into bin/vxfab
	CGO_ENABLED=0 $(GO) build -o $(BIN) ./cmd/vxfab

# The packages whose tests run on etcd (etcdtest) run a second time on the in-process client that
# `vxfab server` uses on its embedded etcd; the first run reaches etcd over a socket, as a server
# reaches an external etcd.
ETCD_PKGS ?= ./controlplane/... ./nodeagent/...

test: deps build ## everything CI runs: unit, integration, and (as root) privileged and end-to-end tests
	$(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	VXFAB_TEST_ETCD_CLIENT=in-process $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(ETCD_PKGS)

test-unit: ## tests that need neither root nor namespaces
	VXFAB_SKIP_PRIVILEGED=1 $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

test-privileged: deps build ## only the privileged tests (root: real namespaces, VXLAN, bridges, nftables)
	@[ "$$(id -u)" = 0 ] || { echo "test-privileged needs root" >&2; exit 1; }
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run 'Privileged' $(PKGS)

lint: ## gofmt, go vet, buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); [ -z "$$out" ] || { echo "gofmt needed:"; echo "$$out"; exit 1; }
	$(GO) vet $(PKGS)
	$(BUF) lint

proto: ## regenerate the Go code of proto/ (offline)
	$(BUF) generate

verify: ## go mod tidy, regenerate protos, gofmt: fail on any diff (new files included)
	@git diff --quiet && [ -z "$$(git status --porcelain)" ] || { echo "verify: start from a clean tree (commit or stash first)"; exit 1; }
	$(GO) mod tidy
	cd tools && $(GO) mod tidy
	$(BUF) generate
	gofmt -w $$(git ls-files '*.go')
	@git diff --exit-code -- . && [ -z "$$(git status --porcelain)" ] || { git status --short; echo "verify: the tree changed (see above)"; exit 1; }

lab: deps build ## the main job: bring up a 3-host lab, build tenants and networks, print who reaches whom
	@[ "$$(id -u)" = 0 ] || { echo "make lab needs root (network namespaces)" >&2; exit 1; }
	$(BIN) lab up
	$(BIN) lab demo

bench: build ## benchmarks against the targets (bench/README.md); QUICK=1 for the reduced run
	@command -v iperf3 >/dev/null || [ "$$(id -u)" != 0 ] || { apt-get update -qq && apt-get install -y -qq iperf3; } >/dev/null || \
		echo "bench: could not install iperf3; the throughput benchmark will be skipped" >&2
	$(GO) run ./bench/cmd/vxbench -bin $(BIN) $(if $(QUICK),-quick)

clean: ## remove build output
	rm -rf bin
