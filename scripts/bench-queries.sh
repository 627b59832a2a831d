#!/usr/bin/env bash
# Query latency under ingestion, and ingestion with and without queries, in
# one run (BENCHMARKS.md, "Queries"):
#
#   scripts/bench-queries.sh            # after cargo build --release
#
# Starts a local Apache Kafka broker (scripts/kafka.sh), produces EVENTS
# generated events (pretext gen) to one input topic, then starts
# `pretext run` on that backlog with a query token and, while it catches
# up, waits WARMUP s, then alternates PHASES phases of PHASE seconds (odd,
# so every query phase has a phase without queries on each side): without
# queries, and with wrk sending QUERY_RATE queries/s (GET
# /v1/customers/C…, random customers).
# Ingestion per phase is the growth of pretext_events_total (applied
# events) over the phase, from /metrics; wrk prints the latencies of its
# phases (--latency), and once more after the backlog is applied (no
# ingestion: wrk-idle). Needs wrk (Debian package `wrk`; installed when
# missing), java and mvn (scripts/kafka.sh installs them when missing).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${PRETEXT_BIN:-$root/target/release/pretext}"
kafka_sh="${KAFKA_SH:-$root/scripts/kafka.sh}"
events="${EVENTS:-4000000}"
customers="${CUSTOMERS:-100000}"
phase="${PHASE:-10}"
phases="${PHASES:-11}"
rate="${QUERY_RATE:-200}"
connections="${CONNECTIONS:-4}"
token="bench-token-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"

command -v wrk >/dev/null || {
  echo "bench-queries: apt-get install wrk" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}
[ -x "$bin" ] || { echo "bench-queries: build first: cargo build --release" >&2; exit 1; }

work="$(mktemp -d)"
pids=()
cleanup() {
  # pretext first (its shutdown commits against a live broker), then Kafka.
  for ((j = ${#pids[@]} - 1; j >= 0; j--)); do
    kill -TERM "${pids[j]}" 2>/dev/null || true
    wait "${pids[j]}" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ]; then echo "kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
kport="$(free_port)"
hport="$(free_port)"

"$kafka_sh" start --dir "$work/kafka" --port "$kport" --controller-port "$((kport + 1))" \
  >"$work/kafka.out" 2>&1 &
pids+=($!)
for _ in $(seq 1 600); do grep -q "kafka: ready" "$work/kafka.out" && break; sleep 0.2; done
grep -q "kafka: ready" "$work/kafka.out" || { cat "$work/kafka.out" >&2; exit 1; }
cp="$("$kafka_sh" classpath)"

"$bin" gen --events "$events" --customers "$customers" --products 5000 --bad-ratio 0 \
  --output "$work/events.jsonl"
topic="bench.web-events"
start=$(date +%s.%N)
java -Xmx512m -cp "$cp" org.apache.kafka.tools.ConsoleProducer \
  --bootstrap-server "127.0.0.1:$kport" --topic "$topic" \
  --command-property linger.ms=20 --command-property batch.size=524288 \
  --command-property compression.type=lz4 <"$work/events.jsonl" 2>"$work/producer.err"
end_offset="$(java -cp "$cp" org.apache.kafka.tools.GetOffsetShell \
  --bootstrap-server "127.0.0.1:$kport" --topic "$topic" 2>/dev/null | awk -F: '{s += $3} END {print s}')"
echo "produced $end_offset of $events events in $(echo "$(date +%s.%N) - $start" | bc) s"
[ -s "$work/producer.err" ] && { echo "producer stderr:"; sort "$work/producer.err" | uniq -c | head -5; }
rm -f "$work/events.jsonl"

cat >"$work/config.toml" <<EOF
[kafka]
brokers = "127.0.0.1:$kport"
group_id = "bench-queries"
[topics]
inputs = ["$topic"]
create = true
[state]
dir = "$work/state"
[http]
listen = "127.0.0.1:$hport"
[log]
format = "text"
level = "warn"
EOF
PRETEXT__HTTP__QUERY_TOKEN="$token" "$bin" run --config "$work/config.toml" 2>"$work/pretext.log" &
pids+=($!)

metrics() { curl -sf "http://127.0.0.1:$hport/metrics" || true; }
applied() { metrics | awk '/^pretext_events_total\{/ {s += $2} END {printf "%d\n", s}'; }
for _ in $(seq 1 600); do
  [ "$(applied)" -gt 0 ] && break
  sleep 0.2
done

# wrk: CONNECTIONS connections, each waiting connections/rate s between
# requests, so about QUERY_RATE queries/s; wrk's latency excludes the wait.
cat >"$work/queries.lua" <<EOF
local delay_ms = $connections * 1000 / $rate
math.randomseed(42)
request = function()
  local path = string.format("/v1/customers/C%06d", math.random(0, $customers - 1))
  return wrk.format("GET", path, { ["Authorization"] = "Bearer $token" })
end
delay = function() return delay_ms end
EOF

# UPTO=N: instead of phases, the time to apply the first N events, with
# queries all along (QUERIES=1, the default) or none (QUERIES=0): two runs
# compare ingestion over the same stretch of the log.
if [ -n "${UPTO:-}" ]; then
  t0=$(date +%s.%N)
  if [ "${QUERIES:-1}" != 0 ]; then
    wrk -t2 -c"$connections" -d600s --latency -s "$work/queries.lua" \
      "http://127.0.0.1:$hport" >"$work/wrk-upto.txt" &
    wrk_pid=$!
  fi
  first="$(applied)"
  while [ "$(applied)" -lt "$UPTO" ]; do sleep 0.1; done
  secs="$(echo "$(date +%s.%N) - $t0" | bc)"
  [ -n "${wrk_pid:-}" ] && { kill -INT "$wrk_pid"; wait "$wrk_pid" || true; cat "$work/wrk-upto.txt"; }
  printf "queries=%s: %d events (from %d) in %.2f s: %.0f events/s\n" "${QUERIES:-1}" \
    "$(applied)" "$first" "$secs" "$(echo "($(applied) - $first) / $secs" | bc -l)"
  exit 0
fi

# WARMUP s first: the first seconds, on an empty state, run far faster
# than what follows and would skew the first comparison.
sleep "${WARMUP:-10}"
echo "phase  queries  applied_events  events_per_s"
rates=()
for i in $(seq 1 "$phases"); do
  before="$(applied)"
  t0=$(date +%s.%N)
  if [ $((i % 2)) -eq 0 ] && [ "${QUERIES:-1}" != 0 ]; then
    wrk -t2 -c"$connections" -d"${phase}s" --latency -s "$work/queries.lua" \
      "http://127.0.0.1:$hport" >"$work/wrk-$i.txt"
    mode="on"
  else
    sleep "$phase"
    mode="off"
  fi
  after="$(applied)"
  secs="$(echo "$(date +%s.%N) - $t0" | bc)"
  rates+=("$(echo "($after - $before) / $secs" | bc -l)")
  printf "%5d  %7s  %14d  %12.0f\n" "$i" "$mode" "$((after - before))" "${rates[i - 1]}"
done
# Ingestion falls as the state grows, so a query phase is compared with the
# mean of the phases either side of it, which cancels a steady trend.
# The counter moves a batch at a time, so one phase's figure is off by up
# to a batch; the sum over all query phases averages that out.
on=0 around=0
for ((i = 2; i < phases; i += 2)); do
  printf "phase %d against its neighbours: %.3f\n" "$i" \
    "$(echo "2 * ${rates[i - 1]} / (${rates[i - 2]} + ${rates[i]})" | bc -l)"
  on="$(echo "$on + ${rates[i - 1]}" | bc -l)"
  around="$(echo "$around + (${rates[i - 2]} + ${rates[i]}) / 2" | bc -l)"
done
printf "all query phases against their neighbours: %.3f\n" "$(echo "$on / $around" | bc -l)"
# The same queries once the backlog is applied (or ingestion stalled):
# latency without ingestion.
last=-1
while [ "$(applied)" != "$last" ]; do last="$(applied)"; sleep 2; done
wrk -t2 -c"$connections" -d"${phase}s" --latency -s "$work/queries.lua" \
  "http://127.0.0.1:$hport" >"$work/wrk-idle.txt"
for f in "$work"/wrk-*.txt; do
  echo "== $(basename "$f")"
  cat "$f"
done
echo "applied in total: $(applied) of $events"
metrics | grep -E '^pretext_(batch_duration_seconds_(sum|count)|consumer_lag_messages|events_duplicate_total|state_size_bytes|pending_checks)' || true
if [ -s "$work/pretext.log" ]; then
  echo "== pretext log (last lines)"
  tail -20 "$work/pretext.log"
fi
