#!/usr/bin/env bash
# Builds CoreDNS (with the bind, errors, log and kubernetes plugins:
# tools/coredns/main.go) from the Go module proxy into a cache outside the
# repo. A stamp beside the binary ($out.stamp) holds the hash of this
# module's sources (*.go, go.mod, go.sum, this script) and the Go version:
# a later run whose binary and stamp match does nothing (a few milliseconds);
# any change to the module rebuilds it. The tests of names resolved through
# the cluster DNS (internal/corednstest) find it through COREDNS.
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

cd "$dir"
# GOFLAGS from the environment must not leak into this build; GOWORK=off
# keeps a go.work above the repo out of it.
export GOFLAGS=-mod=readonly GOWORK=off CGO_ENABLED=0
sources=$(find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum -o -name build.sh \) -print0 |
	LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
stamp="sources-sha256 $sources $(go env GOVERSION)"

if [ -x "$out" ] && [ -f "$out.stamp" ] && [ "$(cat "$out.stamp")" = "$stamp" ]; then
	exit 0
fi

mkdir -p "$(dirname "$out")"
echo "building CoreDNS $VERSION into $out" >&2
start=$(date +%s)
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
go build -trimpath -o "$tmp" .
"$tmp" -version | grep -q "CoreDNS-${VERSION#v}" || { echo "built CoreDNS does not say it is $VERSION" >&2; exit 1; }
rm -f "$out.stamp"
mv "$tmp" "$out"
echo "$stamp" > "$out.stamp"
echo "built $out in $(( $(date +%s) - start )) s" >&2
