#!/usr/bin/env bash
# `make e2e-matrix`: the e2e tier (tests/e2e, kube-apiserver + etcd) against each Kubernetes
# minor of tools/kube-test-plane/versions.txt, the results as a table (docs/compatibility.md).
#
#   tools/e2e-matrix.sh [--ci] [--skip-pinned] [--jobs N] [MINOR...]
#
#   MINOR          1.30, 1.30.14 or v1.30.14 (default: every minor of versions.txt)
#   --skip-pinned  leave out the pinned minor (CI runs every tier on it already)
#   --ci           only the minors whose binary is cached, plus the oldest and the newest: a
#                  cold build of every minor does not fit CI's time limit (docs/compatibility.md)
#   --jobs N       e2e runs side by side (default 1; make: 3); the builds are always one at a time
#                  (each takes 2 GB and both cores for minutes), the next one while runs go on
#
# Each minor: `build.sh --e2e` (a no-op when cached), then the whole e2e tier with that binary;
# its log in .bench/e2e-matrix/<release>.log, its figures in .bench/e2e-matrix/<release>.json.
# Exits non-zero if any minor fails to build or to pass.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PLANE=$ROOT/tools/kube-test-plane
OUT=$ROOT/.bench/e2e-matrix
PYTHON=$ROOT/.venv/bin/python
log() { printf 'e2e-matrix: %s\n' "$*" >&2; }

ci=0 skip_pinned=0 jobs=1
wanted=()
while (($#)); do
    case $1 in
        --ci) ci=1 ;;
        --skip-pinned) skip_pinned=1 ;;
        --jobs) jobs=${2:?--jobs needs a number}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//' >&2; exit 0 ;;
        -*) log "unknown argument '$1'"; exit 2 ;;
        *) wanted+=("${1#v}") ;;
    esac
    shift
done

releases=$(awk '!/^#/ && NF >= 3 { print $2 }' "$PLANE/versions.txt")
pinned=$(awk '!/^#/ && $4 == "pinned" { print $2 }' "$PLANE/versions.txt")
oldest=$(head -1 <<<"$releases")
newest=$(tail -1 <<<"$releases")
if ((${#wanted[@]})); then
    selected=()
    for w in "${wanted[@]}"; do
        r=$(awk -v w="$w" '!/^#/ && NF >= 3 && ($1 == w || $2 == w) { print $2 }' "$PLANE/versions.txt")
        [[ -n $r ]] || { log "$w is not in versions.txt ($(tr '\n' ' ' <<<"$releases"))"; exit 2; }
        selected+=("$r")
    done
else
    mapfile -t selected <<<"$releases"
fi

plan=()
for r in "${selected[@]}"; do
    ((skip_pinned)) && [[ $r == "$pinned" ]] && continue
    if ((ci)) && [[ $r != "$oldest" && $r != "$newest" ]] &&
        ! bash "$PLANE/build.sh" --e2e --cached "$r" >/dev/null 2>&1; then
        log "v$r: not cached, left to \`make e2e-matrix\`"
        continue
    fi
    plan+=("$r")
done
log "minors: ${plan[*]/#/v} (jobs $jobs)"
mkdir -p "$OUT"

run() { # release binary build_seconds
    local r=$1 bin=$2 built=$3 start status
    start=$(date +%s)
    status=0
    E2E_REQUIRED=1 KUBE_TEST_PLANE_BIN=$bin "$ROOT/.venv/bin/pytest" -q -p no:cacheprovider -m e2e \
        --junitxml="$OUT/$r.xml" "$ROOT/tests/e2e" >"$OUT/$r.log" 2>&1 || status=$?
    "$PYTHON" - "$r" "$OUT/$r.xml" "$built" "$(($(date +%s) - start))" "$status" "$bin" >"$OUT/$r.json" <<'PY'
import json, subprocess, sys
import xml.etree.ElementTree as ET
release, xml, built, seconds, status, binary = sys.argv[1:]
counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
try:
    for suite in ET.parse(xml).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
except (OSError, ET.ParseError):
    pass
report = subprocess.run([binary, "version"], capture_output=True, text=True).stdout.split("\n")
passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
print(json.dumps({"release": release, "server": report[0].split()[-1], "etcd": report[1].split()[-1],
                  "build_seconds": None if built == "cached" else int(built), "e2e_seconds": int(seconds),
                  "passed": passed, "failed": counts["failures"] + counts["errors"],
                  "skipped": counts["skipped"], "exit": int(status)}))
PY
    log "v$r: $(tail -1 "$OUT/$r.log")"
    return "$status"
}

failed=()
pids=()
declare -A pid_release
for r in "${plan[@]}"; do
    start=$(date +%s)
    built=cached
    bash "$PLANE/build.sh" --e2e --cached "$r" >/dev/null 2>&1 || built=
    log "v$r: build${built:+ (cached)}"
    if ! bin=$(nice -n 10 bash "$PLANE/build.sh" --e2e "$r" 2>"$OUT/$r.build.log"); then
        log "v$r: build failed: $(tail -3 "$OUT/$r.build.log")"
        failed+=("v$r (build)")
        continue
    fi
    [[ -n $built ]] || built=$(($(date +%s) - start))
    while (($(jobs -rp | wc -l) >= jobs)); do wait -n || true; done
    log "v$r: e2e tier with $bin"
    run "$r" "$bin" "$built" &
    pids+=($!)
    pid_release[$!]=$r
done
for pid in "${pids[@]}"; do
    wait "$pid" || failed+=("v${pid_release[$pid]}")
done

printf '\n| Kubernetes | etcd | e2e tier | build | e2e run |\n|---|---|---|---|---|\n'
for r in "${plan[@]}"; do
    [[ -f $OUT/$r.json ]] || continue
    "$PYTHON" - "$OUT/$r.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
minutes = lambda s: f"{s // 60}:{s % 60:02d}"
build = "cached" if r["build_seconds"] is None else minutes(r["build_seconds"])
print(f"| {r['server']} | {r['etcd']} | {r['passed']} passed, {r['failed']} failed, {r['skipped']} skipped "
      f"| {build} | {minutes(r['e2e_seconds'])} |")
PY
done
if ((${#failed[@]})); then
    log "failed: ${failed[*]}"
    exit 1
fi
