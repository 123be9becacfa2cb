# shellcheck shell=bash
# shellcheck disable=SC2034 # the variables are for the scripts that source this file
# Shared by tools/image/*.sh (sourced, not run). Everything lives outside the repo, in $IMG_CACHE.

IMG_CACHE=${POD_IDENTITY_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pod-identity-injector-images}
IMG_ARCHIVES=$IMG_CACHE/archives
# The private daemon: its own data-root, exec-root, socket and pidfile.
DOCKERD_DATA=$IMG_CACHE/docker
DOCKERD_EXEC=$IMG_CACHE/run
DOCKERD_SOCK=$IMG_CACHE/docker.sock
DOCKERD_PID=$IMG_CACHE/dockerd.pid
DOCKERD_LOG=$IMG_CACHE/dockerd.log
# The Debian client matches the Debian daemon (API 1.41) and has the classic builder without
# a deprecation notice; any docker client works against the socket.
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker || echo docker)}
export DOCKER_HOST=unix://$DOCKERD_SOCK
# Classic builder: BuildKit would pull its frontend (docker/dockerfile:1) from a registry.
export DOCKER_BUILDKIT=0

# The base the Dockerfile's FROM names, and the pause image containerd's sandbox_image should be.
BASE_IMAGE=python:3.11-slim-bookworm
PAUSE_IMAGE=localhost/pause:3.10
# The cluster tier's workload: the AWS SDKs as pods run them (tests/cluster/workload).
WORKLOAD_IMAGE=localhost/aws-sdk-workload:dev

IMG_TOOLS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$IMG_TOOLS/../.." && pwd)

img_log() { printf '[image] %s\n' "$*" >&2; }
img_die() { img_log "error: $*"; exit 1; }
docker() { "$DOCKER" "$@"; }

# The archive file for an image reference: pod-identity-injector:dev -> .../pod-identity-injector_dev.tar
img_archive_path() { printf '%s/%s.tar\n' "$IMG_ARCHIVES" "$(printf '%s' "$1" | tr '/:@' '___')"; }

# Human size of an image as the daemon reports it.
img_size() { docker image ls --format '{{.Size}}' "$1" | head -n1; }

# img_daemon_ensure: start the private daemon unless it answers; img_daemon_release (in an
# EXIT trap) stops it again if img_daemon_ensure started it, unless
# POD_IDENTITY_IMAGES_KEEP_DAEMON=1 (build.sh --keep-daemon).
IMG_STARTED_DAEMON=0
img_daemon_ensure() {
    if ! "$IMG_TOOLS/dockerd.sh" status; then
        "$IMG_TOOLS/dockerd.sh" start
        IMG_STARTED_DAEMON=1
    fi
}
img_daemon_release() {
    if ((IMG_STARTED_DAEMON)) && [[ ${POD_IDENTITY_IMAGES_KEEP_DAEMON:-0} != 1 ]]; then
        "$IMG_TOOLS/dockerd.sh" stop
    fi
}

# img_lock: one base.sh/build.sh at a time per cache (sessions may share it: one must not stop
# the daemon under another's build); held until the script exits, inherited by its children.
img_lock() {
    [[ ${IMG_LOCKED:-} == "$IMG_CACHE" ]] && return 0
    mkdir -p "$IMG_CACHE"
    exec 9>>"$IMG_CACHE/lock"
    if ! flock -n 9; then
        img_log "waiting for another build on $IMG_CACHE"
        flock 9
    fi
    export IMG_LOCKED=$IMG_CACHE
}
