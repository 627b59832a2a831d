#!/usr/bin/env bash
# The crash-safety test with more kills: `pretext run` killed with SIGKILL
# at KILLS random moments (default 20), restarted each time; at the end the
# trigger ids and the RocksDB state must equal an uninterrupted replay's.
#
#   scripts/crash-loop.sh [KILLS] [SEED]
#
# The seed is printed; passing it again repeats the kill moments (the
# timing of the machine still varies). The broker is Apache Kafka
# (scripts/kafka.sh, installed once).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export PRETEXT_CRASH_KILLS="${1:-20}"
if [ -n "${2:-}" ]; then export PRETEXT_CRASH_SEED="$2"; fi
scripts/kafka.sh install >/dev/null
exec cargo test --release --locked --test faults_e2e -- --exact \
  sigkill_at_random_moments_loses_nothing_and_applies_nothing_twice --nocapture
