# clustermesh — the two commands of the README are `make demo` and `make test`.
# Everything a target needs it installs itself (idempotently); CI runs
# `make test` on a clean clone as root.

GO      ?= go
BIN     := bin/clustermesh
PKGS    := ./...
# Privileged tests (eBPF maps, network namespaces) run for real as root; with
# CI=true they fail instead of skipping when not root (internal/testenv).
TESTFLAGS ?= -race -timeout 15m

SHELL   := /bin/bash

.PHONY: all build demo demo-once test vet lint fuzz bench deps clean

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

# Every test with -race, then the heavy ones (hundreds of thousands of
# entries; they skip under -race) once more without it.
test: vet
	$(GO) test $(TESTFLAGS) $(PKGS)
	$(GO) test -count=1 -timeout 15m -run '^TestHeavy' $(PKGS)

lint: vet
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt would change:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) tool staticcheck $(PKGS)

# Fuzz every decoder for FUZZTIME each (the seed corpora already run in `make test`).
FUZZTIME ?= 30s
fuzz: deps
	@for p in ./wire ./statesource; do \
		for f in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz); do \
			echo "== $$p $$f"; $(GO) test $$p -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) || exit 1; \
		done; \
	done

# Figures recorded in docs/benchmarks.md: first the issues' figures, one
# `name value unit` line each (tests named TestFigures, CLUSTERMESH_BENCH=1),
# then the Go benchmarks of the hot paths.
bench: deps
	@set -o pipefail; CLUSTERMESH_BENCH=1 $(GO) test -count=1 -run '^TestFigures' -v -timeout 20m $(PKGS) | sed -n 's/^FIGURE //p'
	$(GO) test -run '^$$' -bench RemotePropagation -benchtime 200x ./localmesh
	$(GO) test -run '^$$' -bench MeshStartup -benchtime 10x ./localmesh
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./datapath

clean:
	rm -rf bin
