#!/usr/bin/env bash
# Builds the webhook image from the repo's Dockerfile as users build it (`docker build .`,
# classic builder), the pod sandbox (pause) image and the cluster tier's workload image (the
# AWS SDKs, tests/cluster/workload), in the private daemon (dockerd.sh), with the base made
# locally (base.sh); `docker save`s each to an archive for `ctr -n k8s.io images import ARCHIVE`.
#
#   tools/image/build.sh [--tag REF] [--no-app] [--no-pause | --pause-only] [--no-workload] [--force] [--keep-daemon]
#
# stdout: only the archive paths, one a line (the webhook image first, then the pause image,
# then the workload image $WORKLOAD_IMAGE). --no-app leaves the webhook image out (the cluster
# tier pulls the released image from its registry instead).
# stderr: progress, build output, image sizes. Defaults: REF pod-identity-injector:dev, pause
# $PAUSE_IMAGE (lib.sh). A build is skipped when its inputs hash (a label on the image) is
# unchanged and its archive holds that image. The daemon is stopped at the end if this script
# started it, unless --keep-daemon.
set -euo pipefail
# shellcheck source=tools/image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tag=pod-identity-injector:dev app=1 pause=1 workload=1 force=0
while (($#)); do
    case $1 in
        --tag) tag=${2:?--tag needs a value}; shift ;;
        --tag=*) tag=${1#--tag=} ;;
        --no-app) app=0 ;;
        --no-pause) pause=0 ;;
        --pause-only) app=0 workload=0 ;;
        --no-workload) workload=0 ;;
        --force) force=1 ;;
        --keep-daemon) export POD_IDENTITY_IMAGES_KEEP_DAEMON=1 ;;
        -h | --help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
        *) img_die "unknown argument $1 (see --help)" ;;
    esac
    shift
done

INPUTS_LABEL=io.pod-identity-injector.inputs

# sha256 over the names and contents of the given files (sorted, C locale).
hash_files() {
    (cd "$REPO_ROOT" && LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1
}

# built REF HASH ARCHIVE: true when the image carries HASH and the archive holds that image.
up_to_date() {
    local id
    id=$(docker image inspect --format "{{index .Config.Labels \"$INPUTS_LABEL\"}} {{.Id}}" "$1" 2>/dev/null) || return 1
    [[ ${id%% *} == "$2" && -s $3 && -s $3.id && $(<"$3.id") == "${id#* }" ]]
}

save() { # save REF ARCHIVE
    local t0=$SECONDS
    mkdir -p "$IMG_ARCHIVES"
    docker save -o "$2.tmp" "$1"
    mv -f "$2.tmp" "$2"
    docker image inspect --format '{{.Id}}' "$1" >"$2.id"
    img_log "saved $1 to $2 ($(du -h "$2" | cut -f1), $((SECONDS - t0)) s)"
}

ctx=""
trap 'rm -rf "$ctx"; img_daemon_release' EXIT
img_lock
img_daemon_ensure

# image REF INPUTS CONTEXT NETWORK [STAGE]: builds CONTEXT as REF unless REF carries INPUTS and
# its archive holds it, saves it, and prints the archive's path. STAGE, a build stage of the
# Dockerfile, is tagged REPO:STAGE-stage too: the prune below then keeps its layers, so the next
# build reuses them (the webhook's dependency layer: a source change rebuilds in seconds).
image() {
    local ref=$1 inputs=$2 context=$3 network=$4 stage=${5:-} archive t0
    archive=$(img_archive_path "$ref")
    if ((!force)) && up_to_date "$ref" "$inputs" "$archive"; then
        img_log "$ref up to date (inputs ${inputs:0:12})"
    else
        img_log "docker build -t $ref $context (inputs ${inputs:0:12})"
        t0=$SECONDS
        if [[ -n $stage ]]; then
            nice docker build --network="$network" --target "$stage" -t "${ref%:*}:$stage-stage" "$context" >&2
        fi
        nice docker build --network="$network" --label "$INPUTS_LABEL=$inputs" -t "$ref" "$context" >&2
        img_log "built $ref in $((SECONDS - t0)) s"
        # The untagged build stage and the previous image; the tagged images stay.
        docker image prune -f >/dev/null
        save "$ref" "$archive"
    fi
    img_log "$ref: $(img_size "$ref")"
    printf '%s\n' "$archive"
}

# with_base HASH: HASH combined with the base image's ID (a new base rebuilds what is on it).
with_base() {
    printf '%s %s\n' "$1" "$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")" | sha256sum | cut -d' ' -f1
}

if ((app || workload)); then
    "$IMG_TOOLS/base.sh"
    img_log "base $BASE_IMAGE: $(img_size "$BASE_IMAGE")"
fi

if ((app)); then
    # The build's inputs: what the Dockerfile COPYs (minus .dockerignore'd caches), the
    # Dockerfile itself and the base image.
    inputs=$( {
        printf '%s\0' Dockerfile .dockerignore pyproject.toml README.md
        (cd "$REPO_ROOT" && find injector -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0)
    } | hash_files)
    image "$tag" "$(with_base "$inputs")" "$REPO_ROOT" host build
fi

if ((pause)); then
    command -v go >/dev/null || img_die "no go command to build the pause binary"
    pdir=$IMG_TOOLS/pause
    inputs=$( {
        printf '%s\0' tools/image/pause/pause.go tools/image/pause/go.mod tools/image/pause/Dockerfile
    } | hash_files)
    inputs=$(printf '%s %s\n' "$inputs" "$(GOTOOLCHAIN=local go env GOVERSION)" | sha256sum | cut -d' ' -f1)
    # The context: the static binary and its FROM-scratch Dockerfile (built only when needed).
    ctx=$(mktemp -d "$IMG_CACHE/pause.XXXXXX")
    if ((force)) || ! up_to_date "$PAUSE_IMAGE" "$inputs" "$(img_archive_path "$PAUSE_IMAGE")"; then
        (cd "$pdir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS="" \
            nice go build -trimpath -ldflags=-s -o "$ctx/pause" .)
        cp "$pdir/Dockerfile" "$ctx/Dockerfile"
    fi
    image "$PAUSE_IMAGE" "$inputs" "$ctx" none
    rm -rf "$ctx"; ctx=""
fi

# workload_image: the SDK programs built from their pinned dependencies into a context
# (tests/cluster/workload/build.py: go, mvn, a JDK, npm), then the image. Its inputs: every file
# under tests/cluster/workload, the Go and Java versions that build there, and the base.
workload_image() {
    local inputs archive
    inputs=$( {
        (cd "$REPO_ROOT" && find tests/cluster/workload -type f -not -path '*/__pycache__/*' -print0)
    } | hash_files)
    inputs=$(printf '%s %s %s\n' "$inputs" "$(GOTOOLCHAIN=local go env GOVERSION)" "$(java -version 2>&1 | head -n1)" |
        sha256sum | cut -d' ' -f1)
    inputs=$(with_base "$inputs")
    archive=$(img_archive_path "$WORKLOAD_IMAGE")
    ctx=$(mktemp -d "$IMG_CACHE/workload.XXXXXX")
    if ((force)) || ! up_to_date "$WORKLOAD_IMAGE" "$inputs" "$archive"; then
        python3 "$REPO_ROOT/tests/cluster/workload/build.py" "$ctx" >/dev/null
    fi
    image "$WORKLOAD_IMAGE" "$inputs" "$ctx" host
    rm -rf "$ctx"; ctx=""
}

if ((workload)); then
    workload_image
fi
