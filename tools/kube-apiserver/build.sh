#!/usr/bin/env bash
# Builds kube-apiserver from the Go module proxy into a cache outside the repo,
# once: a later run with the binary in place does nothing. The tests against
# real API servers find it through KUBE_APISERVER (see internal/kubetest).
#
#   tools/kube-apiserver/build.sh [output]
#
# The default output is $HOME/.cache/clustermesh/kube-apiserver-$VERSION.
# The first build downloads k8s.io/kubernetes and its dependencies and takes
# about 6 minutes and 2.4 GB (module and build caches); the binary is ~120 MB.
set -euo pipefail

VERSION=v1.37.1
MINOR=37
dir=$(cd "$(dirname "$0")" && pwd)
out=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/clustermesh/kube-apiserver-$VERSION}

if [ -x "$out" ] && "$out" --version 2>/dev/null | grep -qxF "Kubernetes $VERSION"; then
	exit 0
fi

mkdir -p "$(dirname "$out")"
echo "building kube-apiserver $VERSION into $out (the first time takes about 6 minutes)" >&2
start=$(date +%s)
tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
# GOFLAGS from the environment (-mod=vendor, -race, ...) must not leak into
# this build; GOWORK=off keeps a go.work above the repo out of it.
cd "$dir"
GOFLAGS=-mod=readonly GOWORK=off CGO_ENABLED=0 go build -trimpath -o "$tmp" \
	-ldflags "-s -w -X k8s.io/component-base/version.gitVersion=$VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$MINOR" \
	k8s.io/kubernetes/cmd/kube-apiserver
mv "$tmp" "$out"
echo "built $out in $(( $(date +%s) - start )) s" >&2
