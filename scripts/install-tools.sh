#!/usr/bin/env bash
# Installs the tools that check the deployment (tests/deploy.rs), into
# ~/.cache/pretext (PRETEXT_TOOLS overrides), outside the repository:
#   bin/helm                 helm v3, built with `go install` from the Go module proxy
#   bin/promtool, prometheus from Debian's `prometheus` package, extracted (no
#                            service installed or started)
#   bin/check-jsonschema, bin/yamllint, bin/kubernetes-validate
#                            from PyPI into venv/ (kubernetes-validate ships the
#                            Kubernetes JSON schemas: nothing is fetched at run time)
# Idempotent: each tool is installed only when its pinned version is missing,
# so a second run takes a second or two.
set -euo pipefail

cache="${PRETEXT_TOOLS:-$HOME/.cache/pretext}"
bin="$cache/bin"
venv="$cache/venv"
helm_version="v3.22.0"
# The Kubernetes version helm 3.22.0 is built against (its k8s.io/client-go
# v0.37): `helm template` and `helm lint` assume it, as in helm's own Makefile
# (without it, go install leaves 1.20 and the chart's kubeVersion refuses it).
helm_kube_major=1
helm_kube_minor=37
python_pins=(check-jsonschema==0.39.0 yamllint==1.38.0 kubernetes-validate==1.37.0)
mkdir -p "$bin"

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

log() { echo "install-tools: $*" >&2; }

# Seconds since the script started, for the log.
started=$(date +%s)
took() { echo "$(($(date +%s) - started))s"; }

install_helm() {
  if "$bin/helm" version --template '{{.Version}}' 2>/dev/null | grep -qx "$helm_version"; then
    return
  fi
  command -v go >/dev/null 2>&1 || { log "go not found: helm is built with go install"; exit 1; }
  log "go install helm $helm_version (compiles ~1000 packages, once)"
  local x="-X helm.sh/helm/v3/internal/version.version=$helm_version"
  for pkg in pkg/chartutil pkg/lint/rules; do
    x="$x -X helm.sh/helm/v3/$pkg.k8sVersionMajor=$helm_kube_major"
    x="$x -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$helm_kube_minor"
  done
  # CGO off: helm needs no C, and the build skips the cgo toolchain.
  CGO_ENABLED=0 GOBIN="$bin" GOFLAGS="-buildvcs=false" \
    go install -trimpath -ldflags "-s -w $x" "helm.sh/helm/v3/cmd/helm@$helm_version"
  log "helm $("$bin/helm" version --template '{{.Version}}') after $(took)"
}

# promtool and prometheus come out of Debian's package without installing it:
# installing it would add a prometheus service that starts on some machines.
install_promtool() {
  if "$bin/promtool" --version >/dev/null 2>&1 && "$bin/prometheus" --version >/dev/null 2>&1; then
    return
  fi
  local tmp
  tmp=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$tmp'" RETURN
  if ! (cd "$tmp" && apt-get download prometheus >/dev/null 2>&1); then
    $sudo apt-get -o DPkg::Lock::Timeout=120 update -qq
    (cd "$tmp" && apt-get download prometheus >/dev/null)
  fi
  dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/root"
  install -m 0755 "$tmp/root/usr/bin/promtool" "$tmp/root/usr/bin/prometheus" "$bin/"
  log "$("$bin/promtool" --version 2>&1 | head -1) after $(took)"
}

install_python_tools() {
  local stamp="$venv/.pins" want
  want="${python_pins[*]}"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
    && [ -x "$venv/bin/check-jsonschema" ] && [ -x "$venv/bin/yamllint" ] \
    && [ -x "$venv/bin/kubernetes-validate" ]; then
    link_python_tools
    return
  fi
  if [ ! -x "$venv/bin/pip" ]; then
    if ! python3 -m venv "$venv" 2>/dev/null; then
      log "apt-get install python3-venv"
      $sudo apt-get -o DPkg::Lock::Timeout=120 update -qq
      DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=120 install -y -qq python3-venv >/dev/null
      rm -rf "$venv"
      python3 -m venv "$venv"
    fi
  fi
  log "pip install ${python_pins[*]}"
  "$venv/bin/pip" install -q --disable-pip-version-check "${python_pins[@]}"
  echo "$want" >"$stamp"
  link_python_tools
  log "python tools after $(took)"
}

link_python_tools() {
  for t in check-jsonschema yamllint kubernetes-validate; do
    ln -sf "$venv/bin/$t" "$bin/$t"
  done
}

# The three are independent: run them side by side.
install_helm &
helm_pid=$!
install_promtool &
prom_pid=$!
status=0
install_python_tools || status=$?
wait "$prom_pid" || status=$?
wait "$helm_pid" || status=$?
[ "$status" -eq 0 ] || exit "$status"
for t in helm promtool prometheus check-jsonschema yamllint kubernetes-validate; do
  [ -x "$bin/$t" ] || { log "$bin/$t is missing after the install"; exit 1; }
done
log "tools ready in $bin ($(took))"
