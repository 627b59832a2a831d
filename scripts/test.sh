#!/usr/bin/env bash
# Every test: unit, engine-on-files, CLI, ops, deployment (helm, promtool,
# schemas) and end-to-end against a real Apache Kafka broker. Installs what
# it needs first (idempotent). One build profile (release) for everything,
# the same build scripts/run.sh uses.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

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
