#!/usr/bin/env bash
# Starts a local Kafka-API broker (tansu 0.6.0, installed once if missing) on
# 127.0.0.1:${PORT:-9092} with sqlite storage under ./tmp/tansu, creates the
# contract's six topics, and leaves it running in the background.
# Stop it with: kill "$(cat tmp/tansu/broker.pid)"
set -euo pipefail
cd "$(dirname "$0")/.."
port="${PORT:-9092}"
dir="tmp/tansu"
mkdir -p "$dir"
scripts/install-tansu.sh
export PATH="$HOME/.cargo/bin:$PATH"
url="tcp://127.0.0.1:$port"

if [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
  echo "dev-broker: already running (pid $(cat "$dir/broker.pid")), log $dir/broker.log"
else
  # tansu reads the sqlite URL's path relative to its working directory, so
  # it runs in $dir; exec makes the background subshell's pid tansu's own.
  (cd "$dir" && exec nohup tansu broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine "sqlite://broker.db" >broker.log 2>&1) &
  echo $! >"$dir/broker.pid"
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
  done
  if ! kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
    echo "dev-broker: tansu exited; its log:" >&2
    cat "$dir/broker.log" >&2
    exit 1
  fi
  echo "dev-broker: tansu running (pid $(cat "$dir/broker.pid")) on 127.0.0.1:$port, log $dir/broker.log"
fi

# tansu 0.6.0 does not create topics on demand (metadata requests ignore
# allow_auto_topic_creation): create them
# (one partition each; an existing topic is left as it is).
for topic in pretext.web-events pretext.transactions pretext.promotions pretext.customers \
  pretext.triggers pretext.dead-letter; do
  tansu topic create "$topic" --broker "$url" --partitions 1 >/dev/null 2>&1 \
    || echo "dev-broker: did not create $topic (it may exist already)"
done
echo "dev-broker: brokers = \"127.0.0.1:$port\"; stop with: kill \$(cat $dir/broker.pid)"
