#!/usr/bin/env bash
# Starts a local Apache Kafka broker (scripts/kafka.sh: installed once from
# Maven Central if missing) on 127.0.0.1:${PORT:-9092}, its controller on
# ${CONTROLLER_PORT:-PORT+1}, data under ./tmp/kafka, in the background;
# creates the contract's eight topics (PARTITIONS each, default 3; an existing
# topic is left as it is) and prints the bootstrap address.
# Stop it with: kill "$(cat tmp/kafka/broker.pid)" (a clean shutdown; the
# data stays, and the next start resumes it).
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-9092}"
cport="${CONTROLLER_PORT:-$((port + 1))}"
dir="tmp/kafka"
mkdir -p "$dir"
cp="$(scripts/kafka.sh classpath)"

if [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
  echo "dev-broker: already running (pid $(cat "$dir/broker.pid")), log $dir/data/server.log"
else
  : >"$dir/broker.out"
  nohup scripts/kafka.sh start --dir "$dir/data" --port "$port" --controller-port "$cport" \
    >"$dir/broker.out" 2>&1 &
  echo $! >"$dir/broker.pid"
  for _ in $(seq 1 600); do
    grep -q "^kafka: ready" "$dir/broker.out" && break
    kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null || break
    sleep 0.1
  done
  if ! grep -q "^kafka: ready" "$dir/broker.out"; then
    echo "dev-broker: Kafka did not start; its output:" >&2
    cat "$dir/broker.out" >&2
    tail -20 "$dir/data/server.log" >&2 2>/dev/null || true
    exit 1
  fi
  echo "dev-broker: Kafka running (pid $(cat "$dir/broker.pid")) on 127.0.0.1:$port, log $dir/data/server.log"
fi

# One JVM per topic (the tool takes one), in parallel.
pids=()
for topic in pretext.web-events pretext.transactions pretext.promotions pretext.customers \
  pretext.triggers pretext.dead-letter pretext.holdout pretext.conversions; do
  java -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
    --create --if-not-exists --topic "$topic" --partitions "${PARTITIONS:-3}" \
    --replication-factor 1 >/dev/null &
  pids+=($!)
done
for p in "${pids[@]}"; do
  wait "$p" || echo "dev-broker: a topic was not created (see above)" >&2
done
echo "dev-broker: brokers = \"127.0.0.1:$port\"; stop with: kill \$(cat $dir/broker.pid)"
