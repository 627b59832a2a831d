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

if [ -f "$dir/broker.pid" ] && kill -0 "$(cat "$dir/broker.pid")" 2>/dev/null; then
  echo "dev-broker: already running (pid $(cat "$dir/broker.pid")) on 127.0.0.1:$port"
else
  url="tcp://127.0.0.1:$port"
  # tansu reads the sqlite path relative to its working directory.
  (cd "$dir" && nohup tansu broker --listener-url "$url" --advertised-listener-url "$url" \
    --storage-engine "sqlite://broker.db" >broker.log 2>&1 & echo $! >broker.pid)
  for _ in $(seq 1 50); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.2
  done
  echo "dev-broker: tansu running (pid $(cat "$dir/broker.pid")) on 127.0.0.1:$port, log $dir/broker.log"
fi

for topic in pretext.web-events pretext.transactions pretext.promotions pretext.customers pretext.triggers pretext.dead-letter; do
  tansu topic create "$topic" --broker "tcp://127.0.0.1:$port" --partitions 1 >/dev/null 2>&1 \
    || echo "dev-broker: could not create $topic (it may exist already)"
done
echo "dev-broker: stop with: kill \$(cat $dir/broker.pid)"
