#!/usr/bin/env bash
# Builds kube-test-plane (kube-apiserver + embedded etcd, one binary) into a
# cache directory OUTSIDE the repository and prints the binary's path on stdout.
#
#   BIN=$(bash tools/kube-test-plane/build.sh)
#
# Idempotent: if the cached binary already reports the Kubernetes version
# pinned in go.mod and was built from the current go.mod, go.sum, *.go and
# build.sh (a hash stamped into it), nothing is built and no Go is needed.
#
# Environment:
#   KUBE_TEST_PLANE_BIN  output path (default ~/.cache/kube-test-plane/v<version>/kube-test-plane)
#   GOFLAGS              appended to the flags set here, e.g. GOFLAGS=-p=2
# Progress and compiler output go to stderr; only the path goes to stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# The version is read with sed, not `go`, so the no-op path works without Go.
v=$(sed -n 's/^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}k8s\.io\/kubernetes[[:space:]]\{1,\}v\([0-9][0-9.]*\)\([[:space:]].*\)\{0,1\}$/\2/p' "$here/go.mod" | head -1)
if [[ -z $v ]]; then
  echo "kube-test-plane: cannot find the k8s.io/kubernetes requirement in $here/go.mod" >&2
  exit 1
fi
out=${KUBE_TEST_PLANE_BIN:-${XDG_CACHE_HOME:-$HOME/.cache}/kube-test-plane/v$v/kube-test-plane}
[[ $out == /* ]] || out="$PWD/$out"

# Fingerprint of everything the binary is built from; stamped into the binary
# so that an edit to main.go, go.mod, go.sum or this script forces a rebuild.
inputs=$(cd "$here" && cat go.mod go.sum build.sh ./*.go | sha256sum | cut -c1-16)

if [[ -x $out ]] &&
   [[ $("$out" kube-apiserver --version 2>/dev/null || true) == "Kubernetes v$v" ]] &&
   "$out" version 2>/dev/null | grep -qx "inputs $inputs"; then
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "kube-test-plane: $out is missing or stale and no Go toolchain is on PATH" >&2
  exit 3
fi
case $out in
  "$(cd "$here/../.." && pwd)"/*)
    echo "kube-test-plane: refusing to write the binary inside the repository ($out)" >&2
    exit 1 ;;
esac
mkdir -p "$(dirname "$out")"

# Static, reproducible-ish build with the toolchain on PATH; go.sum is authoritative.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false ${GOFLAGS:-}"

# Version stamping as upstream's hack/lib/version.sh does; without it /version
# reports v0.0.0-master and helm/kubectl version checks misbehave.
minor=$(cut -d. -f2 <<<"$v")
commit=""
info="$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$v.info"
if [[ -f $info ]]; then
  commit=$(tr -d '\n' <"$info" | sed -n 's/.*"Hash"[[:space:]]*:[[:space:]]*"\([0-9a-f]\{40\}\)".*/\1/p')
fi
ld="-s -w -X main.inputsHash=$inputs"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld+=" -X $p.gitVersion=v$v -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  [[ -z $commit ]] || ld+=" -X $p.gitCommit=$commit"
done

tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
echo "kube-test-plane: building Kubernetes v$v into $out (a cold build takes minutes)" >&2
(cd "$here" && go build -trimpath -ldflags "$ld" -o "$tmp" .) >&2
got=$("$tmp" kube-apiserver --version)
if [[ $got != "Kubernetes v$v" ]] || ! "$tmp" version | grep -qx "inputs $inputs"; then
  echo "kube-test-plane: built binary reports '$got', expected 'Kubernetes v$v' and inputs $inputs" >&2
  exit 1
fi
mv -f "$tmp" "$out"
echo "$out"
