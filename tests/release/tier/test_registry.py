"""`make release` against a fresh plain-HTTP registry on 127.0.0.1 (Debian's docker-registry),
then what a user does with what it pushed: pull the chart, read its default image, verify the
signatures, fetch the SBOMs. `make release-test`; the unit tier leaves this directory out."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "tools/release"))
import registry  # noqa: E402

VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
INDEX = "application/vnd.oci.image.index.v1+json"

pytestmark = pytest.mark.skipif(os.environ.get("RELEASE_TIER") != "1", reason="the release tier: make release-test")


def tool(name: str) -> str:
    return subprocess.run(["bash", str(ROOT / "tools/release/tools.sh"), name], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A registry on 127.0.0.1 that `make release` pushed to; its address and what release.sh printed."""
    directory = tmp_path_factory.mktemp("registry")
    address = registry.start(directory)
    try:
        done = subprocess.run(["make", "--no-print-directory", "release", f"REGISTRY={address}", f"VERSION={VERSION}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False)
        assert done.returncode == 0, done.stderr[-4000:]
        yield address, done.stdout
    finally:
        registry.stop(directory)


def get(address: str, path: str, accept: str = INDEX) -> tuple[dict, str]:
    request = urllib.request.Request(f"http://{address}/v2/{path}", headers={"Accept": accept})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read()), response.headers["Docker-Content-Digest"]


def cosign(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("cosign"), *args, "--allow-http-registry"], capture_output=True, text=True,
                          timeout=120, check=False)


PUBLIC_KEY = Path(os.environ.get("POD_IDENTITY_RELEASE_CACHE") or Path(
    os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pod-identity-injector-release") / "keys/cosign.pub"


def test_the_image_is_one_index_of_amd64_and_arm64(release):
    address, _ = release
    index, _ = get(address, f"pod-identity-injector/manifests/{VERSION}")
    assert index["mediaType"] == INDEX
    assert sorted((m["platform"]["os"], m["platform"]["architecture"]) for m in index["manifests"]) == [
        ("linux", "amd64"), ("linux", "arm64")]


def test_the_chart_pulls_and_its_default_image_is_that_index(release, tmp_path):
    address, _ = release
    _, index_digest = get(address, f"pod-identity-injector/manifests/{VERSION}")
    subprocess.run([tool("helm"), "pull", f"oci://{address}/charts/pod-identity-injector", "--version", VERSION,
                    "--plain-http", "--destination", str(tmp_path)], check=True, capture_output=True, timeout=120)
    with tarfile.open(tmp_path / f"pod-identity-injector-{VERSION}.tgz") as chart:
        values = yaml.safe_load(chart.extractfile("pod-identity-injector/values.yaml"))
        meta = yaml.safe_load(chart.extractfile("pod-identity-injector/Chart.yaml"))
    assert (meta["version"], meta["appVersion"]) == (VERSION, VERSION)
    assert values["image"]["repository"] == f"{address}/pod-identity-injector"
    assert (values["image"]["tag"], values["image"]["digest"]) == (VERSION, index_digest)


@pytest.mark.parametrize("reference", ["pod-identity-injector", "charts/pod-identity-injector"])
def test_cosign_verify_with_the_public_key_passes(release, reference):
    address, _ = release
    verified = cosign("verify", "--key", str(PUBLIC_KEY), "--insecure-ignore-tlog=true",
                      f"{address}/{reference}:{VERSION}")
    assert verified.returncode == 0, verified.stderr


def test_a_signature_does_not_verify_with_another_key(release, tmp_path):
    address, _ = release
    env = dict(os.environ, COSIGN_PASSWORD="")
    subprocess.run([tool("cosign"), "generate-key-pair", "--output-key-prefix", str(tmp_path / "other")], env=env,
                   check=True, capture_output=True)
    verified = cosign("verify", "--key", str(tmp_path / "other.pub"), "--insecure-ignore-tlog=true",
                      f"{address}/pod-identity-injector:{VERSION}")
    assert verified.returncode != 0


def test_each_image_has_an_sbom_of_every_debian_package_and_python_distribution(release):
    address, _ = release
    index, _ = get(address, f"pod-identity-injector/manifests/{VERSION}")
    requirements = [line.split("==")[0] for line in (ROOT / "tools/image/requirements.txt").read_text().splitlines()
                    if line and not line.startswith("#")]
    for image in index["manifests"]:
        fetched = cosign("download", "attestation", f"{address}/pod-identity-injector@{image['digest']}")
        assert fetched.returncode == 0, fetched.stderr
        # The image's signature (sign --recursive) is a bundle beside it; the SBOM is the SPDX one.
        statements = [json.loads(base64.b64decode(json.loads(line)["dsseEnvelope"]["payload"]))
                      for line in fetched.stdout.splitlines() if line.strip()]
        sboms = [s for s in statements if s["predicateType"] == "https://spdx.dev/Document"]
        assert len(sboms) == 1, [s["predicateType"] for s in statements]
        statement = sboms[0]
        assert statement["subject"][0]["digest"]["sha256"] == image["digest"].removeprefix("sha256:")
        packages = {p["name"]: p.get("versionInfo") for p in statement["predicate"]["packages"]}
        debian = [p for p in statement["predicate"]["packages"]
                  if any("pkg:deb/debian/" in r.get("referenceLocator", "") for r in p.get("externalRefs", []))]
        assert {"python3.11-minimal", "libpython3.11-stdlib", "libc6", "libssl3"} <= {p["name"] for p in debian}
        assert all(p.get("versionInfo") for p in debian)
        missing = [name for name in [*requirements, "pod-identity-injector"] if not packages.get(name)]
        assert not missing, f"{image['platform']['architecture']}: not in the SBOM: {missing}"
        verified = cosign("verify-attestation", "--key", str(PUBLIC_KEY), "--insecure-ignore-tlog=true",
                          "--type", "spdxjson", f"{address}/pod-identity-injector@{image['digest']}")
        assert verified.returncode == 0, verified.stderr


def test_a_version_other_than_pyprojects_is_refused(release):
    address, _ = release
    done = subprocess.run(["make", "--no-print-directory", "release", f"REGISTRY={address}", "VERSION=9.9.9"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert f"VERSION=9.9.9 but pyproject.toml says {VERSION}" in done.stderr
