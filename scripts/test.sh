#!/usr/bin/env bash
# Every test: unit, engine-on-files, CLI, ops, deployment (helm, promtool,
# schemas) and end-to-end against a real Apache Kafka broker. Installs what
# it needs first (idempotent). One build profile (release) for everything,
# the same build scripts/run.sh uses.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# A full disk shows up late and obscurely (the linker dies with SIGBUS), so
# say early when it is short: a build from an empty target/ peaks at ~1.8 GB
# (docs/live.md, "CI on a fresh machine"). A warning only: an incremental
# build needs far less.
free_kb=$(df -Pk . | awk 'NR == 2 { print $4 }')
if [ -n "$free_kb" ] && [ "$free_kb" -lt $((3 * 1024 * 1024)) ]; then
  echo "test: warning: $((free_kb / 1024)) MiB free on the disk of $(pwd); a build from an empty target/ needs ~1.8 GB" >&2
fi

# Kafka comes from Maven Central (seconds once cached) and the deployment
# tools (helm, promtool, validators; a few minutes cold) install while the
# tests build. The end-to-end tests start their brokers with scripts/kafka.sh.
log=$(mktemp -t pretext-kafka-install.XXXXXX)
bash scripts/kafka.sh install >"$log" 2>&1 &
kafka_pid=$!
tools_log=$(mktemp -t pretext-tools-install.XXXXXX)
bash scripts/install-tools.sh >"$tools_log" 2>&1 &
tools_pid=$!
build_status=0
cargo test --release --locked --no-run || build_status=$?
kafka_status=0
wait "$kafka_pid" || kafka_status=$?
if [ "$kafka_status" -ne 0 ]; then
  echo "test: installing Apache Kafka failed:" >&2
  cat "$log" >&2
  exit "$kafka_status"
fi
rm -f "$log"
tools_status=0
wait "$tools_pid" || tools_status=$?
if [ "$tools_status" -ne 0 ]; then
  echo "test: installing the deployment tools failed:" >&2
  cat "$tools_log" >&2
  exit "$tools_status"
fi
rm -f "$tools_log"
[ "$build_status" -eq 0 ] || exit "$build_status"
# Every test binary runs even when one fails, so a CI log shows them all.
exec cargo test --release --locked --no-fail-fast "$@"
