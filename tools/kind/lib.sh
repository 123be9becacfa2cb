# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this file
# Shared by tools/kind/*.sh (sourced, not run): versions, cache paths, the Go environment and
# the private Docker daemon kind talks to. Everything built lives in $KIND_CACHE, never the repo.

KIND_TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$KIND_TOOLS/../.." && pwd)

# Pinned versions: the node's other parts, from the Go module proxy too.
KIND_VERSION=v0.33.0
CONTAINERD_VERSION=v2.1.5
CRICTL_VERSION=v1.34.0
COREDNS_VERSION=v1.12.1
# KUBE_VERSION is the node's Kubernetes: a minor or a release of tools/kube-test-plane/versions.txt
# (1.37, 1.37.2, v1.37.2 -> its pinned patch), or any other patch the Go module proxy serves.
# Unset: the pinned release of that file, the default of every tier.
kube_release() { # VERSION -> the release versions.txt pins for it, or VERSION itself
    local w=${1#v}
    awk -v w="$w" '!/^#/ && NF >= 3 && ($1 == w || $2 == w) { print $2; found = 1 }
        END { if (!found) print w }' "$REPO_ROOT/tools/kube-test-plane/versions.txt"
}
if [[ -n ${KUBE_VERSION:-} ]]; then
    KUBE_VERSION=$(kube_release "$KUBE_VERSION")
else
    KUBE_VERSION=$(awk '!/^#/ && $4 == "pinned" { print $2 }' "$REPO_ROOT/tools/kube-test-plane/versions.txt")
fi
KIND_CACHE=${POD_IDENTITY_KIND_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pod-identity-injector-kind}
KIND_BIN=$KIND_CACHE/bin
KIND=$KIND_BIN/kind
# The node image of a version, and the images its kubeadm is told to use (imageRepository):
# local names, so that no daemon ever asks a registry for them.
NODE_IMAGE_REPO=localhost/kind-node
KUBE_IMAGE_REPO=localhost/kube
node_image() { printf '%s:v%s\n' "$NODE_IMAGE_REPO" "${1:-$KUBE_VERSION}"; }

# Go: the module proxy only (never a direct fetch), the toolchain on PATH, static binaries.
export GOPROXY=https://proxy.golang.org GOTOOLCHAIN=local CGO_ENABLED=0
export GOFLAGS="-mod=mod -buildvcs=false"
# k8s.io/kubernetes (and the staging modules at some patches) are not in the checksum database.
export GONOSUMDB=${GONOSUMDB:-k8s.io}

# kind's own Docker daemon: tools/image/dockerd.sh with its own data-root and socket (so image
# builds never stop it under a cluster), and a runc that drops CAP_SYS_RESOURCE (this host's
# bounding set lacks it; a --privileged container asks for every capability) as its default
# runtime. It creates bridges for kind's network, never host iptables rules.
export POD_IDENTITY_IMAGES_CACHE=$KIND_CACHE/daemon
export POD_IDENTITY_DOCKERD_RUNTIME=$KIND_TOOLS/runc-without-sys-resource
export DOCKER_HOST=unix://$POD_IDENTITY_IMAGES_CACHE/docker.sock DOCKER_BUILDKIT=0
# Debian's client matches Debian's daemon (tools/image/lib.sh); any client works.
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}

kind_log() { printf '[kind] %s\n' "$*" >&2; }
kind_die() { kind_log "error: $*"; exit 1; }
docker() { "$DOCKER" "$@"; }

# kind_lock: one build at a time per cache, held until the script exits.
kind_lock() {
    [[ ${KIND_LOCKED:-} == "$KIND_CACHE" ]] && return 0
    mkdir -p "$KIND_CACHE"
    exec 8>>"$KIND_CACHE/lock"
    flock -n 8 || { kind_log "waiting for another build on $KIND_CACHE"; flock 8; }
    export KIND_LOCKED=$KIND_CACHE
}
