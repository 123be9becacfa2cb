#!/usr/bin/env bash
# `make e2e-kind`: the e2e tier (tests/e2e) against a kind cluster instead of the local
# kube-apiserver. Needs Docker (a running engine) and kind (>= v0.29, Kubernetes >= 1.33); Linux.
#
#   tools/e2e-kind.sh [--keep] [--offline | --online] [-- <pytest arguments>]
#
# Two ways to the same steps, chosen by --offline/--online (default: online when a Docker
# engine answers, else offline):
#   online   the Docker engine and kind on PATH, kind's stock node image (pulled), the image
#            built with `docker build`;
#   offline  no registry needed (root): tools/kind builds kind, its own Docker daemon and a
#            node image of KUBE_VERSION (tools/kind/README.md); the image is built by
#            tools/image/build.sh and loaded as an archive; the cluster gets a network of its
#            own, NETWORK_OFFLINE, and the node's static CNI config instead of kindnet.
#
#   1. creates (or reuses) the kind cluster $KIND_CLUSTER (pod-identity-injector-e2e): API
#      server on a fixed 127.0.0.1 port, its --service-account-jwks-uri under that address
#      (test_web_identity_token fetches the keys only from the API server it talks to);
#   2. docker build -t pod-identity-injector:e2e . and kind load docker-image;
#   3. installs charts/pod-identity-injector (helm upgrade --install, so a kept cluster is
#      reused) into pod-identity-injector-system with image pullPolicy Never, its webhook
#      limited to namespaces labelled pod-identity-injector-e2e=in-cluster (the tests' own
#      webhooks must be the only ones on their namespaces), --wait, then `helm test`;
#   4. taints the nodes NoSchedule, so the tests' pods stay Pending as in the local tier;
#   5. E2E_REQUIRED=1 E2E_KUBECONFIG=<kind kubeconfig> E2E_WEBHOOK_HOST=<IPv4 gateway of the
#      docker network kind> .venv/bin/pytest -m e2e tests/e2e: the webhooks the tests start
#      listen on the host at that address, where the API server in the node container reaches
#      them (a host firewall must let the kind network in).
#
# The cluster is deleted at the end (also on failure or Ctrl-C) unless --keep is given.
# Environment: KIND_CLUSTER, KIND_NODE_IMAGE (default: kind's), E2E_WEBHOOK_HOST (override
# the gateway found in step 5), KUBE_VERSION (offline). helm and kubectl from tools/get-helm.sh.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-pod-identity-injector-e2e}
IMAGE=pod-identity-injector:e2e
RELEASE=pod-identity-injector
RELEASE_NAMESPACE=pod-identity-injector-system
HELM_TEST_NAMESPACE=pod-identity-injector-e2e-helm-test
SELECTOR_LABEL=pod-identity-injector-e2e
SELECTOR_VALUE=in-cluster
TAINT=e2e.pod-identity-injector.test/no-test-pods
MIN_MINOR=33
PYTHON=$ROOT/.venv/bin/python
PYTEST=$ROOT/.venv/bin/pytest

log() { printf 'e2e-kind: %s\n' "$*" >&2; }
die() {
    log "$*"
    exit 1
}
usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; }

KEEP=0
MODE=auto
NETWORK=kind
NETWORK_OFFLINE=pii-kind-e2e
SUBNET_OFFLINE=172.29.214.0/24
PYTEST_ARGS=()
while (($#)); do
    case $1 in
        --keep) KEEP=1 ;;
        --offline) MODE=offline ;;
        --online) MODE=online ;;
        --)
            shift
            PYTEST_ARGS=("$@")
            break
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument '$1' (usage: tools/e2e-kind.sh [--keep] [-- <pytest arguments>])" ;;
    esac
    shift
done

# -- prerequisites ---------------------------------------------------------------------------------
command -v docker >/dev/null 2>&1 || die "needs Docker and kind: no docker command on PATH"
if [[ $MODE == auto ]]; then
    if docker info >/dev/null 2>&1; then MODE=online; else MODE=offline; fi
fi
STARTED_DAEMON=0
if [[ $MODE == offline ]]; then
    # kind, the Docker daemon and the node image of tools/kind; DOCKER_HOST points at that daemon.
    # shellcheck source=tools/kind/lib.sh
    . "$ROOT/tools/kind/lib.sh"
    bash "$ROOT/tools/image/dockerd.sh" status || STARTED_DAEMON=1
    KIND_NODE_IMAGE=$(bash "$ROOT/tools/kind/build.sh") || die "tools/kind/build.sh failed"
    kind() { "$KIND" "$@"; }
    NETWORK=$NETWORK_OFFLINE
    export KIND_EXPERIMENTAL_DOCKER_NETWORK=$NETWORK
    docker network inspect "$NETWORK" >/dev/null 2>&1 ||
        docker network create --driver bridge --subnet "$SUBNET_OFFLINE" --gateway "${SUBNET_OFFLINE%.0/24}.1" \
            -o com.docker.network.bridge.name=pii-kind-e2e0 "$NETWORK" >/dev/null
fi
command -v kind >/dev/null 2>&1 ||
    die "needs Docker and kind: no kind command on PATH (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
if ! engine=$(docker info --format '{{.ServerVersion}}' 2>&1); then
    die "needs Docker and kind: no Docker engine answers (${engine##*$'\n'})"
fi
[[ -x $PYTEST ]] || die "no $PYTEST: run 'make install' first (make e2e-kind does)"
cd "$ROOT"
HELM=$(bash tools/get-helm.sh)
KUBECTL=$(dirname "$HELM")/kubectl
log "$MODE: docker engine $engine, $(kind version), helm $("$HELM" version --short)"

work=$(mktemp -d "${TMPDIR:-/tmp}/e2e-kind.XXXXXX")
KUBECONFIG_FILE=$work/kubeconfig
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if ((KEEP)); then
        log "cluster $CLUSTER kept; kubeconfig: kind get kubeconfig --name $CLUSTER; delete: kind delete cluster --name $CLUSTER"
    elif kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
        log "deleting cluster $CLUSTER (--keep keeps it)"
        kind delete cluster --name "$CLUSTER" >&2 || status=1
    fi
    if [[ $MODE == offline ]] && ((!KEEP)); then
        docker network rm "$NETWORK" >/dev/null 2>&1 || true
        # The daemon goes too if this run started it and nothing else runs on it.
        if ((STARTED_DAEMON)) && [[ -z $(docker ps -q 2>/dev/null) ]]; then
            bash "$ROOT/tools/image/dockerd.sh" stop || status=1
        fi
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

k() { "$KUBECTL" --kubeconfig "$KUBECONFIG_FILE" "$@"; }
h() {
    HELM_CACHE_HOME=$work/helm HELM_CONFIG_HOME=$work/helm HELM_DATA_HOME=$work/helm \
        "$HELM" --kubeconfig "$KUBECONFIG_FILE" "$@"
}

# -- 1. the cluster --------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
    log "reusing kind cluster $CLUSTER"
else
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    jwks_uri=https://127.0.0.1:$port/openid/v1/jwks
    offline_networking="" offline_patches=""
    if [[ $MODE == offline ]]; then
        # The node image's images (localhost/kube), no kindnet (the node's static CNI config),
        # and a kubelet allowed on a cgroup v1 host (tools/kind/README.md).
        etcd_tag=$(docker run --rm --entrypoint /usr/bin/kube "$KIND_NODE_IMAGE" version | sed -n 's/^etcd //p')-0
        offline_networking=$'\n  disableDefaultCNI: true\n  kubeProxyMode: iptables'
        offline_patches="
  - |
    apiVersion: kubeadm.k8s.io/v1beta3
    kind: ClusterConfiguration
    imageRepository: localhost/kube
    etcd: {local: {imageTag: \"$etcd_tag\"}}
  - |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: ClusterConfiguration
    imageRepository: localhost/kube
    etcd: {local: {imageTag: \"$etcd_tag\"}}
  - |
    apiVersion: kubelet.config.k8s.io/v1beta1
    kind: KubeletConfiguration
    failCgroupV1: false"
    fi
    # kind uses kubeadm v1beta3 (extraArgs a map) up to Kubernetes 1.35 and v1beta4 (a list)
    # after; a patch naming its apiVersion only applies to that version, so give both.
    cat >"$work/kind.yaml" <<EOF
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: 127.0.0.1
  apiServerPort: $port$offline_networking
kubeadmConfigPatches:
  - |
    apiVersion: kubeadm.k8s.io/v1beta3
    kind: ClusterConfiguration
    apiServer:
      extraArgs:
        service-account-jwks-uri: $jwks_uri
  - |
    apiVersion: kubeadm.k8s.io/v1beta4
    kind: ClusterConfiguration
    apiServer:
      extraArgs:
        - name: service-account-jwks-uri
          value: $jwks_uri$offline_patches
EOF
    create=(create cluster --name "$CLUSTER" --config "$work/kind.yaml" --wait 180s)
    if [[ -n ${KIND_NODE_IMAGE:-} ]]; then
        create+=(--image "$KIND_NODE_IMAGE")
    fi
    log "creating kind cluster $CLUSTER (API server on 127.0.0.1:$port)"
    kind "${create[@]}" >&2
fi
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
chmod 600 "$KUBECONFIG_FILE"
minor=$(k version -o json | "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["serverVersion"]["minor"].rstrip("+"))')
((minor >= MIN_MINOR)) ||
    die "the cluster runs Kubernetes 1.$minor; the tests need 1.$MIN_MINOR or newer (resizePolicy is dropped before): use kind >= v0.29 or KIND_NODE_IMAGE"

# -- 2. the image ----------------------------------------------------------------------------------
if [[ $MODE == offline ]]; then
    log "tools/image/build.sh --tag $IMAGE (a Debian base instead of the registry's)"
    archive=$(env -u DOCKER_HOST -u POD_IDENTITY_IMAGES_CACHE -u POD_IDENTITY_DOCKERD_RUNTIME \
        bash tools/image/build.sh --tag "$IMAGE" --no-pause --no-workload | head -n 1)
    kind load image-archive "$archive" --name "$CLUSTER" >&2
    image_id=sha256:$(sha256sum "$archive" | cut -d' ' -f1)
else
    log "docker build -t $IMAGE ."
    docker build -t "$IMAGE" . >&2
    kind load docker-image "$IMAGE" --name "$CLUSTER" >&2
    image_id=$(docker image inspect --format '{{.Id}}' "$IMAGE")
fi

# -- 3. the chart, in the cluster ------------------------------------------------------------------
k taint nodes --all "$TAINT:NoSchedule-" >/dev/null 2>&1 || true # a kept cluster: let the chart's pods run
k create namespace "$HELM_TEST_NAMESPACE" --dry-run=client -o yaml | k apply -f - >/dev/null
k label namespace "$HELM_TEST_NAMESPACE" "$SELECTOR_LABEL=$SELECTOR_VALUE" --overwrite >/dev/null
cat >"$work/values.yaml" <<EOF
image:
  repository: ${IMAGE%%:*}
  tag: ${IMAGE##*:}
  pullPolicy: Never
# A rebuilt image under the same tag still rolls the Deployment of a kept cluster.
podAnnotations:
  pod-identity-injector-e2e/image-id: "$image_id"
webhook:
  namespaceSelector:
    matchLabels:
      $SELECTOR_LABEL: $SELECTOR_VALUE
tests:
  namespace: $HELM_TEST_NAMESPACE
EOF
diagnose() {
    k -n "$RELEASE_NAMESPACE" get pods -o wide >&2 || true
    k -n "$RELEASE_NAMESPACE" logs "deployment/$RELEASE" --tail 40 >&2 || true
}
log "helm upgrade --install $RELEASE into $RELEASE_NAMESPACE"
h upgrade --install "$RELEASE" charts/pod-identity-injector --namespace "$RELEASE_NAMESPACE" --create-namespace \
    -f "$work/values.yaml" --wait --timeout 5m >&2 || {
    diagnose
    die "helm install failed"
}
h test "$RELEASE" --namespace "$RELEASE_NAMESPACE" --logs --timeout 5m >&2 || {
    diagnose
    die "helm test failed"
}

# -- 4. no scheduling of the tests' pods -----------------------------------------------------------
k taint nodes --all "$TAINT=true:NoSchedule" --overwrite >/dev/null

# -- 5. the e2e tier -------------------------------------------------------------------------------
webhook_host=${E2E_WEBHOOK_HOST:-}
if [[ -z $webhook_host ]]; then
    webhook_host=$(docker network inspect "$NETWORK" --format '{{range .IPAM.Config}}{{.Gateway}} {{end}}' |
        tr ' ' '\n' | grep -E '^[0-9]+(\.[0-9]+){3}$' | head -n 1 || true)
fi
[[ -n $webhook_host ]] ||
    die "no IPv4 gateway in 'docker network inspect $NETWORK'; set E2E_WEBHOOK_HOST to this host's address on that network"
log "pytest -m e2e tests/e2e against $CLUSTER; webhooks on $webhook_host"
E2E_REQUIRED=1 E2E_KUBECONFIG=$KUBECONFIG_FILE E2E_WEBHOOK_HOST=$webhook_host \
    "$PYTEST" -m e2e tests/e2e ${PYTEST_ARGS[@]+"${PYTEST_ARGS[@]}"}
