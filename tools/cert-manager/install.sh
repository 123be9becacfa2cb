#!/usr/bin/env bash
# Installs cert-manager into the cluster of $KUBECONFIG as its project ships it: the chart of the
# pinned module (deploy/charts/cert-manager, CRDs included), with the images build.sh made,
# loaded into the nodes by $LOAD_IMAGE (no registry). Idempotent (helm upgrade --install).
#
#   LOAD_IMAGE="kind load image-archive --name NAME" bash tools/cert-manager/install.sh
#   LOAD_IMAGE="ctr -a SOCKET -n k8s.io images import" bash tools/cert-manager/install.sh
#
# build.sh must have run where the module proxy is reachable (its outputs are cached); this
# script then needs no network but the cluster's. HELM: the helm binary (default: helm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
: "${LOAD_IMAGE:?set LOAD_IMAGE to a command that loads an image archive (its last argument) into the nodes}"
version=$(sed -n 's/^[[:space:]]*github.com\/cert-manager\/cert-manager \(v[^ ]*\)$/\1/p' "$here/controller/go.mod" | head -1)
for archive in $(bash "$here/build.sh"); do
  $LOAD_IMAGE "$archive" >&2
done
chart=$(bash "$here/build.sh" --chart)
args=(--set crds.enabled=true --set startupapicheck.enabled=false)
for part in "" webhook. cainjector.; do
  name=${part%.}
  args+=(--set "${part}image.repository=localhost/cert-manager-${name:-controller}" --set "${part}image.tag=$version"
         --set "${part}image.pullPolicy=Never")
done
"${HELM:-helm}" upgrade --install cert-manager "$chart" --namespace cert-manager --create-namespace "${args[@]}" \
  --wait --timeout 5m >&2
echo "cert-manager $version: installed" >&2
