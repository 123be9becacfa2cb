#!/usr/bin/env bash
# The release, in one command (`make release`; the tag workflow runs the same):
#
#   tools/release/release.sh REGISTRY [VERSION]      e.g. ghcr.io/pod-identity-injector 0.2.0
#
#  1. checks VERSION is pyproject.toml's and that everything agrees with it (versions.py check);
#  2. assembles the image for linux/amd64 and linux/arm64 (tools/image/assemble.py, no engine);
#  3. pushes the image index as REGISTRY/pod-identity-injector:VERSION (skopeo, digests kept);
#  4. makes an SPDX SBOM of each architecture's image (syft: every Debian package, every Python
#     distribution) and attaches it to that image as a signed attestation (cosign attest);
#  5. signs the index and every image in it (cosign sign --recursive);
#  6. packages the chart with its default image set to REGISTRY/pod-identity-injector, tag
#     VERSION, digest of the index, and `helm push`es it to oci://REGISTRY/charts; signs it;
#  7. verifies what users verify: `cosign verify` of the index and the chart, and
#     `cosign verify-attestation` of each SBOM.
# Output: REGISTRY references and digests on stdout (also in $out/release.json); everything else
# (the OCI layout, SBOMs, the chart package) stays in $out = ~/.cache/pod-identity-injector-release/
# releases/VERSION. Progress on stderr.
#
# Environment:
#   SIGNING=key (default) | keyless
#     key:     COSIGN_KEY (a cosign private key; default: one made on first use in the cache,
#              its public half beside it), COSIGN_PASSWORD (default empty). No transparency-log
#              upload; verification uses the public key alone.
#     keyless: Sigstore's public instance with the CI's OIDC identity (the tag workflow);
#              verified with COSIGN_CERTIFICATE_IDENTITY_REGEXP and COSIGN_CERTIFICATE_OIDC_ISSUER.
#   REGISTRY_CA=FILE       the registry's CA (a private registry with its own TLS)
#   REGISTRY_PLAIN_HTTP=auto (default: plain HTTP for a loopback host) | 1 | 0
#   RELEASE_LAYOUT=DIR     an OCI layout tools/image/assemble.py wrote for VERSION (skips step 2)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
PY=${PYTHON:-python3}
log() { printf '[release] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

REGISTRY=${1:-${REGISTRY:-}}
[[ -n $REGISTRY ]] || die "usage: make release REGISTRY=host[:port][/path] [VERSION=x.y.z]"
REGISTRY=${REGISTRY%/}
REGISTRY=${REGISTRY,,}   # repository names are lower case (ghcr.io/<Owner> included)
declared=$("$PY" "$here/versions.py" show)
VERSION=${2:-${VERSION:-$declared}}
[[ $VERSION == "$declared" ]] ||
    die "VERSION=$VERSION but pyproject.toml says $declared: bump it there (and in Chart.yaml, CHANGELOG.md) first"
"$PY" "$here/versions.py" check >&2

SIGNING=${SIGNING:-key}
cache=${POD_IDENTITY_RELEASE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pod-identity-injector-release}
out=$cache/releases/$VERSION
image=$REGISTRY/pod-identity-injector
chart_repo=$REGISTRY/charts
host=${REGISTRY%%/*}

plain=${REGISTRY_PLAIN_HTTP:-auto}
if [[ $plain == auto ]]; then
    case ${host%:*} in localhost | 127.* | '[::1]') plain=1 ;; *) plain=0 ;; esac
    [[ $host == '[::1]'* ]] && plain=1
fi

bash "$here/tools.sh" deps >/dev/null   # Debian keyring, dpkg-deb, strip for arm64, qemu, skopeo
eval "$(bash "$here/tools.sh")"         # COSIGN SYFT SKOPEO HELM
mkdir -p "$out"
certdir=$(mktemp -d)
trap 'rm -rf "$certdir"' EXIT

# Each tool's way of reaching the registry.
skopeo_dest=() syft_env=(SYFT_CHECK_FOR_APP_UPDATE=false) cosign_reg=() helm_reg=() cosign_env=()
if ((plain)); then
    skopeo_dest=(--dest-tls-verify=false)
    syft_env+=(SYFT_REGISTRY_INSECURE_USE_HTTP=true)
    cosign_reg=(--allow-http-registry)
    helm_reg=(--plain-http)
elif [[ -n ${REGISTRY_CA:-} ]]; then
    cp "$REGISTRY_CA" "$certdir/ca.crt"
    skopeo_dest=(--dest-cert-dir "$certdir")
    syft_env+=(SYFT_REGISTRY_CA_CERT="$REGISTRY_CA")
    cosign_env=(SSL_CERT_FILE="$REGISTRY_CA")
    helm_reg=(--ca-file "$REGISTRY_CA")
fi

# Signing: key-based (here) or keyless (the tag workflow).
cosign_sign=(--yes) cosign_verify=()
case $SIGNING in
    key)
        if [[ -z ${COSIGN_KEY:-} ]]; then
            COSIGN_KEY=$cache/keys/cosign.key
            if [[ ! -f $COSIGN_KEY ]]; then
                log "no COSIGN_KEY: making a key pair for this machine, $cache/keys/cosign.{key,pub}"
                mkdir -p "$cache/keys"
                COSIGN_PASSWORD=${COSIGN_PASSWORD:-} "$COSIGN" generate-key-pair --output-key-prefix "$cache/keys/cosign" >&2
            fi
        fi
        export COSIGN_PASSWORD=${COSIGN_PASSWORD:-}
        pub=${COSIGN_PUBLIC_KEY:-${COSIGN_KEY%.key}.pub}
        [[ -f $pub ]] || pub=$out/cosign.pub
        [[ -f $pub ]] || "$COSIGN" public-key --key "$COSIGN_KEY" --outfile "$pub" >&2
        cp "$pub" "$out/cosign.pub" 2>/dev/null || true
        # No transparency log: the key alone is the trust (cosign v3 needs its signing config off).
        cosign_sign+=(--key "$COSIGN_KEY" --use-signing-config=false --tlog-upload=false)
        cosign_verify=(--key "$pub" --insecure-ignore-tlog=true)
        ;;
    keyless)
        : "${COSIGN_CERTIFICATE_IDENTITY_REGEXP:?keyless verification needs COSIGN_CERTIFICATE_IDENTITY_REGEXP}"
        : "${COSIGN_CERTIFICATE_OIDC_ISSUER:=https://token.actions.githubusercontent.com}"
        cosign_verify=(--certificate-identity-regexp "$COSIGN_CERTIFICATE_IDENTITY_REGEXP"
                       --certificate-oidc-issuer "$COSIGN_CERTIFICATE_OIDC_ISSUER")
        ;;
    *) die "SIGNING is key or keyless, not $SIGNING" ;;
esac
cosign() { env "${cosign_env[@]}" "$COSIGN" "$@"; }

started=$SECONDS
# 2. The image, both architectures (RELEASE_LAYOUT: one assembled before, e.g. outside a network
#    namespace with no route out, as the cluster tier does).
if [[ -n ${RELEASE_LAYOUT:-} ]]; then
    rm -rf "$out/oci" && cp -r "$RELEASE_LAYOUT" "$out/oci"
else
    "$PY" "$repo/tools/image/assemble.py" --out "$out/oci" --version "$VERSION" >/dev/null
fi

# 3. The index, with the digests the layout has.
log "pushing $image:$VERSION"
"$SKOPEO" copy --quiet --all --preserve-digests "${skopeo_dest[@]}" --digestfile "$out/index.digest" \
    "oci:$out/oci:$VERSION" "docker://$image:$VERSION" >&2
index_digest=$(<"$out/index.digest")
mapfile -t platforms < <("$PY" - "$out/oci" "$index_digest" <<'PY'
import json, sys
from pathlib import Path
layout, digest = Path(sys.argv[1]), sys.argv[2]
index = json.loads((layout / "blobs" / digest.replace(":", "/")).read_text())
for m in index["manifests"]:
    print(m["platform"]["architecture"], m["digest"])
PY
)
((${#platforms[@]} == 2)) || die "the index holds ${#platforms[@]} images, not 2"

# 4. SBOM per image, attached as a signed attestation.
for entry in "${platforms[@]}"; do
    arch=${entry% *} digest=${entry#* }
    log "SBOM of linux/$arch ($digest)"
    env "${syft_env[@]}" "$SYFT" scan -q "registry:$image@$digest" \
        -o "spdx-json=$out/sbom-$arch.spdx.json" -o "syft-table=$out/sbom-$arch.txt"
    cosign attest "${cosign_sign[@]}" "${cosign_reg[@]}" --type spdxjson \
        --predicate "$out/sbom-$arch.spdx.json" "$image@$digest" >&2
done

# 5. The index and the images in it.
log "signing $image@$index_digest"
cosign sign "${cosign_sign[@]}" "${cosign_reg[@]}" --recursive "$image@$index_digest" >&2

# 6. The chart, its default image the index just pushed.
log "packaging the chart for $image:$VERSION@$index_digest"
rm -rf "$out/chart" && mkdir -p "$out/chart"
cp -r "$repo/charts/pod-identity-injector" "$out/chart/"
"$PY" - "$out/chart/pod-identity-injector/values.yaml" "$image" "$VERSION" "$index_digest" <<'PY'
import re, sys
from pathlib import Path
path, repository, tag, digest = Path(sys.argv[1]), *sys.argv[2:]
text = path.read_text()
block = re.search(r"(?m)^image:\n((?:  .*\n|\s*#.*\n)+)", text)
body = block.group(1)
for key, value in (("repository", repository), ("tag", f'"{tag}"'), ("digest", f'"{digest}"')):
    body, n = re.subn(rf"(?m)^  {key}:.*$", f"  {key}: {value}", body, count=1)
    if n != 1:
        sys.exit(f"values.yaml: no image.{key}")
path.write_text(text[:block.start(1)] + body + text[block.end(1):])
PY
"$HELM" package "$out/chart/pod-identity-injector" --destination "$out" >&2
package=$out/pod-identity-injector-$VERSION.tgz
[[ -f $package ]] || die "helm package did not write $package"
push=$("$HELM" push "$package" "oci://$chart_repo" "${helm_reg[@]}" 2>&1) || die "helm push: $push"
printf '%s\n' "$push" >&2
chart_digest=$(sed -n 's/^Digest: *\(sha256:[0-9a-f]\{64\}\).*/\1/p' <<<"$push" | head -n1)
[[ -n $chart_digest ]] || die "no digest in helm push's output"
log "signing $chart_repo/pod-identity-injector@$chart_digest"
cosign sign "${cosign_sign[@]}" "${cosign_reg[@]}" "$chart_repo/pod-identity-injector@$chart_digest" >&2

# 7. What users run before installing.
log "verifying"
cosign verify "${cosign_verify[@]}" "${cosign_reg[@]}" "$image:$VERSION" >/dev/null
cosign verify "${cosign_verify[@]}" "${cosign_reg[@]}" "$chart_repo/pod-identity-injector:$VERSION" >/dev/null
for entry in "${platforms[@]}"; do
    cosign verify-attestation "${cosign_verify[@]}" "${cosign_reg[@]}" --type spdxjson "$image@${entry#* }" >/dev/null
done

"$PY" - "$out/release.json" <<PY
import json, sys
json.dump({"version": "$VERSION", "image": "$image:$VERSION", "index_digest": "$index_digest",
           "images": {e.split()[0]: e.split()[1] for e in """$(printf '%s\n' "${platforms[@]}")""".splitlines()},
           "chart": "oci://$chart_repo/pod-identity-injector", "chart_digest": "$chart_digest",
           "signing": "$SIGNING", "public_key": "${pub:-}"}, open(sys.argv[1], "w"), indent=1)
PY
log "released $VERSION in $((SECONDS - started)) s"
cat <<EOF
image  $image:$VERSION@$index_digest
$(for entry in "${platforms[@]}"; do printf '  linux/%s %s\n' "${entry% *}" "${entry#* }"; done)
chart  oci://$chart_repo/pod-identity-injector --version $VERSION ($chart_digest)
sboms  cosign download attestation $image@<image digest>   (also $out/sbom-*.spdx.json)
EOF
[[ $SIGNING == key ]] && printf 'verify cosign verify --key %s --insecure-ignore-tlog=true %s:%s\n' "$pub" "$image" "$VERSION"
exit 0
