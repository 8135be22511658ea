#!/usr/bin/env bash
# Builds kube-apiserver, kubectl and etcd from the Go module proxy into a cache outside the
# repo, once per version. Prints the directory holding them on stdout; progress goes to stderr.
set -euo pipefail
K8S_VERSION=1.37.2
ETCD_VERSION=3.7.0
here=$(cd "$(dirname "$0")" && pwd)
dir="${BOILERHOUSE_K8S_ASSETS:-${XDG_CACHE_HOME:-$HOME/.cache}/boilerhouse/k8s-v$K8S_VERSION}"

ok() {
  [ -x "$dir/kube-apiserver" ] && [ -x "$dir/kubectl" ] && [ -x "$dir/etcd" ] &&
    "$dir/kube-apiserver" --version 2>/dev/null | grep -qx "Kubernetes v$K8S_VERSION" &&
    "$dir/etcd" --version 2>/dev/null | grep -q "etcd Version: $ETCD_VERSION"
}

if ! ok; then
  mkdir -p "$dir"
  tmp=$(mktemp -d "$dir/.build.XXXXXX")
  trap 'rm -rf "$tmp"; [ -n "${ticker:-}" ] && kill "$ticker" 2>/dev/null || true' EXIT
  echo "controlplane: building kube-apiserver, kubectl v$K8S_VERSION and etcd v$ETCD_VERSION into $dir (about 9 minutes cold on 2 cores)" >&2
  start=$(date +%s)
  ( while sleep 30; do echo "controlplane: still building... $(( $(date +%s) - start ))s" >&2; done ) &
  ticker=$!
  minor=${K8S_VERSION#*.}; minor=${minor%.*}
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=v$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  # Its own module, outside the repository's go.work (k8s.io/kubernetes pins its own versions).
  (cd "$here" && export GOWORK=off && go mod download && go build -mod=readonly -ldflags "$ldflags" -o "$tmp/" \
     k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl ./etcd)
  # Rename into place only after all three built, so an interrupted build leaves no half set.
  mv -f "$tmp/kube-apiserver" "$tmp/kubectl" "$tmp/etcd" "$dir/"
  echo "controlplane: built in $(( $(date +%s) - start ))s" >&2
  ok || { echo "controlplane: built binaries fail their version check" >&2; exit 1; }
fi
echo "$dir"
