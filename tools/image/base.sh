#!/usr/bin/env bash
# Makes the base image the Dockerfile's FROM names (python:3.11-slim-bookworm) from the Debian
# archive, for machines where no registry is reachable:
#   tools/image/base.sh [--force]
# debootstrap --variant=minbase bookworm with python3, python3-venv and ca-certificates, from
# the mirror in this machine's apt sources; apt lists, docs, man pages and locales stripped;
# `docker import`ed into the private daemon (dockerd.sh) under exactly the public name.
# Skipped when that tag already exists there (--force rebuilds). Prints nothing on stdout.
#
# It is a stand-in, not a copy: Debian's python3 3.11 is /usr/bin/python3, externally managed
# (PEP 668), with no pip command; the Dockerfile installs into a venv, so it builds from both.
# The host's own CAs (/usr/local/share/ca-certificates) are added to its trust store, so that
# pip in a RUN step trusts what this host trusts (here: a TLS-inspecting egress proxy; Debian's
# pip, which the venv gets, uses /etc/ssl/certs/ca-certificates.crt rather than certifi).
set -euo pipefail
# shellcheck source=tools/image/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

force=0
[[ ${1:-} == --force ]] && force=1

SUITE=bookworm
PACKAGES=python3,python3-venv,ca-certificates

# The first URI that serves "$SUITE" itself (not -updates/-security), from deb822 .sources
# files or one-line sources.list entries; POD_IDENTITY_IMAGES_MIRROR overrides.
apt_mirror() {
    if [[ -n ${POD_IDENTITY_IMAGES_MIRROR:-} ]]; then printf '%s\n' "$POD_IDENTITY_IMAGES_MIRROR"; return; fi
    local f m
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        m=$(awk -v suite="$SUITE" '
            function flush() { if (uri != "" && ok && deb) { print uri; uri = ""; exit } uri = ""; ok = 0; deb = 0 }
            /^[[:space:]]*$/ { flush(); next }
            /^[[:space:]]*#/ { next }
            tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) ok = 1 }
            END { flush() }' "$f")
        [[ -n $m ]] && { printf '%s\n' "$m"; return; }
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        m=$(awk -v suite="$SUITE" '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) while ($i !~ /\]$/) i++; if ($i ~ /^\[/ || $i ~ /\]$/) i++
                if ($(i + 1) == suite) { print $i; exit } }' "$f")
        [[ -n $m ]] && { printf '%s\n' "$m"; return; }
    done
    printf 'http://deb.debian.org/debian\n'
}

trap img_daemon_release EXIT
img_lock
img_daemon_ensure
if ((!force)) && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    img_log "base $BASE_IMAGE present ($(img_size "$BASE_IMAGE")); --force rebuilds it"
    exit 0
fi
command -v debootstrap >/dev/null || img_die "no debootstrap: apt-get install -y debootstrap"
[[ $(id -u) == 0 ]] || img_die "debootstrap needs root"

mirror=$(apt_mirror)
work=$(mktemp -d "$IMG_CACHE/base.XXXXXX")
rootfs=$work/rootfs
cleanup() {
    local m
    # debootstrap mounts /proc and /sys in the target; a failed run can leave them.
    while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done < <(
        awk -v r="$rootfs/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
    rm -rf "$work"
    img_daemon_release
}
trap cleanup EXIT

img_log "debootstrap --variant=minbase $SUITE from $mirror (log $IMG_CACHE/debootstrap.log)"
t0=$SECONDS
if ! nice debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" \
    >"$IMG_CACHE/debootstrap.log" 2>&1; then
    tail -n 20 "$IMG_CACHE/debootstrap.log" >&2
    img_die "debootstrap failed (log above)"
fi
img_log "debootstrap took $((SECONDS - t0)) s"

# apt inside the image uses the same mirror (the machine's), and, like the official slim
# images, never installs docs into it.
printf 'deb %s %s main\n' "$mirror" "$SUITE" >"$rootfs/etc/apt/sources.list"
cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
extra_ca=0
for c in /usr/local/share/ca-certificates/*.crt; do
    [[ -f $c ]] || continue
    cp "$c" "$rootfs/usr/local/share/ca-certificates/"; extra_ca=1
done
((extra_ca)) && chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/{man,info,lintian,locale}/* \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/cache/debconf/*-old \
    "$rootfs"/var/log/* "$rootfs"/tmp/* "$rootfs"/root/.cache
# The standard library's bytecode stays (as in the official image): a read-only root
# filesystem cannot cache it, and every start would compile it again.

t0=$SECONDS
changes=(
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
    --change 'ENV LANG=C.UTF-8'
    --change 'CMD ["python3"]'
)
# /dev, /proc and /sys stay empty: the runtime mounts its own.
tar -C "$rootfs" --numeric-owner --xattrs -c \
    --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* . |
    docker import "${changes[@]}" \
        --message "debootstrap --variant=minbase --include=$PACKAGES $SUITE $mirror" \
        - "$BASE_IMAGE" >/dev/null
img_log "imported $BASE_IMAGE in $((SECONDS - t0)) s: $(img_size "$BASE_IMAGE")"
