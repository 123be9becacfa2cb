#!/usr/bin/env bash
# A private Docker daemon for building the images, with no host network setup:
#   tools/image/dockerd.sh start    start it (idempotent); prints nothing on stdout
#   tools/image/dockerd.sh stop     stop it by PID, wait, check no process or mount is left
#   tools/image/dockerd.sh status   exit 0 when it answers
#   tools/image/dockerd.sh env      print `export DOCKER_HOST=…; export DOCKER_BUILDKIT=0`
# Data-root, exec-root, socket, pidfile and log are under $IMG_CACHE (see lib.sh), never the
# repo. Needs root and the Debian packages docker.io (dockerd, containerd, runc).
# POD_IDENTITY_IMAGES_CACHE chooses the daemon (tools/kind runs its own beside the images' one).
set -euo pipefail
# shellcheck source=tools/image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The PID of the dockerd running on our data-root: from the pidfile, or, when that is gone
# (a removed cache dir), from the process table, so no second daemon ever shares the data-root.
dockerd_pid() {
    local pid c
    if [[ -s $DOCKERD_PID ]]; then
        pid=$(<"$DOCKERD_PID")
        if [[ -d /proc/$pid ]] && grep -qa dockerd "/proc/$pid/cmdline" 2>/dev/null; then
            printf '%s\n' "$pid"; return 0
        fi
    fi
    for c in /proc/[0-9]*/cmdline; do
        if tr '\0' '\n' 2>/dev/null <"$c" | grep -qxF -e "--data-root" && \
            tr '\0' '\n' 2>/dev/null <"$c" | grep -qxF -e "$DOCKERD_DATA" && \
            [[ $(tr '\0' '\n' 2>/dev/null <"$c" | head -n1) == *dockerd ]]; then
            pid=${c#/proc/}; printf '%s\n' "${pid%/cmdline}"; return 0
        fi
    done
    return 1
}

dockerd_status() {
    dockerd_pid >/dev/null && docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

# overlay2 when the kernel lets us mount overlay on the cache's filesystem, else vfs
# (a full copy per layer: slower, bigger, works anywhere). Chosen once per data-root.
storage_driver() {
    local f=$IMG_CACHE/storage-driver d t
    if [[ -n ${POD_IDENTITY_IMAGES_STORAGE_DRIVER:-} ]]; then
        printf '%s\n' "$POD_IDENTITY_IMAGES_STORAGE_DRIVER"; return
    fi
    if [[ -s $f ]]; then cat "$f"; return; fi
    t=$(mktemp -d "$IMG_CACHE/overlay-probe.XXXXXX")
    mkdir -p "$t"/{l,u,w,m}
    if mount -t overlay overlay -o "lowerdir=$t/l,upperdir=$t/u,workdir=$t/w" "$t/m" 2>/dev/null; then
        umount "$t/m"; d=overlay2
    else
        d=vfs
    fi
    rm -rf "$t"
    printf '%s\n' "$d" >"$f"
    printf '%s\n' "$d"
}

start() {
    if dockerd_status; then return 0; fi
    [[ $(id -u) == 0 ]] || img_die "the private dockerd needs root"
    command -v dockerd >/dev/null || img_die "no dockerd: apt-get install -y docker.io"
    if pid=$(dockerd_pid); then
        img_log "dockerd $pid does not answer; stopping it first"; stop
    fi
    mkdir -p "$IMG_CACHE" "$DOCKERD_DATA" "$DOCKERD_EXEC"
    local driver; driver=$(storage_driver)
    # Our own config file: /etc/docker/daemon.json (if any) belongs to the host's daemon. Empty,
    # or, with POD_IDENTITY_DOCKERD_RUNTIME=PATH (tools/kind), that runc wrapper as the default
    # runtime; rewritten at every start, so the setting follows the environment.
    if [[ -n ${POD_IDENTITY_DOCKERD_RUNTIME:-} ]]; then
        printf '{"runtimes": {"wrapped-runc": {"path": "%s"}}, "default-runtime": "wrapped-runc"}\n' \
            "$POD_IDENTITY_DOCKERD_RUNTIME" >"$IMG_CACHE/daemon.json"
    else
        echo '{}' >"$IMG_CACHE/daemon.json"
    fi
    img_log "starting dockerd ($driver) on $DOCKER_HOST, log $DOCKERD_LOG"
    # --iptables/--ip-masq/--ip-forward=false, --bridge=none: no host network changes; builds
    # and runs use --network=host or --network=none. --oom-score-adjust=0: lowering it needs
    # CAP_SYS_RESOURCE, which this machine lacks. dockerd starts its own containerd child
    # (state under the exec-root) because no --containerd is given.
    setsid dockerd \
        --config-file "$IMG_CACHE/daemon.json" \
        --data-root "$DOCKERD_DATA" \
        --exec-root "$DOCKERD_EXEC" \
        --pidfile "$DOCKERD_PID" \
        --host "$DOCKER_HOST" \
        --storage-driver "$driver" \
        --iptables=false --ip-masq=false --ip-forward=false --bridge=none \
        --oom-score-adjust=0 \
        </dev/null >>"$DOCKERD_LOG" 2>&1 &
    local launched=$! i
    for ((i = 0; i < 120; i++)); do
        if dockerd_status; then
            img_log "dockerd $(dockerd_pid) ready ($(docker version --format '{{.Server.Version}}'))"
            return 0
        fi
        if ! kill -0 "$launched" 2>/dev/null; then
            tail -n 20 "$DOCKERD_LOG" >&2
            img_die "dockerd exited during start-up (log above)"
        fi
        sleep 0.5
    done
    tail -n 20 "$DOCKERD_LOG" >&2
    img_die "dockerd did not answer within 60 s"
}

# Mounts a crashed daemon may leave: overlay layers, netns binds, shm, under the cache dirs.
leftover_mounts() {
    awk -v a="$DOCKERD_DATA" -v b="$DOCKERD_EXEC" \
        'index($5, a) == 1 || index($5, b) == 1 { print $5 }' /proc/self/mountinfo
}

# wait_gone PID N: up to N quarter-seconds for PID to exit.
wait_gone() {
    local i
    for ((i = 0; i < $2; i++)); do [[ -d /proc/$1 ]] || return 0; sleep 0.25; done
    [[ ! -d /proc/$1 ]]
}

stop() {
    local pid cpid="" m
    if pid=$(dockerd_pid); then
        [[ -s $DOCKERD_EXEC/containerd/containerd.pid ]] && cpid=$(<"$DOCKERD_EXEC/containerd/containerd.pid")
        img_log "stopping dockerd $pid"
        kill -TERM "$pid"
        wait_gone "$pid" 120 || {
            img_log "dockerd $pid still running after 30 s: SIGKILL"; kill -KILL "$pid" || true
            wait_gone "$pid" 20 || img_die "dockerd $pid survived SIGKILL"
        }
        # dockerd stops the containerd it started; make sure (it is ours: its pidfile is ours).
        if [[ -n $cpid && -d /proc/$cpid ]] && grep -qa containerd "/proc/$cpid/cmdline"; then
            img_log "stopping its containerd $cpid"
            kill -TERM "$cpid" || true
            wait_gone "$cpid" 40 || { kill -KILL "$cpid" || true; wait_gone "$cpid" 20; }
        fi
    fi
    rm -f "$DOCKERD_PID"
    # Innermost first, so nested mounts come off before their parents.
    while read -r m; do
        [[ -n $m ]] || continue
        img_log "unmounting leftover $m"; umount "$m" 2>/dev/null || umount -l "$m" || true
    done < <(leftover_mounts | sort -r)
    if [[ -n $(leftover_mounts) ]]; then img_die "mounts left behind: $(leftover_mounts | tr '\n' ' ')"; fi
}

case ${1:-} in
    start) start ;;
    stop) stop ;;
    status) dockerd_status ;;
    env) printf 'export DOCKER_HOST=%q\nexport DOCKER_BUILDKIT=0\n' "$DOCKER_HOST" ;;
    *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
