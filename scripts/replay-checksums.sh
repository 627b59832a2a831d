#!/usr/bin/env bash
# Replays the generated 1M-event files (10k, 100k and 1M customers, seed
# 42) with the default configuration and with the measurement settings of
# contract section 8, and prints the sha256 of every output: run it with
# two builds and compare, before and after a change that must keep replay
# byte-identical. BENCHMARKS.md lists the expected sums.
#
#   scripts/replay-checksums.sh [PRETEXT] [WORKDIR]
#
# PRETEXT defaults to target/release/pretext, WORKDIR to
# ${TMPDIR:-/tmp}/pretext-checksums (the files are generated once there;
# dead letters name the input file, so compare runs made in one WORKDIR).
set -euo pipefail
pretext=$(realpath "${1:-target/release/pretext}")
work=${2:-${TMPDIR:-/tmp}/pretext-checksums}
mkdir -p "$work"
cd "$work"
printf '[holdout]\npercent = 10\n[pressure]\nmax_triggers = 3\nwindow = "24h"\n' > section8.toml
for c in 10k:10000 100k:100000 1m:1000000; do
  name=${c%%:*} customers=${c#*:}
  input=ev$name.jsonl
  [ -s "$input" ] || "$pretext" gen --events 1000000 --customers "$customers" --seed 42 > "$input"
  out=out/$name-default
  rm -rf "$out" && mkdir -p "$out"
  "$pretext" replay --quiet --flush --input "$input" --output "$out/triggers.jsonl" \
    --dead-letter "$out/dead.jsonl" --state-dir "$out/state" > "$out/summary.txt" 2>&1
  out=out/$name-section8
  rm -rf "$out" && mkdir -p "$out"
  "$pretext" replay --quiet --flush --input "$input" --output "$out/triggers.jsonl" \
    --dead-letter "$out/dead.jsonl" --state-dir "$out/state" --config section8.toml \
    --holdout "$out/holdout.jsonl" --conversions "$out/conversions.jsonl" > "$out/summary.txt" 2>&1
done
cd out && sha256sum */*.jsonl */summary.txt
