#!/usr/bin/env bash
# The test broker: Apache Kafka 4.x (KRaft, one combined broker+controller
# on loopback), assembled from Maven Central by scripts/kafka/pom.xml.
#
#   scripts/kafka.sh install          # jars into the cache dir, once; prints it
#   scripts/kafka.sh classpath        # installs if needed; prints 'DIR/*'
#   scripts/kafka.sh start --dir DATA --port N [--controller-port M] [--owner PID]
#
# install: `mvn dependency:copy-dependencies` into
# ${PRETEXT_KAFKA_HOME:-~/.cache/pretext/kafka-VERSION}; a second run finds
# the marker it wrote last time and returns at once.
#
# start: formats KRaft storage in DATA (once: a DATA already formatted is
# started as it is, so a restart keeps topics, messages and committed
# offsets), then runs the broker in the foreground (exec: this process's pid
# is the JVM's, so SIGSTOP/SIGCONT/SIGTERM reach it; SIGTERM is a clean
# shutdown). It prints `kafka: ready, bootstrap 127.0.0.1:N` once the broker
# serves requests. The broker's log is DATA/server.log. --controller-port
# defaults to N+1; a restart on DATA must use the same ports. With --owner,
# the broker stops and DATA is removed when process PID exits (test
# harnesses that cannot stop it themselves). KAFKA_HEAP_OPTS and
# KAFKA_JVM_OPTS override the JVM flags below.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pom="$here/kafka/pom.xml"
version="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")"
home="${PRETEXT_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/pretext/kafka-$version}"

die() { echo "kafka: $*" >&2; exit 1; }

# Java 17+ and Maven; on a fresh Debian machine they are installed (as
# root, or with sudo).
need_tools() {
  command -v mvn >/dev/null && command -v java >/dev/null && return 0
  command -v apt-get >/dev/null || die "java and mvn are needed: install a JDK 17+ and Maven"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "kafka: apt-get install openjdk-17-jre-headless maven" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
}

install() {
  # The marker holds the pom's checksum: a changed pom installs again.
  local sum
  sum="$(sha256sum "$pom" | cut -d' ' -f1)"
  if [ -f "$home/.installed" ] && [ "$(cat "$home/.installed")" = "$sum" ]; then
    return 0
  fi
  need_tools
  echo "kafka: installing Apache Kafka $version from Maven Central into $home" >&2
  local tmp="$home.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  mvn -B -q -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$tmp" >&2 || { rm -rf "$tmp"; die "mvn dependency:copy-dependencies failed"; }
  rm -rf "$home"
  mv "$tmp" "$home"
  echo "$sum" >"$home/.installed"
}

# Writes DATA/server.properties and DATA/log4j2.properties for the ports.
write_config() {
  local data="$1" port="$2" cport="$3"
  cat >"$data/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$data/logs
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# The controller fences a broker whose heartbeats stop for this long (9 s
# by default); fencing the only broker takes every partition offline until
# it is unfenced. A stall of a few seconds (a GC pause, a suspended laptop,
# the fault tests' SIGSTOP past a consumer's 6 s session) should not.
broker.session.timeout.ms=30000
num.network.threads=2
num.io.threads=4
# The log cleaner allocates this at start (default 128 MiB): small for a small heap.
log.cleaner.dedupe.buffer.size=16777216
EOF
  # Kafka logs to DATA/server.log; only warnings reach stdout.
  cat >"$data/log4j2.properties" <<EOF
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $data/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
appender.out.filter.level.type = ThresholdFilter
appender.out.filter.level.level = warn
rootLogger.level = info
rootLogger.appenderRef.file.ref = file
rootLogger.appenderRef.out.ref = out
logger.config.name = org.apache.kafka.common.config.AbstractConfig
logger.config.level = warn
EOF
}

start() {
  local data="" port="" cport="" owner=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --dir) data="$2"; shift 2 ;;
      --port) port="$2"; shift 2 ;;
      --controller-port) cport="$2"; shift 2 ;;
      --owner) owner="$2"; shift 2 ;;
      *) die "start: unknown argument $1" ;;
    esac
  done
  [ -n "$data" ] && [ -n "$port" ] || die "usage: kafka.sh start --dir DATA --port N [--controller-port M] [--owner PID]"
  cport="${cport:-$((port + 1))}"
  install
  mkdir -p "$data"
  data="$(cd "$data" && pwd)"
  write_config "$data" "$port" "$cport"
  local heap="${KAFKA_HEAP_OPTS:--Xms32m -Xmx256m}"
  local jvm="${KAFKA_JVM_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true}"
  # shellcheck disable=SC2206 # word splitting of the flag lists is meant
  local java=(java $heap $jvm "-Dlog4j2.configurationFile=$data/log4j2.properties" -cp "$home/*")
  if [ ! -f "$data/logs/meta.properties" ]; then
    # A cluster id is 16 random bytes, URL-safe base64 without padding.
    local id
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
    "${java[@]}" kafka.tools.StorageTool format --standalone --cluster-id="$id" \
      -c "$data/server.properties" >>"$data/format.log" 2>&1 ||
      { cat "$data/format.log" >&2; die "formatting $data failed"; }
  fi
  local from
  from=$(($(stat -c %s "$data/server.log" 2>/dev/null || echo 0) + 1))
  # After the exec below this shell's pid is the JVM's: the watcher checks
  # it ($$) and reports readiness, and with --owner stops it.
  (
    while kill -0 $$ 2>/dev/null; do
      if tail -c +"$from" "$data/server.log" 2>/dev/null | grep -q "Kafka Server started"; then
        echo "kafka: ready, bootstrap 127.0.0.1:$port (pid $$, log $data/server.log)"
        break
      fi
      sleep 0.1
    done
    [ -n "$owner" ] || exit 0
    while kill -0 "$owner" 2>/dev/null && kill -0 $$ 2>/dev/null; do sleep 1; done
    if kill -0 $$ 2>/dev/null; then
      kill -TERM $$ 2>/dev/null || true
      for _ in $(seq 1 300); do kill -0 $$ 2>/dev/null || break; sleep 0.1; done
      kill -KILL $$ 2>/dev/null || true
      rm -rf "$data"
    fi
  ) &
  echo "kafka: starting Apache Kafka $version on 127.0.0.1:$port (controller $cport), data $data"
  exec "${java[@]}" kafka.Kafka "$data/server.properties"
}

case "${1:-}" in
  install) install; echo "$home" ;;
  classpath) install; echo "$home/*" ;;
  start) shift; start "$@" ;;
  *) die "usage: kafka.sh install | classpath | start --dir DATA --port N [--controller-port M] [--owner PID]" ;;
esac
