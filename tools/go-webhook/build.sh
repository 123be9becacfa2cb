#!/usr/bin/env bash
# Builds the Go webhook's image offline from its Go module at the version pinned in go.mod, for
# the cluster tier's migration tests (docs/e2e.md). Everything lands in the cache, never in the repo:
#
#   ARCHIVE=$(bash tools/go-webhook/build.sh)   # a `docker save` archive of localhost/go-pod-identity-webhook:VERSION
#   DEPLOY=$(bash tools/go-webhook/build.sh --deploy)   # the module's deploy/ manifests, as published
#
# The image is the binary alone, FROM scratch (the Go project's own image adds go-runner, which
# only wraps the command line). Needs Go and tools/image's private Docker daemon; GOPROXY without
# `direct`: sources come from the module proxy only. Progress on stderr; stdout: one path.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
version=$(sed -n 's/^require github.com\/aws\/amazon-eks-pod-identity-webhook \(v[^ ]*\)$/\1/p' "$here/go.mod")
cache=${XDG_CACHE_HOME:-$HOME/.cache}/pod-identity-injector-go-webhook/$version
image=localhost/go-pod-identity-webhook:$version
proxy=$(go env GOPROXY | tr ',|' '\n\n' | grep -vx direct | paste -sd, -)
export GOPROXY=$proxy GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=readonly -buildvcs=false" GOWORK=off
mkdir -p "$cache"

source_dir() {
  (cd "$here" && go mod download -json github.com/aws/amazon-eks-pod-identity-webhook) |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])'
}

if [[ ${1:-} == --deploy ]]; then
  echo "$(source_dir)/deploy"
  exit 0
fi

archive=$cache/go-pod-identity-webhook.tar
if [[ -s $archive && -s $cache/inputs && $(cat "$cache/inputs") == $(cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum) ]]; then
  echo "$archive"
  exit 0
fi
echo "go-webhook: building $version (a cold build takes minutes)" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/go.mod" "$work/"
[[ ! -f $here/go.sum ]] || cp "$here/go.sum" "$work/"
(cd "$work" && nice -n 10 go build -trimpath -ldflags=-s -o "$work/context/webhook" \
  github.com/aws/amazon-eks-pod-identity-webhook) >&2
printf 'FROM scratch\nCOPY webhook /webhook\nENTRYPOINT ["/webhook"]\n' > "$work/context/Dockerfile"
# tools/image's daemon and its lock: one user at a time, and whoever started it stops it.
# shellcheck source=tools/image/lib.sh
. "$here/../image/lib.sh"
img_lock
trap 'img_daemon_release >&2; rm -rf "$work"' EXIT
img_daemon_ensure >&2
docker build -q -t "$image" "$work/context" >&2
docker save -o "$archive.tmp" "$image"
mv -f "$archive.tmp" "$archive"
cat "$here/go.mod" "$here/go.sum" "$0" | sha256sum > "$cache/inputs"
echo "$archive"
