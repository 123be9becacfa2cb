#!/usr/bin/env bash
# Builds the webhook image from the repo's Dockerfile as users build it (`docker build .`,
# classic builder), the pod sandbox (pause) image and the cluster tier's workload image (the
# AWS SDK, tests/cluster/workload), in the private daemon (dockerd.sh), with the base made
# locally (base.sh); `docker save`s each to an archive for `ctr -n k8s.io images import ARCHIVE`.
#
#   tools/image/build.sh [--tag REF] [--no-pause | --pause-only] [--no-workload] [--force] [--keep-daemon]
#
# stdout: only the archive paths, one a line (the webhook image first, then the pause image,
# then the workload image $WORKLOAD_IMAGE).
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

if ((app)); then
    "$IMG_TOOLS/base.sh"
    base_id=$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")
    # The build's inputs: what the Dockerfile COPYs (minus .dockerignore'd caches), the
    # Dockerfile itself and the base image.
    inputs=$( {
        printf '%s\0' Dockerfile .dockerignore pyproject.toml README.md
        (cd "$REPO_ROOT" && find injector -type f -not -path '*/__pycache__/*' -not -name '*.pyc' -print0)
    } | hash_files)
    inputs=$(printf '%s %s\n' "$inputs" "$base_id" | sha256sum | cut -d' ' -f1)
    archive=$(img_archive_path "$tag")
    if ((!force)) && up_to_date "$tag" "$inputs" "$archive"; then
        img_log "$tag up to date (inputs ${inputs:0:12})"
    else
        img_log "docker build -t $tag $REPO_ROOT (inputs ${inputs:0:12})"
        t0=$SECONDS
        nice docker build --network=host --label "$INPUTS_LABEL=$inputs" -t "$tag" "$REPO_ROOT" >&2
        img_log "built $tag in $((SECONDS - t0)) s"
        # The untagged build stage and the previous image; the tagged images stay.
        docker image prune -f >/dev/null
        save "$tag" "$archive"
    fi
    img_log "$tag: $(img_size "$tag") (base $BASE_IMAGE: $(img_size "$BASE_IMAGE"))"
    printf '%s\n' "$archive"
fi

if ((pause)); then
    command -v go >/dev/null || img_die "no go command to build the pause binary"
    pdir=$IMG_TOOLS/pause
    inputs=$( {
        printf '%s\0' tools/image/pause/pause.go tools/image/pause/go.mod tools/image/pause/Dockerfile
    } | hash_files)
    inputs=$(printf '%s %s\n' "$inputs" "$(GOTOOLCHAIN=local go env GOVERSION)" | sha256sum | cut -d' ' -f1)
    archive=$(img_archive_path "$PAUSE_IMAGE")
    if ((!force)) && up_to_date "$PAUSE_IMAGE" "$inputs" "$archive"; then
        img_log "$PAUSE_IMAGE up to date (inputs ${inputs:0:12})"
    else
        ctx=$(mktemp -d "$IMG_CACHE/pause.XXXXXX")
        t0=$SECONDS
        (cd "$pdir" && CGO_ENABLED=0 GOTOOLCHAIN=local GOWORK=off GOFLAGS="" \
            nice go build -trimpath -ldflags=-s -o "$ctx/pause" .)
        cp "$pdir/Dockerfile" "$ctx/Dockerfile"
        docker build --network=none --label "$INPUTS_LABEL=$inputs" -t "$PAUSE_IMAGE" "$ctx" >&2
        rm -rf "$ctx"; ctx=""
        img_log "built $PAUSE_IMAGE in $((SECONDS - t0)) s"
        docker image prune -f >/dev/null
        save "$PAUSE_IMAGE" "$archive"
    fi
    img_log "$PAUSE_IMAGE: $(img_size "$PAUSE_IMAGE")"
    printf '%s\n' "$archive"
fi

if ((workload)); then
    "$IMG_TOOLS/base.sh"
    inputs=$(printf '%s\0' tests/cluster/workload/Dockerfile | hash_files)
    inputs=$(printf '%s %s\n' "$inputs" "$(docker image inspect --format '{{.Id}}' "$BASE_IMAGE")" | sha256sum | cut -d' ' -f1)
    archive=$(img_archive_path "$WORKLOAD_IMAGE")
    if ((!force)) && up_to_date "$WORKLOAD_IMAGE" "$inputs" "$archive"; then
        img_log "$WORKLOAD_IMAGE up to date (inputs ${inputs:0:12})"
    else
        t0=$SECONDS
        nice docker build --network=host --label "$INPUTS_LABEL=$inputs" -t "$WORKLOAD_IMAGE" \
            "$REPO_ROOT/tests/cluster/workload" >&2
        img_log "built $WORKLOAD_IMAGE in $((SECONDS - t0)) s"
        docker image prune -f >/dev/null
        save "$WORKLOAD_IMAGE" "$archive"
    fi
    img_log "$WORKLOAD_IMAGE: $(img_size "$WORKLOAD_IMAGE")"
    printf '%s\n' "$archive"
fi
