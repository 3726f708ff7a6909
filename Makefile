# clustermesh — the two commands of the README are `make demo` and `make test`.
# Everything a target needs it installs itself (idempotently); CI runs
# `make test` on a clean clone as root.

GO      ?= go
BIN     := bin/clustermesh
PKGS    := ./...
# Privileged tests (eBPF maps, network namespaces) run for real as root; with
# CI=true they fail instead of skipping when not root (internal/testenv).
TESTFLAGS ?= -race -timeout 15m
# Packages with TestHeavy* tests (they skip under -race; `make test` runs them
# last, without it).
HEAVY_PKGS := ./localmesh ./meshapiserver

SHELL   := /bin/bash

.PHONY: all build demo demo-once bench-scale test test-k8s test-interop test-monitoring kube-apiserver coredns hubble promtool vet lint fuzz bench deps clean generate check-generate bpf-tools chromium ui-screenshot

all: build

deps:
	@command -v $(GO) >/dev/null || { echo "Go is required: install Go 1.26 (https://go.dev/dl)"; exit 1; }
	@$(GO) mod download

build: deps
	$(GO) build -o $(BIN) ./cmd/clustermesh

# The main job on the embedded default: a three-cluster mesh on loopback.
demo: build
	./$(BIN) demo

demo-once: build
	./$(BIN) demo --once

vet: deps
	$(GO) vet $(PKGS)

# On a cold machine the longest steps are the kube-apiserver build (about
# 6 minutes alone, 24 beside vet and the tests), hubble's, and the Cilium
# interop modules' fetch (about 9 minutes) and compile. They start first, in the
# background, beside the tools' installs and vet: kube-apiserver at normal
# priority (the Kubernetes tests wait for it), the others niced. Then every
# test with -race of the packages that need none of them; the packages with
# tests against real kube-apiservers (K8S_PKGS) or with the real hubble CLI
# (HUBBLE_PKGS) once their binary is there; the heavy tests (hundreds of
# thousands of entries; they skip under -race) last, without -race, on a
# machine no build competes for. Then the alert rules' tests (promtool) and
# the interop tests. Each step's start is printed with the time.
test:
	@set -eo pipefail; \
	step() { echo "make test: $$(date +%T) $$*"; }; \
	step "building kube-apiserver, CoreDNS and hubble and fetching the interop modules in the background (the first time only)"; \
	{ tools/kube-apiserver/build.sh $(KUBE_APISERVER) && tools/coredns/build.sh $(COREDNS); } & build=$$!; \
	nice -n 10 tools/hubble/build.sh $(CLUSTERMESH_HUBBLE) & hubble=$$!; \
	for m in $(INTEROP_MODULES); do (cd $$m && nice -n 15 $(GO) list -mod=readonly -deps -test ./... >/dev/null 2>&1 && \
	  GOPROXY=off nice -n 15 $(GO) vet ./... >/dev/null 2>&1) || true; done & interop=$$!; \
	trap 'kill $$build $$hubble $$interop 2>/dev/null || true' EXIT; \
	$(MAKE) --no-print-directory vet check-generate promtool chromium; \
	step "tests with -race"; \
	$(GO) test $(TESTFLAGS) -skip '^TestHubbleCLI' $$($(GO) list $(PKGS) | grep -v -x $(foreach p,$(K8S_PKGS) $(HUBBLE_PKGS),-e $(MODULE)/$(patsubst ./%,%,$(p)))); \
	step "waiting for kube-apiserver and CoreDNS"; \
	wait $$build || { echo "building kube-apiserver or CoreDNS failed"; exit 1; }; \
	step "tests against real kube-apiservers"; \
	$(GO) test $(TESTFLAGS) $(K8S_PKGS); \
	step "waiting for hubble"; \
	wait $$hubble || { echo "building hubble failed"; exit 1; }; \
	step "tests with the hubble CLI"; \
	$(GO) test $(TESTFLAGS) $(HUBBLE_PKGS); \
	$(GO) test $(TESTFLAGS) -run '^TestHubbleCLI' ./localmesh; \
	step "heavy tests, without -race"; \
	$(GO) test -count=1 -timeout 15m -run '^TestHeavy' $(HEAVY_PKGS); \
	step "waiting for the interop modules"; \
	wait $$interop; \
	step "alert rules and interop tests"
	$(MAKE) --no-print-directory test-monitoring
	$(MAKE) --no-print-directory test-interop

# Cilium v1.20.2's own code against ours, both ways, in modules of their own
# so that Cilium stays out of our go.mod: interop/ (requires ours) reads our
# apiserver with Cilium's etcd client, stores and validators, and has our
# agent read an etcd populated by Cilium's etcdinit, clustercfg and
# SyncStores; interop/ciliumagent/ (does not require ours: Cilium's client-go
# is older) runs Cilium's whole ClusterMesh against our apiserver binary.
# Their modules are fetched into the module cache once (the first time; the
# Cilium module graph took about 9 minutes to fetch cold), and their builds
# stay in the Go build cache; the tests then run with GOPROXY=off, so a warm
# run downloads nothing, and a module that cannot be fetched fails the target
# saying so. Without -race: Cilium is big.
INTEROP_MODULES := interop interop/ciliumagent
test-interop: build
	@set -eo pipefail; for m in $(INTEROP_MODULES); do \
	  (cd $$m && GOPROXY=off $(GO) list -mod=readonly -deps -test ./... >/dev/null 2>&1) && continue; \
	  echo "test-interop: modules of $$m are not all in the module cache ($$($(GO) env GOMODCACHE)): fetching them"; \
	  (cd $$m && $(GO) list -mod=readonly -deps -test ./... >/dev/null) || \
	    { echo "test-interop: FAILED: cannot fetch the modules of $$m (above); the Cilium interop tests did not run"; exit 1; }; \
	done
	cd interop && GOPROXY=off $(GO) test -count=1 -timeout 10m ./...
	cd interop/ciliumagent && GOPROXY=off CLUSTERMESH_BIN=$(abspath $(BIN)) $(GO) test -count=1 -timeout 10m ./...

# The tests against real API servers (TestK8s*, internal/kubetest) run the
# kube-apiserver that tools/kube-apiserver builds from the Go module proxy,
# once, into a cache outside the repo (the first build takes about 6 minutes
# and 2.4 GB of module and build cache; later runs find it and do nothing).
KUBE_VERSION   := v1.37.1
KUBE_APISERVER ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/clustermesh/kube-apiserver-$(KUBE_VERSION)
export KUBE_APISERVER

kube-apiserver:
	@tools/kube-apiserver/build.sh $(KUBE_APISERVER)

# CoreDNS with its kubernetes plugin (tools/coredns, from the Go module proxy,
# about a minute the first time; rebuilt when tools/coredns changes), for
# k8sslices' test of a headless global service resolved through the cluster
# DNS and internal/corednstest's clusterset.local test (the plugin's
# multicluster option, docs/dns.md); built with kube-apiserver.
COREDNS ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/clustermesh/coredns-v1.15.0
export COREDNS

coredns:
	@tools/coredns/build.sh $(COREDNS)

# The tests that run the real hubble CLI (internal/hubbletest) find the
# hubble of Cilium $(HUBBLE_VERSION) that tools/hubble builds from the Go
# module proxy, once, into a cache outside the repo (2 to 5 minutes the first
# time; later runs find it and do nothing). Packages with such tests go in
# HUBBLE_PKGS: `make test` runs them once the build is done.
HUBBLE_VERSION     := v1.20.2
CLUSTERMESH_HUBBLE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/clustermesh/hubble-$(HUBBLE_VERSION)
export CLUSTERMESH_HUBBLE
HUBBLE_PKGS := ./internal/hubbletest ./flowfilter ./hubbleflags

hubble:
	@tools/hubble/build.sh $(CLUSTERMESH_HUBBLE)

# promtool (Debian's prometheus package) checks the alert rules and the
# dashboard's queries (deploy/monitoring); installed when missing, as root
# (the package's Prometheus server, which systemd would start, is stopped).
promtool:
	@if ! command -v promtool >/dev/null; then \
		if [ "$$(id -u)" != 0 ]; then echo "promtool is needed to check deploy/monitoring: run apt-get install -y prometheus as root"; exit 1; fi; \
		echo "installing prometheus (for promtool)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
		systemctl disable --now prometheus >/dev/null 2>&1 || true; \
	fi

# Headless Chromium (Debian's chromium) for the map's browser tests (ui,
# localmesh's TestUIMapInBrowser); installed when missing, as root.
chromium:
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "chromium is needed for the UI's browser tests: run apt-get install -y chromium as root"; exit 1; fi; \
		echo "installing chromium (for the UI's browser tests)"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# docs/ui-map.png, written by the browser test that checks the map.
ui-screenshot: deps chromium
	CLUSTERMESH_UI_SCREENSHOT=1 $(GO) test -count=1 -run '^TestUIMapInBrowser$$' ./localmesh

# The alert rules parse and their unit tests pass (alerts_test.yaml: each
# alert fires when it should and not otherwise); the dashboard's queries are
# checked by deploy/monitoring's Go tests.
test-monitoring: promtool
	promtool check rules deploy/monitoring/alerts.yaml
	cd deploy/monitoring && promtool test rules alerts_test.yaml

# Only the tests against real API servers.
K8S_PKGS := ./internal/kubetest ./internal/corednstest ./k8ssource ./k8spolicy ./k8sslices ./k8smcs ./kubemesh ./cli
MODULE   := github.com/clustermesh/clustermesh
test-k8s: deps kube-apiserver coredns
	$(GO) test $(TESTFLAGS) -run 'K8s' $(K8S_PKGS)

# The eBPF programs, each in the package that loads it: BPF_PROGS lists them
# as <package directory>/<name>, compiled from <package directory>/bpf/<name>.c
# by clang through bpf2go (`go generate ./datapath/...`); the objects and
# their Go wrappers (<package directory>/<name>_bpfel.o and .go) are
# committed, with a stamp each (<package directory>/<name>_bpfel.stamp: the
# source's hash and the compiler). bpf-tools installs clang, llvm
# (llvm-strip) and the libbpf headers when missing (as root, with apt-get).
BPF_PROGS := datapath/socklb/socklb datapath/tcpolicy/policy
BPF_GEN   := $(foreach p,$(BPF_PROGS),$(p)_bpfel.go $(p)_bpfel.o)
# bpf_src is a program's source, from its BPF_PROGS entry (in the shell).
bpf_src    = $$(dirname $$p)/bpf/$$(basename $$p).c

bpf-tools:
	@if ! command -v clang >/dev/null || ! command -v llvm-strip >/dev/null || [ ! -f /usr/include/bpf/bpf_helpers.h ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "clang, llvm and libbpf-dev are needed to build the eBPF programs: run apt-get install -y clang llvm libbpf-dev as root"; exit 1; fi; \
		echo "installing clang, llvm and libbpf-dev"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm libbpf-dev >/dev/null; \
	fi

# Rebuild the objects and record which source and compiler made them.
generate: deps bpf-tools
	$(GO) generate ./datapath/...
	@for p in $(BPF_PROGS); do \
		{ echo "source-sha256 $$(sha256sum $(bpf_src) | cut -d' ' -f1)"; echo "clang $$(clang --version | head -1)"; } > $${p}_bpfel.stamp; \
	done

# The committed objects must come from the committed sources: each source's
# hash must match its stamp, and, with the compiler that made them (clang's
# output is byte-for-byte reproducible), regenerating must give the same bytes.
check-generate: deps bpf-tools
	@for p in $(BPF_PROGS); do \
		if ! grep -qxF "source-sha256 $$(sha256sum $(bpf_src) | cut -d' ' -f1)" $${p}_bpfel.stamp; then \
			echo "$(bpf_src) changed since its objects were generated: run make generate and commit $${p}_bpfel.go $${p}_bpfel.o $${p}_bpfel.stamp"; exit 1; \
		fi; \
	done
	@for p in $(BPF_PROGS); do \
		if ! grep -qxF "clang $$(clang --version | head -1)" $${p}_bpfel.stamp; then \
			echo "check-generate: the objects of $$p were made by $$(sed -n 's/^clang //p' $${p}_bpfel.stamp), this is $$(clang --version | head -1): source hashes checked, bytes not compared"; exit 0; \
		fi; \
	done; \
	tmp=$$(mktemp -d); for f in $(BPF_GEN); do cp $$f $$tmp/$$(echo $$f | tr / _); done; \
	$(GO) generate ./datapath/... || { rm -rf $$tmp; exit 1; }; \
	for f in $(BPF_GEN); do \
		cmp -s $$f $$tmp/$$(echo $$f | tr / _) || { echo "$$f is not what make generate produces (now regenerated in place): commit it"; rm -rf $$tmp; exit 1; }; \
	done; rm -rf $$tmp

# gofmt, staticcheck, and the import rules of docs/architecture.md
# (tools/archcheck/rules.go).
lint: vet
	$(GO) run ./tools/archcheck
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) tool staticcheck $(PKGS)

# Fuzz every decoder for FUZZTIME each (the seed corpora already run in `make test`).
FUZZTIME ?= 30s
fuzz: deps
	@for p in $$(grep -rl --include='*_test.go' '^func Fuzz' . | grep -v '^./interop/' | xargs -n1 dirname | sort -u); do \
		for f in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz); do \
			echo "== $$p $$f"; $(GO) test $$p -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

# Figures recorded in docs/benchmarks.md: first the issues' figures, one
# `name value unit` line each (tests named TestFigures, CLUSTERMESH_BENCH=1),
# with the tests' own lines (the raw baselines they measured, and why one
# failed or skipped), then the Go benchmarks of the hot paths.
bench: deps
	@set -o pipefail; CLUSTERMESH_BENCH=1 $(GO) test -p 1 -count=1 -run '^TestFigures' -v -timeout 20m $(PKGS) | \
		sed -n -e 's/^FIGURE //p' -e '/ level=/d' -e '/_test\.go:[0-9]*: /p' -e '/--- \(FAIL\|SKIP\)/p' -e '/^\(FAIL\|panic\)/p'
	$(GO) test -run '^$$' -bench RemotePropagation -benchtime 200x ./localmesh
	$(GO) test -run '^$$' -bench MeshStartup -benchtime 10x ./localmesh
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./datapath/...
	$(GO) test -run '^$$' -bench Match -benchtime 200000x ./flowfilter
	$(GO) test -run '^$$' -bench Export -benchtime 20000x ./flowexport
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./fqdn ./l7dns
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./l7http
	$(GO) test -run '^$$' -bench RedirectRoundTrip -benchtime 2000x ./l7proxy

# The scale rig (not part of `make test`): clusters of 2,000 endpoints, each
# its own apiserver process, read by one agent, at the cluster counts of
# SCALE_N (it stops where the machine's memory would run out, and says so);
# prints `name value unit` figures and writes them into docs/benchmarks.md.
SCALE_N ?= 10 50 100
bench-scale: build
	@set -o pipefail; out=$$(mktemp); trap 'rm -f $$out' EXIT; \
	CLUSTERMESH_SCALE=1 CLUSTERMESH_BENCH=1 CLUSTERMESH_SCALE_N="$(SCALE_N)" CLUSTERMESH_BIN=$(abspath $(BIN)) \
		$(GO) test -count=1 -run '^TestScale$$' -v -timeout 90m ./internal/scalerig >$$out 2>&1 || { cat $$out; exit 1; }; \
	sed -n -e 's/^FIGURE //p' -e 's/^ *scale_test\.go:[0-9]*: //p' $$out; \
	internal/scalerig/record.sh $$out docs/benchmarks.md

clean:
	rm -rf bin
