#!/usr/bin/env bash
# Writes the figures of a `make bench-scale` run (its test output, $1) into
# docs/benchmarks.md ($2), between the "bench-scale" markers: the figures as
# `name value unit` lines, then what the rig logged, with the date, the
# commit and the machine. The previous run's block is replaced.
set -euo pipefail
out=$1 doc=$2
begin='<!-- bench-scale:begin -->' end='<!-- bench-scale:end -->'
block=$(mktemp)
trap 'rm -f "$block"' EXIT
{
	echo "$begin"
	echo
	echo "Last \`make bench-scale\`: $(date -u +%Y-%m-%d) at $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
		"$(nproc) cores, $(awk '/MemTotal/ {printf "%d GiB", $2/1048576}' /proc/meminfo)."
	echo
	echo '```'
	sed -n 's/^FIGURE //p' "$out"
	echo '```'
	echo
	echo 'What the rig logged:'
	echo
	echo '```'
	sed -n 's/^ *scale_test\.go:[0-9]*: //p' "$out"
	echo '```'
	echo
	echo "$end"
} >"$block"
if grep -qF "$begin" "$doc"; then
	awk -v b="$begin" -v e="$end" -v f="$block" '
		$0 == b { while ((getline l < f) > 0) print l; skip = 1; next }
		$0 == e { skip = 0; next }
		!skip { print }' "$doc" >"$doc.tmp"
	mv "$doc.tmp" "$doc"
else
	{ echo; echo "## Scale rig"; echo; cat "$block"; } >>"$doc"
fi
echo "bench-scale: figures written to $doc"
