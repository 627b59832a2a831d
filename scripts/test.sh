#!/usr/bin/env bash
# Every test: unit, engine-on-files, CLI, ops, and end-to-end against a real
# tansu broker. Installs what it needs first (idempotent). One build profile
# (release) for everything, the same build scripts/run.sh uses.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

tools_log=$(mktemp -t pretext-tools-install.XXXXXX); bash scripts/install-tools.sh >"$tools_log" 2>&1 & tools_pid=$!  # helm, promtool... for tests/deploy.rs (~4 min cold)
# tansu takes ~13 minutes to install once; build the tests meanwhile.
log=$(mktemp -t pretext-tansu-install.XXXXXX)
bash scripts/install-tansu.sh >"$log" 2>&1 &
tansu_pid=$!
build_status=0
cargo test --release --locked --no-run || build_status=$?
tansu_status=0
wait "$tansu_pid" || tansu_status=$?
if [ "$tansu_status" -ne 0 ]; then
  echo "test: installing tansu failed:" >&2
  cat "$log" >&2
  exit "$tansu_status"
fi
wait "$tools_pid" || { echo "test: installing the deployment tools failed:" >&2; cat "$tools_log" >&2; exit 1; }
[ "$build_status" -eq 0 ] || exit "$build_status"
export PATH="$HOME/.cargo/bin:$PATH"
exec cargo test --release --locked "$@"
