#!/usr/bin/env bash
# Builds CoreDNS (with the bind, errors, log and kubernetes plugins:
# tools/coredns/main.go) from the Go module proxy into a cache outside the
# repo, once: a later run with the binary in place does nothing. The tests of
# EndpointSlices resolved through the cluster DNS find it through COREDNS.
#
#   tools/coredns/build.sh [output]
#
# The default output is $HOME/.cache/clustermesh/coredns-$VERSION. The first
# build downloads CoreDNS's dependencies and took 70 s on two cores; the
# binary is ~75 MB.
set -euo pipefail

VERSION=v1.15.0
dir=$(cd "$(dirname "$0")" && pwd)
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/clustermesh/coredns-$VERSION}

if [ -x "$out" ] && "$out" -version 2>/dev/null | grep -q "CoreDNS-${VERSION#v}"; then
	exit 0
fi

mkdir -p "$(dirname "$out")"
echo "building CoreDNS $VERSION into $out" >&2
start=$(date +%s)
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# GOFLAGS from the environment must not leak into this build; GOWORK=off
# keeps a go.work above the repo out of it.
cd "$dir"
GOFLAGS=-mod=readonly GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$tmp" .
mv "$tmp" "$out"
echo "built $out in $(( $(date +%s) - start )) s" >&2
