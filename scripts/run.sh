#!/usr/bin/env bash
# The main job. Without arguments: replays the bundled sample
# (examples/sample.jsonl, embedded in the binary) and prints its triggers.
# With arguments: runs `pretext ARGS...`, e.g. `scripts/run.sh run --config config/live-local.toml`
# (live mode needs a broker: scripts/dev-broker.sh starts one).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ $# -eq 0 ]; then
  set -- replay --flush
fi
exec cargo run --release --locked --quiet -- "$@"
