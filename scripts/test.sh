#!/usr/bin/env bash
# Every test: unit, engine-on-files, CLI, ops, and end-to-end against a real
# Apache Kafka broker. Installs what it needs first (idempotent). One build
# profile (release) for everything, the same build scripts/run.sh uses.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

# Kafka comes from Maven Central (seconds once cached); the tests build
# meanwhile. The end-to-end tests start their brokers with scripts/kafka.sh.
log=$(mktemp -t pretext-kafka-install.XXXXXX)
bash scripts/kafka.sh install >"$log" 2>&1 &
kafka_pid=$!
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
[ "$build_status" -eq 0 ] || exit "$build_status"
exec cargo test --release --locked "$@"
