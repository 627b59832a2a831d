#!/usr/bin/env bash
# The crash-safety test with more kills: `pretext run` killed with SIGKILL
# at KILLS random moments (default 20), restarted each time; at the end the
# trigger ids and the RocksDB state must equal an uninterrupted replay's.
#
#   scripts/crash-loop.sh [--exactly-once] [KILLS] [SEED]
#
# With --exactly-once, pretext runs with kafka.exactly_once = true and a
# third of the kills land between a transaction's commit and its state's
# (PRETEXT_CRASH_AFTER_TXN); a read_committed consumer must then see every
# trigger, holdout trigger, conversion and dead letter of the replay exactly
# once (tests/eos_e2e.rs).
#
# The seed is printed; passing it again repeats the kill moments (the
# timing of the machine still varies). The broker is Apache Kafka
# (scripts/kafka.sh, installed once).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
test_file=faults_e2e
test_name=sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice
if [ "${1:-}" = "--exactly-once" ]; then
  shift
  test_file=eos_e2e
  test_name=kill9_at_seeded_moments_every_output_exactly_once
fi
export PRETEXT_CRASH_KILLS="${1:-20}"
if [ -n "${2:-}" ]; then export PRETEXT_CRASH_SEED="$2"; fi
scripts/kafka.sh install >/dev/null
exec cargo test --release --locked --test "$test_file" -- --exact \
  "$test_name" --nocapture
