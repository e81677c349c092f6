#!/usr/bin/env bash
# Builds the control plane that envtest needs (kube-apiserver, etcd, kubectl) and
# controller-gen from the Go module proxy, once, into a git-ignored folder named for
# the versions. The usual envtest download site is not reachable from our machines,
# but every binary builds from modules the proxy serves.
#
# Usage: hack/envtest-assets.sh [--print]   prints the folder on the last line of stdout.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.37.2}
ETCD_VERSION=${ETCD_VERSION:-3.6.6}
CONTROLLER_TOOLS_VERSION=${CONTROLLER_TOOLS_VERSION:-v0.23.0}

root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/bin/k8s/$K8S_VERSION"
mkdir -p "$dir"

log() { printf '[envtest-assets %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# Each step runs with a heartbeat so that a first build (several minutes) is never a silent wait.
run_step() {
  local what=$1; shift
  local start=$SECONDS
  log "building $what ..."
  ( "$@" ) &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    sleep 15
    kill -0 "$pid" 2>/dev/null && log "  still building $what ($((SECONDS - start))s)"
  done
  wait "$pid"
  log "built $what in $((SECONDS - start))s"
}

build_kube() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  cd "$work"
  cat > go.mod <<MOD
module envtestassets

go 1.26
MOD
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  # k8s.io/kubernetes pins its staging modules at v0.0.0 with replace directives to
  # local paths; point each at the published v0.<minor>.<patch> tag instead.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')
  local staging="v0.${K8S_VERSION#1.}"
  go mod edit -require="k8s.io/kubernetes@v$K8S_VERSION"
  for m in $(awk '/^replace \(/{f=1;next} f&&/^\)/{f=0} f&&$1 ~ /^k8s.io\//{print $1}' "$gomod"); do
    go mod edit -replace="$m=$m@$staging"
  done
  GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || GOFLAGS=-mod=mod go mod tidy
  [ -x "$dir/kube-apiserver" ] || go build -o "$dir/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  [ -x "$dir/kubectl" ] || go build -o "$dir/kubectl" k8s.io/kubernetes/cmd/kubectl
}

build_etcd() {
  local work
  work=$(mktemp -d)
  trap 'rm -rf "$work"' RETURN
  cd "$work"
  cat > go.mod <<MOD
module etcdassets

go 1.26
MOD
  cat > tools.go <<'GO'
//go:build tools

package tools

import _ "go.etcd.io/etcd/server/v3"
GO
  go mod edit -require="go.etcd.io/etcd/server/v3@v$ETCD_VERSION"
  GOFLAGS=-mod=mod go mod tidy >/dev/null 2>&1 || GOFLAGS=-mod=mod go mod tidy
  go build -o "$dir/etcd" go.etcd.io/etcd/server/v3
}

if [ ! -x "$dir/etcd" ]; then run_step "etcd v$ETCD_VERSION" build_etcd; fi
if [ ! -x "$dir/kube-apiserver" ] || [ ! -x "$dir/kubectl" ]; then
  run_step "kube-apiserver and kubectl v$K8S_VERSION (about 10 minutes the first time)" build_kube
fi
if [ ! -x "$root/bin/controller-gen" ]; then
  run_step "controller-gen $CONTROLLER_TOOLS_VERSION" \
    env GOBIN="$root/bin" go install "sigs.k8s.io/controller-tools/cmd/controller-gen@$CONTROLLER_TOOLS_VERSION"
fi
echo "$dir"
