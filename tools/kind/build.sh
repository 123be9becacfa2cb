#!/usr/bin/env bash
# Builds, offline and cached in $KIND_CACHE (~/.cache/pod-identity-injector-kind), everything a
# kind cluster needs here, and prints the node image's name on stdout:
#
#   tools/kind/build.sh                  kind, the node image of KUBE_VERSION (lib.sh's default)
#   KUBE_VERSION=1.33.8 tools/kind/build.sh
#   tools/kind/build.sh --tools-only     kind and the private dockerd only
#
# From the Go module proxy: kind, containerd + ctr + its runc shim, crictl, CoreDNS, a pause
# binary and Kubernetes itself (one binary of every command, tools/kind/kube). From Debian:
# the node's root filesystem (debootstrap bookworm, systemd, iptables, runc, the CNI plugins)
# with kind's own files (images/base/files of kind's module source). The control-plane images
# kubeadm runs (localhost/kube/...) go into the node's containerd with `ctr`; then the node
# container is committed as localhost/kind-node:vVERSION. Not `kind build node-image`: that
# pulls from registries. Each step is skipped when its output is current. Progress on stderr.
set -euo pipefail
# shellcheck source=tools/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

tools_only=0
[[ ${1:-} == --tools-only ]] && tools_only=1
[[ $(id -u) == 0 ]] || kind_die "needs root (the private dockerd, debootstrap)"
command -v go >/dev/null || [[ -x $KIND ]] || kind_die "no go command to build kind"
kind_lock
mkdir -p "$KIND_BIN"

# stamp_ok FILE KEY: FILE exists and was built for KEY (FILE.stamp holds the key).
stamp_ok() { [[ -e $1 && -f $1.stamp && $(<"$1.stamp") == "$2" ]]; }
stamp() { printf '%s\n' "$2" >"$1.stamp"; }
# Bump when the way the Go binaries are built changes: their stamps then no longer match.
RECIPE=1

# go_main NAME MODULE@VERSION OUTDIR PACKAGE...: builds main packages of a module that cannot
# be `go install`ed (replace or exclude directives) inside a throwaway main module of our own,
# with the module's exclude directives copied (replace directives are not needed by these).
go_main() {
    local name=$1 modver=$2 outdir=$3; shift 3
    local key="$modver recipe $RECIPE" p missing=0
    for p in "$@"; do stamp_ok "$outdir/${p##*/}" "$key" || missing=1; done
    ((missing)) || return 0
    local src=$KIND_CACHE/src/$name gomod
    rm -rf "$src"; mkdir -p "$src" "$outdir"
    kind_log "building $name ${modver#*@} from the Go module proxy"
    gomod=$(cd "$src" && go mod download -json "$modver" | sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')
    { echo "module piikind/$name"; echo; echo "go $(go env GOVERSION | sed 's/^go//')";
      awk '/^exclude[[:space:]]*\(/{b=1} b{print} b&&/^\)/{b=0} /^exclude[[:space:]]+[^(]/{print}' "$gomod"
    } >"$src/go.mod"
    (cd "$src" && go get "$modver" >&2)
    for p in "$@"; do
        (cd "$src" && nice -n 10 go build -trimpath -tags "no_aufs no_zfs no_btrfs no_devmapper" \
            -ldflags "-s -w ${LDFLAGS_EXTRA:-}" -o "$outdir/${p##*/}" "$p" >&2)
        stamp "$outdir/${p##*/}" "$key"
    done
}

# kind itself: `go install` works for it.
if ! stamp_ok "$KIND" "$KIND_VERSION"; then
    kind_log "building kind $KIND_VERSION"
    GOBIN=$KIND_BIN nice -n 10 go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kind@$KIND_VERSION" >&2
    stamp "$KIND" "$KIND_VERSION"
fi
# fd 8 (the lock) closed: the daemon outlives this script and must not hold the lock.
"$REPO_ROOT/tools/image/dockerd.sh" start 8>&-
((tools_only)) && exit 0

# The node's other binaries.
LDFLAGS_EXTRA="-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    go_main containerd "github.com/containerd/containerd/v2@$CONTAINERD_VERSION" "$KIND_BIN/node" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
LDFLAGS_EXTRA="-X sigs.k8s.io/cri-tools/pkg/version.Version=$CRICTL_VERSION" \
    go_main crictl "sigs.k8s.io/cri-tools@$CRICTL_VERSION" "$KIND_BIN/node" sigs.k8s.io/cri-tools/cmd/crictl
go_main coredns "github.com/coredns/coredns@$COREDNS_VERSION" "$KIND_BIN/coredns-$COREDNS_VERSION" \
    github.com/coredns/coredns
if ! stamp_ok "$KIND_BIN/pause" "$(sha256sum <"$REPO_ROOT/tools/image/pause/pause.go" | cut -c1-12)"; then
    (cd "$REPO_ROOT/tools/image/pause" && GOFLAGS=-buildvcs=false go build -trimpath -ldflags "-s -w" \
        -o "$KIND_BIN/pause" .)
    stamp "$KIND_BIN/pause" "$(sha256sum <"$REPO_ROOT/tools/image/pause/pause.go" | cut -c1-12)"
fi

# Kubernetes: tools/kind/kube in a main module pinned to KUBE_VERSION as tools/kube-test-plane
# pins its own (every staging module required at v0.0.0 replaced by v0.MINOR.PATCH).
kube_dir=$KIND_CACHE/kube/v$KUBE_VERSION
KUBE=$kube_dir/kube
kube_key="v$KUBE_VERSION $(sha256sum <"$KIND_TOOLS/kube/main.go" | cut -c1-12) recipe $RECIPE"
if ! stamp_ok "$KUBE" "$kube_key"; then
    src=$KIND_CACHE/src/kube-v$KUBE_VERSION
    rm -rf "$src"; mkdir -p "$src" "$kube_dir"
    cp "$KIND_TOOLS/kube/main.go" "$src/"
    upstream=$(cd "$src" && go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" |
        sed -n 's/^[[:space:]]*"GoMod":[[:space:]]*"\(.*\)",\{0,1\}$/\1/p')
    [[ -f $upstream ]] || kind_die "the Go module proxy does not serve k8s.io/kubernetes@v$KUBE_VERSION"
    staging="v0.${KUBE_VERSION#1.}"
    { echo "module piikind/kube"; echo
      echo "go $(sed -n 's/^go[[:space:]]\{1,\}\([0-9][0-9.]*\).*/\1/p' "$upstream" | head -1)"; echo
      awk '/^godebug[[:space:]]*\(/{b=1;next} b&&/^\)/{b=0;next} b{sub(/\/\/.*/,""); if (NF) print "godebug " $1; next}
           /^godebug[[:space:]]/{sub(/\/\/.*/,""); print "godebug " $2}' "$upstream"
      echo "require k8s.io/kubernetes v$KUBE_VERSION"; echo "replace ("
      sed -n 's/^[[:space:]]*\(k8s\.io\/[A-Za-z0-9._-]*\)[[:space:]]\{1,\}v0\.0\.0\([[:space:]].*\)\{0,1\}$/\1/p' "$upstream" |
          sort -u | while read -r m; do printf '\t%s => %s %s\n' "$m" "$m" "$staging"; done
      echo ")"
    } >"$src/go.mod"
    kind_log "building Kubernetes v$KUBE_VERSION (one binary of every command; a cold build takes minutes)"
    (cd "$src" && go mod tidy >&2)
    commit=$(tr -d '\n' <"$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/v$KUBE_VERSION.info" |
        sed -n 's/.*"Hash"[[:space:]]*:[[:space:]]*"\([0-9a-f]\{40\}\)".*/\1/p')
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=v$KUBE_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$KUBE_VERSION")"
        ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
        [[ -z $commit ]] || ld+=" -X $p.gitCommit=$commit"
    done
    (cd "$src" && nice -n 10 go build -trimpath -ldflags "$ld" -o "$KUBE.tmp" . >&2)
    mv -f "$KUBE.tmp" "$KUBE"
    stamp "$KUBE" "$kube_key"
fi
"$KUBE" version >&2
etcd_version=$("$KUBE" version | sed -n 's/^etcd //p')

exec bash "$KIND_TOOLS/node-image.sh" "$KUBE" "$etcd_version"
