#!/usr/bin/env bash
# Builds kube-test-plane (the Kubernetes components and an embedded etcd, one
# binary) into a cache directory OUTSIDE the repository and prints its path on stdout.
#
#   BIN=$(bash tools/kube-test-plane/build.sh)                 # the pinned version, every component
#   BIN=$(bash tools/kube-test-plane/build.sh --e2e v1.30.14)  # another minor, API server and etcd
#
# Arguments:
#   VERSION  a Kubernetes minor or release of versions.txt (1.30, 1.30.14 or v1.30.14);
#            default: the pinned one (go.mod). Other releases are refused: pin them first.
#   --e2e    only kube-apiserver and etcd, all that the e2e tier starts (minutes less to
#            build); an up-to-date binary with every component of that version serves too.
#   --cached never build: print the path if the binary is current, else exit 4.
#
# Idempotent: if the cached binary already reports the requested Kubernetes
# version and was built from the current inputs (the version's go.mod and go.sum,
# *.go, this script and the build tags: a hash stamped into it), nothing is
# built and no Go is needed.
#
# Environment:
#   KUBE_TEST_PLANE_BIN  output path for the pinned version, always with every component
#                        (default ~/.cache/kube-test-plane/v<version>/kube-test-plane[-e2e])
#   GOFLAGS              appended to the flags set here, e.g. GOFLAGS=-p=2
# Progress and compiler output go to stderr; only the path goes to stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
e2e=0
cached_only=0
want=""
for arg in "$@"; do
  case $arg in
    --e2e) e2e=1 ;;
    --cached) cached_only=1 ;;
    -*) echo "usage: $0 [--e2e] [--cached] [VERSION]" >&2; exit 2 ;;
    *) want=${arg#v} ;;
  esac
done

# versions.txt: "minor kubernetes etcd [pinned]" per line. Read with awk, not `go`,
# so the no-op path works without Go.
pinned=$(awk '!/^#/ && $4 == "pinned" { print $2 }' "$here/versions.txt")
[[ -n $want ]] || want=$pinned
v=$(awk -v w="$want" '!/^#/ && NF >= 3 && ($1 == w || $2 == w) { print $2 }' "$here/versions.txt")
if [[ -z $v ]]; then
  echo "kube-test-plane: Kubernetes $want is not in $here/versions.txt (supported: $(awk '!/^#/ && NF >= 3 { printf "%s ", $2 }' "$here/versions.txt"))" >&2
  exit 2
fi
minor=$(cut -d. -f2 <<<"$v")
if [[ $v == "$pinned" ]]; then
  modfile=go.mod
else
  modfile=versions/1.$minor.mod
fi
sumfile=${modfile%.mod}.sum
got=$(sed -n 's/^[[:space:]]*\(require[[:space:]]\{1,\}\)\{0,1\}k8s\.io\/kubernetes[[:space:]]\{1,\}v\([0-9][0-9.]*\)\([[:space:]].*\)\{0,1\}$/\2/p' "$here/$modfile" | head -1)
if [[ $got != "$v" ]]; then
  echo "kube-test-plane: $modfile requires k8s.io/kubernetes ${got:-(none)}, versions.txt says $v" >&2
  exit 1
fi
etcd=$(sed -n 's/^[[:space:]]*go\.etcd\.io\/etcd\/server\/v3[[:space:]]\{1,\}v\([0-9.]*\).*/\1/p' "$here/$modfile" | head -1)

# KUBE_TEST_PLANE_BIN names the pinned binary that every tier shares: all components.
[[ $v == "$pinned" && -n ${KUBE_TEST_PLANE_BIN:-} ]] && e2e=0

# Build tags (main.go): the components, and the API differences of older releases.
tags=""
((e2e)) && tags+=",kubetestplane_e2e"
[[ $etcd == 3.5.* ]] && tags+=",etcd3_5"
((minor < 34)) && tags+=",kubelet_noctx"
tags=${tags#,}
suffix=""
((e2e)) && suffix=-e2e
cache=${XDG_CACHE_HOME:-$HOME/.cache}/kube-test-plane/v$v
if [[ $v == "$pinned" && -n ${KUBE_TEST_PLANE_BIN:-} ]]; then
  out=$KUBE_TEST_PLANE_BIN
else
  out=$cache/kube-test-plane$suffix
fi
[[ $out == /* ]] || out="$PWD/$out"

# Fingerprint of everything the binary is built from; stamped into the binary so
# that an edit to main.go, the go.mod, go.sum or this script forces a rebuild.
fingerprint() { # tags
  (cd "$here" && { cat "$modfile" "$sumfile" build.sh ./*.go; echo "tags $1"; } | sha256sum | cut -c1-16)
}
current() { # binary inputs components...
  [[ -x $1 ]] && [[ $("$1" kube-apiserver --version 2>/dev/null || true) == "Kubernetes v$v" ]] || return 1
  local report
  report=$("$1" version 2>/dev/null) || return 1
  grep -qx "inputs $2" <<<"$report" || return 1
  local c
  for c in "${@:3}"; do grep -qx "components $c" <<<"$report" && return 0; done
  return 1
}
inputs=$(fingerprint "$tags")
if current "$out" "$inputs" "$( ((e2e)) && echo e2e || echo all)"; then
  echo "$out"
  exit 0
fi
if ((e2e)); then
  # The binary with every component runs the e2e tier just as well.
  full_tags=${tags/kubetestplane_e2e/}; full_tags=${full_tags#,}
  if current "$cache/kube-test-plane" "$(fingerprint "$full_tags")" all; then
    echo "$cache/kube-test-plane"
    exit 0
  fi
fi

((cached_only)) && exit 4
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
# Missing modules come from the module proxy only, never straight from their repositories.
export GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=readonly -buildvcs=false ${GOFLAGS:-}"
GOPROXY=$(go env GOPROXY | tr '|' ',' | tr ',' '\n' | grep -vx 'direct\|off' | paste -sd, -)
export GOPROXY=${GOPROXY:-https://proxy.golang.org}

# Version stamping as upstream's hack/lib/version.sh does; without it /version
# reports v0.0.0-master and helm/kubectl version checks misbehave.
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
echo "kube-test-plane: building Kubernetes v$v ($modfile, tags '${tags}') into $out (a cold build takes minutes)" >&2
(cd "$here" && go build -modfile="$modfile" -tags="$tags" -trimpath -ldflags "$ld" -o "$tmp" .) >&2
got=$("$tmp" kube-apiserver --version)
if [[ $got != "Kubernetes v$v" ]] || ! "$tmp" version | grep -qx "inputs $inputs"; then
  echo "kube-test-plane: built binary reports '$got', expected 'Kubernetes v$v' and inputs $inputs" >&2
  exit 1
fi
mv -f "$tmp" "$out"
echo "$out"
