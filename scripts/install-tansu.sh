#!/usr/bin/env bash
# Installs the test broker, tansu 0.6.0 (a Kafka-API broker), from crates.io,
# once: does nothing when `tansu --version` already reports 0.6.0.
# About 13 minutes on 2 cores the first time.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
want="0.6.0"
if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -q "$want"; then
  exit 0
fi
"$(dirname "$0")/setup.sh"
echo "install-tansu: installing tansu $want (takes a while, once)" >&2
cargo install tansu --version "$want" --locked --features dynostore,libsql
tansu --version
