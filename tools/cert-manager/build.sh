#!/usr/bin/env bash
# Builds cert-manager's controller, cainjector and webhook images offline, for the cluster tier's
# certManager scenarios (docs/e2e.md). The root module github.com/cert-manager/cert-manager comes
# from the Go module proxy at the version pinned in each go.mod; the three small `main` modules
# (cmd/controller, cmd/cainjector, cmd/webhook) are not published there, so their sources are
# kept here as released (see README.md). Everything lands in the cache, never in the repo:
#
#   bash tools/cert-manager/build.sh           # stdout: three `docker save` archives, one a line
#   bash tools/cert-manager/build.sh --chart   # stdout: the chart directory of the pinned module
#
# Images: localhost/cert-manager-{controller,cainjector,webhook}:VERSION, the binary alone FROM
# scratch, as non-root 1000 like upstream's. Needs Go and tools/image's private Docker daemon;
# GOPROXY without `direct`. Progress on stderr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^[[:space:]]*github.com\/cert-manager\/cert-manager \(v[^ ]*\)$/\1/p' "$here/controller/go.mod" | head -1)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pod-identity-injector-cert-manager/$version
proxy=$(go env GOPROXY | tr ',|' '\n\n' | grep -vx direct | paste -sd, -)
export GOPROXY=$proxy GOTOOLCHAIN=local CGO_ENABLED=0 GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false"
mkdir -p "$cache"

if [[ ${1:-} == --chart ]]; then
  dir=$(cd "$here/controller" && go mod download -json github.com/cert-manager/cert-manager |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  echo "$dir/deploy/charts/cert-manager"
  exit 0
fi

inputs=$(cd "$here" && cat build.sh ./*/go.mod ./*/go.sum $(find . -name '*.go' | sort) | sha256sum | cut -c1-16)
if [[ -s $cache/inputs && $(cat "$cache/inputs") == "$inputs" ]]; then
  for binary in controller cainjector webhook; do echo "$cache/cert-manager-$binary.tar"; done
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ld="-s -w -X github.com/cert-manager/cert-manager/pkg/util.AppVersion=$version"
for binary in controller cainjector webhook; do
  echo "cert-manager: building $binary $version (a cold build takes many minutes)" >&2
  mkdir -p "$work/$binary"
  (cd "$here/$binary" && nice -n 10 go build -trimpath -ldflags "$ld" -o "$work/$binary/$binary" .) >&2
  printf 'FROM scratch\nCOPY %s /app/cmd/%s\nUSER 1000:1000\nENTRYPOINT ["/app/cmd/%s"]\n' \
    "$binary" "$binary" "$binary" > "$work/$binary/Dockerfile"
done
# tools/image's daemon and its lock: one user at a time, and whoever started it stops it.
# shellcheck source=tools/image/lib.sh
. "$here/../image/lib.sh"
img_lock
trap 'img_daemon_release >&2; rm -rf "$work"' EXIT
img_daemon_ensure >&2
for binary in controller cainjector webhook; do
  image=localhost/cert-manager-$binary:$version
  docker build -q -t "$image" "$work/$binary" >&2
  docker save -o "$cache/cert-manager-$binary.tar.tmp" "$image"
  mv -f "$cache/cert-manager-$binary.tar.tmp" "$cache/cert-manager-$binary.tar"
done
echo "$inputs" > "$cache/inputs"
for binary in controller cainjector webhook; do echo "$cache/cert-manager-$binary.tar"; done
