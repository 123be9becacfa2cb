#!/usr/bin/env bash
# Puts the release tools into a cache outside the repository and prints one `NAME=PATH` line
# per tool on stdout (nothing else):
#
#   eval "$(tools/release/tools.sh)"      # -> COSIGN=… SYFT=… SKOPEO=… HELM=…
#   tools/release/tools.sh cosign         # only the path of one tool
#
# cosign and syft are built from the Go module proxy at the versions pinned below (`go install
# module@version`; GOPROXY without a `direct` fallback, so nothing is fetched from elsewhere),
# into ${XDG_CACHE_HOME:-~/.cache}/release-tools/NAME-VERSION; a no-op when present. skopeo
# (copies the OCI image index to the registry) is Debian's package, installed when missing;
# helm comes from tools/get-helm.sh. Progress goes to stderr.
set -euo pipefail

COSIGN_VERSION=v3.1.3      # github.com/sigstore/cosign/v3
SYFT_VERSION=v1.57.2       # github.com/anchore/syft

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${RELEASE_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/release-tools}
log() { printf 'release-tools: %s\n' "$*" >&2; }

# go_tool NAME PACKAGE VERSION: the cached binary's path, built on first use.
go_tool() {
    local name=$1 pkg=$2 version=$3 dir bin
    dir=$cache/$name-$version
    bin=$dir/$name
    if [[ ! -x $bin ]]; then
        command -v go >/dev/null || { log "no go command to build $name $version"; exit 3; }
        log "building $name $version from the Go module proxy (a few minutes, once)"
        mkdir -p "$dir"
        local proxy
        proxy=$(go env GOPROXY)
        proxy=${proxy%,direct}; proxy=${proxy%|direct}
        [[ -n $proxy && $proxy != direct && $proxy != off ]] || proxy=https://proxy.golang.org
        # The module's own go.mod and go.sum decide every dependency's version.
        GOPROXY=$proxy GOFLAGS=-buildvcs=false GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN=$dir.tmp \
            nice go install -trimpath -ldflags="-s -w" "$pkg@$version" >&2
        mv -f "$dir.tmp/$name" "$bin"
        rmdir "$dir.tmp"
    fi
    printf '%s\n' "$bin"
}

cosign() { go_tool cosign github.com/sigstore/cosign/v3/cmd/cosign "$COSIGN_VERSION"; }
syft() { go_tool syft github.com/anchore/syft/cmd/syft "$SYFT_VERSION"; }
skopeo() {
    if ! command -v skopeo >/dev/null; then
        log "installing Debian's skopeo"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >&2; }
    fi
    command -v skopeo
}
helm() { bash "$here/../get-helm.sh"; }

if (($#)); then
    for tool in "$@"; do "$tool"; done
else
    printf 'COSIGN=%s\n' "$(cosign)"
    printf 'SYFT=%s\n' "$(syft)"
    printf 'SKOPEO=%s\n' "$(skopeo)"
    printf 'HELM=%s\n' "$(helm)"
fi
