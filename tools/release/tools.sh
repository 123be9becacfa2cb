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
# One build at a time (the release tier and the cluster tier may ask together).
mkdir -p "$cache"
exec 8>>"$cache/.lock"
flock 8

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
# apt_install PACKAGE...: Debian's (or Ubuntu's) packages, through sudo when not root.
apt_install() {
    local sudo=()
    (($(id -u) == 0)) || sudo=(sudo DEBIAN_FRONTEND=noninteractive)
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >&2 ||
        { "${sudo[@]}" apt-get update -qq >&2 &&
          DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >&2; }
}
# `type -P`, not `command -v`: inside this script `command -v skopeo` finds the function below
# and says yes even when the program is missing.
skopeo() {
    type -P skopeo >/dev/null || apt_install skopeo
    type -P skopeo
}
# What assemble.py needs beside Python: Debian's archive keyring (apt verifies the packages with
# it), dpkg-deb, strip for arm64; qemu-user-static to start the arm64 image here.
deps() {
    local missing=()
    [[ -f /usr/share/keyrings/debian-archive-keyring.gpg ]] || missing+=(debian-archive-keyring)
    command -v dpkg-deb >/dev/null || missing+=(dpkg)
    command -v aarch64-linux-gnu-strip >/dev/null || missing+=(binutils-aarch64-linux-gnu)
    command -v x86_64-linux-gnu-strip >/dev/null || missing+=(binutils-x86-64-linux-gnu)
    command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
    type -P skopeo >/dev/null || missing+=(skopeo)
    ((${#missing[@]} == 0)) || apt_install "${missing[@]}"
    printf 'deps ok\n'
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
