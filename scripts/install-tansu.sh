#!/usr/bin/env bash
# Installs the test broker, tansu 0.6.0 (a Kafka-API broker in Rust), from
# crates.io, once: does nothing when `tansu --version` already reports 0.6.0.
# Works on a fresh Debian machine as root (or with sudo): installs the C
# toolchain and headers the build needs, and the Rust toolchain (rustup,
# minimal profile) when cargo is missing. About 13 minutes on 2 cores.
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
want="0.6.0"

if command -v tansu >/dev/null 2>&1 && tansu --version 2>/dev/null | grep -qw "$want"; then
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# What tansu 0.6.0's native dependencies build with (libsql-ffi: cc and
# bindgen, so libclang; aws-lc-sys and lz4/zstd: cc; libz-sys: zlib); curl
# and ca-certificates fetch rustup when cargo is missing. cmake is not needed.
packages=(build-essential pkg-config clang libclang-dev zlib1g-dev ca-certificates curl)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-tansu: apt-get install ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-tansu: cargo not found, installing the Rust toolchain with rustup" >&2
  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi

echo "install-tansu: cargo install tansu $want (takes a while, once)" >&2
cargo install tansu --version "$want" --locked --features dynostore,libsql
tansu --version
