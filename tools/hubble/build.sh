#!/usr/bin/env bash
# Builds Cilium's hubble CLI (the release the interop tests pin) from the Go
# module proxy into a cache outside the repo, once: a later run with the binary
# in place does nothing. The tests that run the real client find it through
# CLUSTERMESH_HUBBLE (see internal/hubbletest).
#
#   tools/hubble/build.sh [output]
#
# The default output is $HOME/.cache/clustermesh/hubble-$VERSION. The first
# build downloads the Cilium module and its dependencies and takes about 2
# to 5 minutes (280 s on a busy 2-core machine); the binary is ~75 MB.
set -euo pipefail

VERSION=v1.20.2
dir=$(cd "$(dirname "$0")" && pwd)
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/clustermesh/hubble-$VERSION}

# `hubble version` prints "hubble v1.20.2 compiled with go1.26.8 on linux/amd64".
if [ -x "$out" ] && "$out" version 2>/dev/null | grep -q "^hubble $VERSION "; then
	exit 0
fi

command -v go >/dev/null || { echo "building hubble needs Go: install Go 1.26 (https://go.dev/dl)" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
echo "building hubble $VERSION into $out (the first time takes 2 to 5 minutes)" >&2
start=$(date +%s)
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# GOFLAGS from the environment (-mod=vendor, -race, ...) must not leak into
# this build; GOWORK=off keeps a go.work above the repo out of it. The
# version is set the way Cilium's hubble/Makefile sets it.
cd "$dir"
if ! GOFLAGS=-mod=readonly GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$tmp" \
	-ldflags "-s -w -X github.com/cilium/cilium/hubble/pkg.Version=$VERSION" \
	github.com/cilium/cilium/hubble; then
	echo "building hubble $VERSION from tools/hubble/go.mod failed (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))" >&2
	exit 1
fi
"$tmp" version | grep -q "^hubble $VERSION " || { echo "the hubble just built does not say it is $VERSION: $("$tmp" version)" >&2; exit 1; }
mv "$tmp" "$out"
echo "built $out in $(( $(date +%s) - start )) s" >&2
