#!/usr/bin/env bash
# Installs what building pretext needs on a fresh Debian machine, idempotently:
# libclang (bindgen for RocksDB), a C/C++ toolchain, pkg-config and the
# OpenSSL and zlib headers (librdkafka with TLS). Does nothing when all are there.
set -euo pipefail

packages=(libclang-dev clang build-essential pkg-config libssl-dev zlib1g-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found: install the Rust toolchain (rustup) first" >&2
  exit 1
fi
