#!/usr/bin/env bash
# The node image of tools/kind/build.sh (which builds the binaries first and runs this):
#   tools/kind/node-image.sh KUBE_BINARY ETCD_VERSION     prints the node image's name
#   tools/kind/node-image.sh --base-only                 only step 1; prints the base's name
# 1. A base: debootstrap bookworm with systemd, iptables, runc and the CNI plugins, plus kind's
#    own images/base/files (entrypoint, units, containerd config) from kind's module source;
#    `docker import`ed as localhost/kind-node-base:<hash of its inputs>.
# 2. The control-plane images kubeadm runs, under localhost/kube (kind's config tells kubeadm
#    that imageRepository): kube-apiserver, -controller-manager, -scheduler, kube-proxy and etcd
#    are the base plus the one Kubernetes binary; coredns and pause are single static binaries.
# 3. The node: the base plus containerd, crictl and Kubernetes; its containerd started once to
#    `ctr import` those images; committed as localhost/kind-node:vVERSION.
set -euo pipefail
# shellcheck source=tools/kind/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
KUBE=$1 ETCD_VERSION=${2:-}
kind_lock

SUITE=bookworm
PACKAGES=systemd,dbus,conntrack,iptables,nftables,iproute2,ethtool,util-linux,mount,kmod,libseccomp2,pigz,bash,ca-certificates,curl,jq,procps,runc,containernetworking-plugins,e2fsprogs
KIND_SRC=$(go env GOMODCACHE)/sigs.k8s.io/kind@$KIND_VERSION
[[ -d $KIND_SRC/images/base/files ]] || (cd /tmp && go mod download "sigs.k8s.io/kind@$KIND_VERSION")
NODE_IMAGE=$(node_image)
t_all=$SECONDS
base_only() { [[ $KUBE == --base-only ]]; }
base_only || {
PAUSE_TAG=$(sed -n 's/^[[:space:]]*PauseVersion = "\(.*\)"/\1/p' \
    "$(go env GOMODCACHE)/k8s.io/kubernetes@v$KUBE_VERSION/cmd/kubeadm/app/constants/constants.go")
[[ -n $PAUSE_TAG ]] || kind_die "cannot read kubeadm's pause version"
# The whole input of the node image: when it has not changed, the image is current.
node_key=$( { cat "$KIND_TOOLS"/{lib.sh,node-image.sh,containerd-config.toml,cni.conflist}; echo "$PACKAGES";
    sha256sum "$KUBE" "$KIND_BIN"/node/* "$KIND_BIN"/pause "$KIND_BIN/coredns-$COREDNS_VERSION/coredns"; } |
    sha256sum | cut -c1-16)
if [[ $(docker image inspect -f '{{index .Config.Labels "pii.kind.inputs"}}' "$NODE_IMAGE" 2>/dev/null) == "$node_key" ]]; then
    kind_log "node image $NODE_IMAGE is current"
    echo "$NODE_IMAGE"; exit 0
fi
}

# -- 1. the base ------------------------------------------------------------------------------
base_key=$( { echo "$SUITE $PACKAGES $KIND_VERSION"; sed -n '/^# -- 1/,/^# -- 2/p' "$0"; } | sha256sum | cut -c1-12)
BASE=localhost/kind-node-base:$base_key
if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || kind_die "no debootstrap: apt-get install -y debootstrap"
    # shellcheck source=tools/image/lib.sh
    mirror=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
    mirror=${POD_IDENTITY_IMAGES_MIRROR:-${mirror:-http://deb.debian.org/debian}}
    work=$(mktemp -d "$KIND_CACHE/base.XXXXXX"); rootfs=$work/rootfs
    cleanup() {
        local m
        while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" || true; done < <(
            awk -v r="$rootfs/" 'index($5, r) == 1 { print $5 }' /proc/self/mountinfo | sort -r)
        rm -rf "$work"
    }
    trap cleanup EXIT
    kind_log "debootstrap $SUITE for the node base (log $KIND_CACHE/debootstrap.log)"
    t0=$SECONDS
    nice debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$mirror" \
        >"$KIND_CACHE/debootstrap.log" 2>&1 || { tail -n 20 "$KIND_CACHE/debootstrap.log" >&2; kind_die "debootstrap failed"; }
    kind_log "debootstrap took $((SECONDS - t0)) s"
    # As kind's images/base/Dockerfile does.
    f=$KIND_SRC/images/base/files
    install -m 0755 "$f"/usr/local/bin/* "$rootfs/usr/local/bin/"
    mkdir -p "$rootfs/kind/bin" "$rootfs/LICENSES" "$rootfs/etc/containerd" "$rootfs/etc/systemd/system/kubelet.service.d"
    install -m 0644 "$f"/kind/README.txt "$rootfs/kind/"; install -m 0755 "$f"/kind/bin/* "$rootfs/kind/bin/"
    install -m 0644 "$f"/etc/crictl.yaml "$rootfs/etc/"
    install -m 0644 "$f"/etc/default/* "$rootfs/etc/default/"
    install -m 0644 "$f"/etc/sysctl.d/* "$rootfs/etc/sysctl.d/"
    install -m 0644 "$f"/etc/systemd/system/*.service "$f"/etc/systemd/system/*.slice "$rootfs/etc/systemd/system/"
    install -m 0644 "$f"/etc/systemd/system/kubelet.service.d/* "$rootfs/etc/systemd/system/kubelet.service.d/"
    chroot "$rootfs" sh -ec '
        find /lib/systemd/system/sysinit.target.wants/ -name "systemd-tmpfiles-setup.service" -delete
        rm -f /lib/systemd/system/multi-user.target.wants/* /etc/systemd/system/*.wants/* \
            /lib/systemd/system/local-fs.target.wants/* /lib/systemd/system/sockets.target.wants/*udev* \
            /lib/systemd/system/sockets.target.wants/*initctl* /lib/systemd/system/basic.target.wants/*
        echo "ReadKMsg=no" >> /etc/systemd/journald.conf
        ln -sf /usr/lib/systemd/systemd /sbin/init
        systemctl enable kubelet.service containerd.service undo-mount-hacks.service
        systemctl mask systemd-binfmt.service
        mkdir -p /etc/kubernetes/manifests /opt/cni/bin
        for p in ptp host-local portmap loopback; do cp /usr/lib/cni/$p /opt/cni/bin/; done'
    rm -rf "$rootfs"/usr/share/{doc,man,info,locale}/* "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*
    kind_log "importing the base as $BASE"
    tar -C "$rootfs" --numeric-owner --xattrs -c --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* . |
        docker import --change 'ENV container=docker' \
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
            --message "debootstrap $SUITE $PACKAGES + kind $KIND_VERSION images/base/files" - "$BASE" >/dev/null
    cleanup; trap - EXIT
fi
if base_only; then echo "$BASE"; exit 0; fi

# -- 2. the control-plane images --------------------------------------------------------------
ctx=$(mktemp -d "$KIND_CACHE/ctx.XXXXXX")
node=""
finish() {
    [[ -z $node ]] || docker rm -f "$node" >/dev/null 2>&1 || true
    rm -rf "$ctx"
}
trap finish EXIT
mkdir -p "$ctx/kube/bin" "$ctx/coredns" "$ctx/pause"
cp "$KUBE" "$ctx/kube/bin/kube"
for n in kube-apiserver kube-controller-manager kube-scheduler kube-proxy etcd kubelet kubeadm kubectl; do
    ln -s kube "$ctx/kube/bin/$n"
done
printf 'FROM %s\nCOPY bin/ /usr/local/bin/\n' "$BASE" >"$ctx/kube/Dockerfile"
cp "$KIND_BIN/coredns-$COREDNS_VERSION/coredns" "$ctx/coredns/"
printf 'FROM scratch\nCOPY coredns /coredns\nENTRYPOINT ["/coredns"]\n' >"$ctx/coredns/Dockerfile"
cp "$KIND_BIN/pause" "$ctx/pause/"
printf 'FROM scratch\nCOPY pause /pause\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$ctx/pause/Dockerfile"
v=v$KUBE_VERSION
images=("$KUBE_IMAGE_REPO/kube-apiserver:$v" "$KUBE_IMAGE_REPO/kube-controller-manager:$v"
    "$KUBE_IMAGE_REPO/kube-scheduler:$v" "$KUBE_IMAGE_REPO/kube-proxy:$v" "$KUBE_IMAGE_REPO/etcd:$ETCD_VERSION-0"
    "$KUBE_IMAGE_REPO/coredns:$COREDNS_VERSION" "$KUBE_IMAGE_REPO/pause:$PAUSE_TAG")
kind_log "building the control-plane images (${images[*]})"
docker build -q -t "${images[0]}" "$ctx/kube" >/dev/null
for i in 1 2 3 4; do docker tag "${images[0]}" "${images[$i]}"; done
docker build -q -t "${images[5]}" "$ctx/coredns" >/dev/null
docker build -q -t "${images[6]}" "$ctx/pause" >/dev/null
docker save -o "$ctx/images.tar" "${images[@]}"

# -- 3. the node ------------------------------------------------------------------------------
mkdir -p "$ctx/node/usr/local/bin" "$ctx/node/usr/bin" "$ctx/node/etc/containerd" "$ctx/node/etc/cni/net.d" "$ctx/node/kind"
cp "$KIND_BIN"/node/* "$ctx/node/usr/local/bin/"
cp "$KUBE" "$ctx/node/usr/bin/kube"
for n in kubelet kubeadm kubectl; do ln -s kube "$ctx/node/usr/bin/$n"; done
sed "s|@PAUSE_IMAGE@|$KUBE_IMAGE_REPO/pause:$PAUSE_TAG|" "$KIND_TOOLS/containerd-config.toml" \
    >"$ctx/node/etc/containerd/config.toml"
cp "$KIND_TOOLS/cni.conflist" "$ctx/node/etc/cni/net.d/10-ptp.conflist"
"$KIND_BIN/node/ctr" oci spec |
    jq '.hooks.createContainer[.hooks.createContainer| length] |= . + {"path": "/kind/bin/mount-product-files.sh"}' |
    jq 'del(.process.rlimits)' >"$ctx/node/etc/containerd/cri-base.json"
echo "$v" >"$ctx/node/kind/version"
printf 'FROM %s\nCOPY node/ /\n' "$BASE" >"$ctx/Dockerfile.node"
docker build -q -f "$ctx/Dockerfile.node" -t "$NODE_IMAGE-unpopulated" "$ctx" >/dev/null
node=pii-kind-build-$$
kind_log "importing the images into the node's containerd"
docker run -d --name "$node" --privileged --entrypoint /usr/local/bin/containerd "$NODE_IMAGE-unpopulated" >/dev/null
for ((i = 0; ; i++)); do
    docker exec "$node" ctr version >/dev/null 2>&1 && break
    ((i < 60)) || { docker logs "$node" 2>&1 | tail -n 20 >&2; kind_die "the node's containerd did not answer"; }
    sleep 0.5
done
docker cp "$ctx/images.tar" "$node:/images.tar"
docker exec "$node" ctr -n k8s.io images import --all-platforms --no-unpack /images.tar >&2
docker exec "$node" ctr -n k8s.io images ls -q >&2
docker exec "$node" rm -f /images.tar
docker stop -t 10 "$node" >/dev/null
docker commit --message "kind node for Kubernetes $v, built offline by tools/kind/node-image.sh" \
    "$node" "$NODE_IMAGE-populated" >/dev/null
# What kind's base image sets; `docker commit --change` of this daemon has no STOPSIGNAL.
printf '%s\n' "FROM $NODE_IMAGE-populated" 'ENV container=docker' 'STOPSIGNAL SIGRTMIN+3' \
    'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]' 'CMD []' "LABEL pii.kind.inputs=$node_key" |
    docker build -q -t "$NODE_IMAGE" - >/dev/null
docker rm -f "$node" >/dev/null; node=""
docker rmi "$NODE_IMAGE-unpopulated" "$NODE_IMAGE-populated" >/dev/null
docker image prune -f >/dev/null   # earlier builds' images, untagged by this one
kind_log "node image $NODE_IMAGE built in $((SECONDS - t_all)) s ($(docker image ls --format '{{.Size}}' "$NODE_IMAGE"))"
echo "$NODE_IMAGE"
