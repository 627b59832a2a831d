#!/usr/bin/env bash
# The cost curve of replay as the state grows (BENCHMARKS.md): 1M events
# of 10k, 100k and 1M customers, and 10M events of 1M customers, each into
# a fresh state with the default configuration; wall time, CPU and peak
# RSS from GNU time, the state's size on disk after the run.
#
#   scripts/replay-curve.sh [PRETEXT] [WORKDIR]
set -euo pipefail
pretext=$(realpath "${1:-target/release/pretext}")
work=${2:-${TMPDIR:-/tmp}/pretext-curve}
mkdir -p "$work"
cd "$work"
for spec in 1000000:10000 1000000:100000 1000000:1000000 10000000:1000000; do
  events=${spec%%:*} customers=${spec#*:}
  input=ev-$events-$customers.jsonl
  [ -s "$input" ] || "$pretext" gen --events "$events" --customers "$customers" --seed 42 > "$input"
  rm -rf state
  /usr/bin/time -f "$events events, $customers customers: %e s wall, %U+%S s CPU, peak RSS %M KiB" \
    "$pretext" replay --quiet --flush --input "$input" --output /dev/null \
    --dead-letter /dev/null --state-dir state 2>&1 | tail -1
  echo "  state on disk: $(du -sb state | cut -f1) bytes"
done
