#!/usr/bin/env bash
# Logs every release tool into a registry (the tag workflow, before `make release`):
#
#   REGISTRY_PASSWORD=… tools/release/login.sh HOST USER
#
# skopeo (the image index), helm (the chart) and cosign (signatures, attestations; syft reads the
# same Docker credentials file) each keep their own credentials.
set -euo pipefail
host=${1:?usage: login.sh HOST USER}
user=${2:?usage: login.sh HOST USER}
: "${REGISTRY_PASSWORD:?REGISTRY_PASSWORD is required}"
eval "$(bash "$(dirname "${BASH_SOURCE[0]}")/tools.sh")"
printf '%s' "$REGISTRY_PASSWORD" | "$SKOPEO" login --username "$user" --password-stdin "$host"
printf '%s' "$REGISTRY_PASSWORD" | "$HELM" registry login "$host" --username "$user" --password-stdin
printf '%s' "$REGISTRY_PASSWORD" | "$COSIGN" login "$host" --username "$user" --password-stdin
