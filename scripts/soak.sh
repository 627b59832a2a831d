#!/usr/bin/env bash
# Soak: pretext live for DURATION_MIN minutes at RATE events/s against a
# local Apache Kafka broker (scripts/kafka.sh), recording once a minute the process's RSS
# (VmRSS from /proc) and its consumer lag (pretext_consumer_lag_messages
# from /metrics) into a CSV.
#
#   scripts/soak.sh DURATION_MIN RATE_EVENTS_PER_S [OUT_DIR]
#
# OUT_DIR (default tmp/soak-<time>) receives soak.csv, summary.txt and the
# logs of Kafka, pretext and the feeder. PORT and HTTP_PORT choose the
# broker's and pretext's ports (defaults 19092, its controller 19093, and
# 19464); CUSTOMERS the
# generated customer count (default 50000). The feeder is the ignored test
# `soak_feed` in tests/faults_e2e.rs (`pretext gen` events, paced).
set -euo pipefail
cd "$(dirname "$0")/.."
minutes="${1:?usage: scripts/soak.sh DURATION_MIN RATE_EVENTS_PER_S [OUT_DIR]}"
rate="${2:?usage: scripts/soak.sh DURATION_MIN RATE_EVENTS_PER_S [OUT_DIR]}"
out="${3:-tmp/soak-$(date -u +%Y%m%dT%H%M%SZ)}"
port="${PORT:-19092}"
http="127.0.0.1:${HTTP_PORT:-19464}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
export PATH="$HOME/.cargo/bin:$PATH"

cp="$(scripts/kafka.sh classpath)"
# Builds target/release/pretext too, with the same features as the tests
# (a plain `cargo build` would unify features differently and rebuild).
# The feeder is the test binary that holds `soak_feed`.
feeder="$(cargo test --release --locked --test faults_e2e --no-run 2>&1 |
  sed -n 's/.*Executable tests\/faults_e2e.rs (\(.*\))/\1/p' | tail -1)"
[ -x "$feeder" ] || { echo "soak: cannot find the faults_e2e test binary" >&2; exit 1; }

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

scripts/kafka.sh start --dir "$out/kafka" --port "$port" >"$out/kafka.out" 2>&1 &
kafka_pid=$!
pids+=("$kafka_pid")
for _ in $(seq 1 600); do
  grep -q "^kafka: ready" "$out/kafka.out" && break
  kill -0 "$kafka_pid" 2>/dev/null || { cat "$out/kafka.out" >&2; exit 1; }
  sleep 0.1
done
for topic in soak.in soak.triggers soak.dead-letter; do
  java -cp "$cp" org.apache.kafka.tools.TopicCommand --bootstrap-server "127.0.0.1:$port" \
    --create --topic "$topic" --partitions 1 --replication-factor 1 >/dev/null
done

cat >"$out/pretext.toml" <<EOF
[kafka]
brokers = "127.0.0.1:$port"
group_id = "soak"
[kafka.client]
"session.timeout.ms" = "6000"
[topics]
inputs = ["soak.in"]
triggers = "soak.triggers"
dead_letter = "soak.dead-letter"
[state]
dir = "$out/state"
[http]
listen = "$http"
[log]
format = "json"
level = "info"
EOF

target/release/pretext run --config "$out/pretext.toml" >"$out/pretext.log" 2>&1 &
pretext_pid=$!
pids+=("$pretext_pid")
for _ in $(seq 1 150); do
  curl -sf "http://$http/readyz" >/dev/null && break
  sleep 0.2
done

seconds=$((minutes * 60))
PRETEXT_SOAK_BROKER="127.0.0.1:$port" PRETEXT_SOAK_TOPIC=soak.in PRETEXT_SOAK_RATE="$rate" \
  PRETEXT_SOAK_SECONDS="$seconds" PRETEXT_SOAK_CUSTOMERS="${CUSTOMERS:-50000}" \
  "$feeder" --ignored --exact soak_feed --nocapture >"$out/feeder.log" 2>&1 &
feeder_pid=$!
pids+=("$feeder_pid")

metric() { # name: the sum of its samples
  curl -sf "http://$http/metrics" | awk -v n="$1" \
    'index($0, n) == 1 && (substr($0, length(n) + 1, 1) == "{" || substr($0, length(n) + 1, 1) == " ") { s += $NF } END { printf "%d", s }'
}
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

csv="$out/soak.csv"
echo "minute,rss_kib,lag_messages,events_total,triggers_total,state_bytes,state_keys,kafka_rss_kib" >"$csv"
sample() {
  echo "$1,$(rss_kib "$pretext_pid"),$(metric pretext_consumer_lag_messages),$(metric pretext_events_total),$(metric pretext_triggers_total),$(metric pretext_state_size_bytes),$(metric pretext_state_keys),$(rss_kib "$kafka_pid")" >>"$csv"
  tail -1 "$csv"
}
echo "soak: $minutes min at $rate events/s, pretext pid $pretext_pid, output in $out"
echo "minute,rss_kib,lag_messages,events_total,triggers_total,state_bytes,state_keys,kafka_rss_kib"
sample 0
start=$(date +%s)
for m in $(seq 1 "$minutes"); do
  wait_s=$((start + m * 60 - $(date +%s)))
  [ "$wait_s" -gt 0 ] && sleep "$wait_s"
  kill -0 "$pretext_pid" 2>/dev/null || { echo "soak: pretext exited" >&2; tail -20 "$out/pretext.log" >&2; exit 1; }
  sample "$m"
done
wait "$feeder_pid" || { echo "soak: the feeder failed" >&2; tail -20 "$out/feeder.log" >&2; exit 1; }

kill -TERM "$pretext_pid"
wait "$pretext_pid" && stopped="exit 0" || stopped="exit $?"

# RSS plateaus when the last third's peak is within 10% of the middle third's.
awk -F, -v stopped="$stopped" 'NR > 1 { m[n++] = $2; lag[n - 1] = $3 }
  END {
    a = int(n / 3); b = int(2 * n / 3)
    for (i = a; i < b; i++) if (m[i] > mid) mid = m[i]
    for (i = b; i < n; i++) if (m[i] > last) last = m[i]
    for (i = 0; i < n; i++) { if (lag[i] > maxlag) maxlag = lag[i]; if (min == "" || m[i] < min) min = m[i]; if (m[i] > max) max = m[i] }
    printf "samples %d; RSS KiB min %d max %d; peak middle third %d, last third %d (%+.1f%%): %s; max lag %d; pretext SIGTERM: %s\n",
      n, min, max, mid, last, mid ? 100 * (last - mid) / mid : 0,
      (mid && last <= mid * 1.10) ? "plateau" : "still growing", maxlag, stopped
  }' "$csv" | tee "$out/summary.txt"
