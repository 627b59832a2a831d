#!/usr/bin/env bash
# Installs schemathesis (the OpenAPI property-based tester that tests/query.rs
# runs against the query API) into its own virtualenv under
# ~/.cache/pretext, once: does nothing when that venv already holds the
# pinned version. Prints the path of the `st` command on stdout.
# Needs python3 with the venv module (Debian: python3-venv) and PyPI.
set -euo pipefail
want="4.32.5"
venv="${PRETEXT_CACHE:-$HOME/.cache/pretext}/schemathesis-$want"
st="$venv/bin/st"

if [ -x "$st" ] && "$st" --version 2>/dev/null | grep -qw "$want"; then
  echo "$st"
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "install-schemathesis: apt-get install python3-venv" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >/dev/null
fi

echo "install-schemathesis: pip install schemathesis==$want into $venv (once)" >&2
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$want" >&2
"$st" --version >&2
echo "$st"
