"""The cluster tier's cluster: one kind node, our chart installed from a registry, as a user does.

    cluster.py up        build what is missing (tools/kind/build.sh), create, release, install, check
    cluster.py down      delete everything `up` made (also after a crash) and check nothing is left
    cluster.py status    what is running
    cluster.py images    build only (node image, workload image, release tools), no cluster
    cluster.py restart kube-apiserver [--kill] [--down-for S]   a control-plane fault (static pod)

kind runs against its own Docker daemon (tools/kind/lib.sh) on a bridge network of its own,
NETWORK (SUBNET, the host is HOST_IP). On the host, on that bridge: the registry our image and
chart are released to (HOST_IP:5000, TLS with the cluster's CA), and the tests' AWS stand-ins
(STS on HOST_IP:8443, the Pod Identity Agent on AGENT_IP, an address of the bridge). The API
server is published on HOST_IP:6443, which is also the ServiceAccount token issuer: the STS
stand-in fetches its keys there, and pods reach it through their node. The cluster's CA is made
here and handed to kubeadm (mounted into the node), so the registry's certificate and the
stand-ins' are signed by the CA every pod trusts.

The network has no route out: the daemon makes no iptables rules, so nothing is forwarded past
the host. Runs as root. State in STATE (removed by `down`); built artefacts in ~/.cache.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
STATE = Path(os.environ.get("KIND_CLUSTER_STATE", "/var/lib/pii-kind-cluster"))
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

NAME = os.environ.get("KIND_CLUSTER_NAME", "pii-cluster")
NODE = f"{NAME}-control-plane"
NETWORK = os.environ.get("KIND_CLUSTER_NETWORK", "pii-kind")
BRIDGE = "pii-kind0"
SUBNET = "172.29.213.0/24"       # private; not the host's, not a TEST-NET
HOST_IP = "172.29.213.1"         # the bridge's gateway: this host, on the kind network
POD_SUBNET = "10.244.0.0/16"     # tools/kind/cni.conflist gives the node 10.244.0.0/24
SERVICE_SUBNET = "10.96.0.0/16"
POD_IDENTITY_AGENT_IP = "169.254.170.23"  # where EKS runs its Pod Identity Agent on every node
API_PORT = 6443
API_URL = f"https://{HOST_IP}:{API_PORT}"
ISSUER = API_URL

RELEASE = "pod-identity-injector"
RELEASE_NAMESPACE = "pod-identity-injector"
REGISTRY = f"{HOST_IP}:5000"
CHART_REF = f"oci://{REGISTRY}/charts/pod-identity-injector"
# The release's cache of its own (apt and pip caches, the OCI layout, SBOMs, the chart): another
# `make release` on the machine (the release tier, a session's) never writes under this one.
RELEASE_CACHE = CACHE / "pod-identity-injector-kind-release"
LAYOUT = RELEASE_CACHE / "image"
RELEASE_ENV = {"POD_IDENTITY_RELEASE_CACHE": str(RELEASE_CACHE)}
CHECK_NAMESPACE = "cluster-check"
CHECK_ROLE_ARN = "arn:aws:iam::111122223333:role/cluster-check"
COMPONENTS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd")


def log(message: str) -> None:
    print(f"[kind-cluster] {message}", file=sys.stderr, flush=True)


def lib_env() -> dict[str, str]:
    """The environment of tools/kind/lib.sh: kind's Docker daemon, the Go settings."""
    out = subprocess.run(["bash", "-c", f'set -a; . "{HERE}/lib.sh" && env -0'], capture_output=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.decode().split("\0") if "=" in item)


ENV = lib_env()
KIND = str(Path(ENV["KIND_CACHE"]) / "bin" / "kind")
DOCKER = shutil.which("docker") or "docker"


def run(cmd: list[str], *, check: bool = True, capture: bool = False, timeout: float = 600,
        env: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, input=stdin, text=True, timeout=timeout, env=env or ENV, check=False,
                            stdout=subprocess.PIPE if capture else sys.stderr,
                            stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else ""
        raise SystemExit(f"kind-cluster: {' '.join(cmd)} exited {result.returncode}{': ' + detail if detail else ''}")
    return result


def docker(*args: str, check: bool = True) -> str:
    return run([DOCKER, *args], check=check, capture=True).stdout


def script_output(cmd: list[str], what: str, env: dict | None = None, timeout: float = 3600) -> str:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False, env=env)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not lines:
        raise SystemExit(f"kind-cluster: {what} failed ({' '.join(cmd)} exited {result.returncode})")
    return lines[-1].strip()


def wait_for(check, timeout: float, what: str, interval: float = 0.5) -> float:
    started = time.monotonic()
    while True:
        with contextlib.suppress(Exception):
            if check():
                return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise SystemExit(f"kind-cluster: {what} not reached within {timeout:.0f} s")
        time.sleep(interval)


# -- what the cluster needs, built (each step cached; a no-op when current) --------------------
def cmd_images(_: argparse.Namespace) -> int:
    """kind, the node image, the workload image and helm; `up` then finds them current."""
    if os.geteuid() != 0:
        raise SystemExit("kind-cluster: needs root (Docker daemon, debootstrap)")
    started = time.monotonic()
    build_artifacts(release=False)
    log(f"node image, workload image and helm ready in {time.monotonic() - started:.0f} s")
    return 0


def build_artifacts(release: bool = True) -> dict:
    node_image = script_output(["bash", str(HERE / "build.sh")], "tools/kind/build.sh", env=os.environ.copy())
    helm = script_output(["bash", str(REPO / "tools/get-helm.sh")], "helm download")
    result = subprocess.run(["bash", str(REPO / "tools/image/build.sh"), "--no-app", "--no-pause"],
                            stdout=subprocess.PIPE, text=True, timeout=3600, check=False)
    archives = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or not archives:
        raise SystemExit(f"kind-cluster: tools/image/build.sh exited {result.returncode} with {archives}")
    workload = subprocess.run(["bash", "-c",
                               f'. "{REPO}/tools/image/lib.sh" >/dev/null 2>&1; printf %s "$WORKLOAD_IMAGE"'],
                              capture_output=True, text=True, check=True).stdout
    return {"kind": KIND, "node_image": node_image, "helm": helm, "kubectl": str(Path(helm).with_name("kubectl")),
            "images": archives, "workload_image": workload, **(build_release() if release else {})}


def build_release() -> dict:
    """The image for both architectures, the release tools and the registry, and the check that
    each architecture's image starts and prints its version (arm64 under qemu-user)."""
    version = subprocess.run([sys.executable, str(REPO / "tools/release/versions.py"), "show"], capture_output=True,
                             text=True, check=True).stdout.strip()
    env = dict(os.environ, **RELEASE_ENV)
    tools = dict(line.split("=", 1) for line in subprocess.run(
        ["bash", str(REPO / "tools/release/tools.sh")], stdout=subprocess.PIPE, text=True, check=True,
        timeout=3600).stdout.split())
    sys.path.insert(0, str(REPO / "tools/release"))
    import registry

    registry.ensure_installed()
    run(["bash", str(REPO / "tools/release/tools.sh"), "deps"], capture=True, timeout=600, env=env)
    run([sys.executable, str(REPO / "tools/image/assemble.py"), "--out", str(LAYOUT), "--version", version],
        timeout=1800, env=env)
    for arch in ("amd64", "arm64"):
        out = run([sys.executable, str(REPO / "tools/image/run.py"), "--layout", str(LAYOUT), "--ref",
                   f"{version}-{arch}", "--", "version"], capture=True, timeout=300, env=env).stdout.strip()
        if out.split()[:1] != [version]:
            raise SystemExit(f"kind-cluster: the linux/{arch} image printed {out!r}, not {version}")
    return {"version": version, "layout": str(LAYOUT), "cosign": tools["COSIGN"]}


# -- PKI: the cluster's CA (kubeadm uses it) and the registry's serving certificate --------------
def make_pki(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)

    def save(name: str, data: bytes, mode: int) -> None:
        (directory / name).write_bytes(data)
        os.chmod(directory / name, mode)

    def save_key(name: str, key: rsa.RSAPrivateKey) -> None:
        save(name, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()), 0o600)

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
          .not_valid_after(now + timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=True, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    save("ca.crt", ca.public_bytes(serialization.Encoding.PEM), 0o644)
    save_key("ca.key", ca_key)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "registry")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST_IP))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    save("registry.crt", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    save_key("registry.key", key)


# -- kind's configuration ----------------------------------------------------------------------
def kind_config(etcd_tag: str, kube_minor: int) -> dict:
    """One node. Offline images under localhost/kube; no kindnet (it is not on the Go module proxy):
    the node image's static ptp CNI config; kube-proxy in iptables mode; the kubelet allowed on
    this host's cgroup v1 (`failCgroupV1`, a field from 1.31 on; 1.30's kubelet runs on cgroup v1
    without being asked); the API server published on HOST_IP, which is also the token issuer."""
    kubelet = {"failCgroupV1": False} if kube_minor >= 31 else {}
    api_args = {"service-account-issuer": ISSUER, "service-account-jwks-uri": f"{ISSUER}/openid/v1/jwks"}
    # CoreDNS: the one version the node image has, whatever the minor's kubeadm would pick.
    cluster = {"imageRepository": "localhost/kube", "etcd": {"local": {"imageTag": etcd_tag}},
               "dns": {"imageTag": ENV["COREDNS_VERSION"]}}
    patches = [
        {"apiVersion": "kubeadm.k8s.io/v1beta3", "kind": "ClusterConfiguration", **cluster,
         "apiServer": {"extraArgs": api_args}},
        {"apiVersion": "kubeadm.k8s.io/v1beta4", "kind": "ClusterConfiguration", **cluster,
         "apiServer": {"extraArgs": [{"name": k, "value": v} for k, v in api_args.items()]}},
        {"apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration", **kubelet,
         "imageGCHighThresholdPercent": 100},
    ]
    return {
        "kind": "Cluster", "apiVersion": "kind.x-k8s.io/v1alpha4",
        "networking": {"disableDefaultCNI": True, "kubeProxyMode": "iptables", "apiServerAddress": HOST_IP,
                       "apiServerPort": API_PORT, "podSubnet": POD_SUBNET, "serviceSubnet": SERVICE_SUBNET},
        "kubeadmConfigPatches": [json.dumps(p) for p in patches],
        "nodes": [{"role": "control-plane", "extraMounts": [
            {"hostPath": str(STATE / "pki/ca.crt"), "containerPath": "/etc/kubernetes/pki/ca.crt", "readOnly": True},
            {"hostPath": str(STATE / "pki/ca.key"), "containerPath": "/etc/kubernetes/pki/ca.key", "readOnly": True},
            {"hostPath": str(STATE / "certs.d"), "containerPath": "/etc/containerd/certs.d", "readOnly": True},
        ]}],
    }


def registry_hosts() -> None:
    """containerd's configuration for our registry: HTTPS, verified with the cluster's CA."""
    directory = STATE / "certs.d" / REGISTRY
    directory.mkdir(parents=True)
    shutil.copy(STATE / "pki/ca.crt", directory / "ca.crt")
    (directory / "hosts.toml").write_text(f'server = "https://{REGISTRY}"\n\n[host."https://{REGISTRY}"]\n'
                                          f'  capabilities = ["pull", "resolve"]\n'
                                          f'  ca = "/etc/containerd/certs.d/{REGISTRY}/ca.crt"\n')


def network_up() -> None:
    """kind's bridge network, the agent's address on it, and routes to pods and Services via the node."""
    if not docker("network", "ls", "-q", "--filter", f"name=^{NETWORK}$").strip():
        docker("network", "create", "--driver", "bridge", "--subnet", SUBNET, "--gateway", HOST_IP,
               "-o", f"com.docker.network.bridge.name={BRIDGE}",
               "-o", "com.docker.network.bridge.enable_ip_masquerade=false", NETWORK)
    run(["ip", "addr", "replace", f"{POD_IDENTITY_AGENT_IP}/32", "dev", BRIDGE], env=os.environ.copy())


# -- up ----------------------------------------------------------------------------------------
def cmd_up(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("kind-cluster: needs root (Docker daemon, network)")
    if (STATE / "cluster.json").exists() and node_running():
        running = json.loads((STATE / "cluster.json").read_text()).get("kubernetes", "")
        if "KUBE_VERSION" in os.environ and running.lstrip("v") != ENV["KUBE_VERSION"]:
            log(f"up with Kubernetes {running}, not v{ENV['KUBE_VERSION']}: `make cluster-down` first")
            return 1
        log(f"already up (Kubernetes {running}); `make cluster-down` first to start afresh")
        print_usage()
        return 0
    if STATE.exists() or (daemon_up() and docker("ps", "-aq").strip()):
        log("leftovers of an earlier cluster found: cleaning up first")
        cmd_down(args)
    started = time.monotonic()
    artifacts = build_artifacts()
    built = time.monotonic()
    log(f"node image, images and tools ready in {built - started:.0f} s")
    STATE.mkdir(parents=True)
    (STATE / "artifacts.json").write_text(json.dumps(artifacts, indent=1))
    make_pki(STATE / "pki")
    registry_hosts()
    run(["bash", str(REPO / "tools/image/dockerd.sh"), "start"])
    network_up()
    sys.path.insert(0, str(REPO / "tools/release"))
    import registry

    registry.start(STATE / "registry", REGISTRY, (str(STATE / "pki/registry.crt"), str(STATE / "pki/registry.key")),
                   str(STATE / "pki/ca.crt"))
    printed = docker("run", "--rm", "--entrypoint", "/usr/bin/kube", artifacts["node_image"], "version")
    versions = dict(line.split(None, 1) for line in printed.splitlines() if line.strip())
    kubernetes = versions["kubernetes"].strip()   # v1.34.12
    etcd_tag = versions["etcd"].strip() + "-0"
    log(f"Kubernetes {kubernetes}, etcd {etcd_tag} ({artifacts['node_image']})")
    (STATE / "kind.json").write_text(json.dumps(kind_config(etcd_tag, int(kubernetes.split(".")[1])), indent=1))
    t0 = time.monotonic()
    env = dict(ENV, KIND_EXPERIMENTAL_DOCKER_NETWORK=NETWORK)
    result = run([KIND, "create", "cluster", "--name", NAME, "--image", artifacts["node_image"], "--config",
                  str(STATE / "kind.json"), "--kubeconfig", str(STATE / "admin.kubeconfig"), "--wait", "180s"],
                 env=env, check=False, timeout=600)
    if result.returncode != 0:
        log("kind create cluster failed; `make cluster-down` removes what was made")
        return result.returncode
    os.chmod(STATE / "admin.kubeconfig", 0o600)
    (STATE / "cluster.json").write_text(json.dumps({
        "name": NAME, "node": NODE, "kubernetes": kubernetes, "network": NETWORK, "host_ip": HOST_IP,
        "issuer": ISSUER,
        "agent_ip": POD_IDENTITY_AGENT_IP, "registry": REGISTRY,
        "node_ip": docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{NETWORK}\").IPAddress}}}}",
                          NODE).strip()}, indent=1))
    log(f"kind cluster {NAME} created ({time.monotonic() - t0:.1f} s)")
    node_ip = json.loads((STATE / "cluster.json").read_text())["node_ip"]
    for subnet in (POD_SUBNET, SERVICE_SUBNET):
        run(["ip", "route", "replace", subnet, "via", node_ip, "dev", BRIDGE], env=os.environ.copy())
    # The discovery document and JWKS readable without credentials, as IAM (and the STS stand-in)
    # fetch them.
    kubectl("create", "clusterrolebinding", "service-account-issuer-discovery-anonymous",
            "--clusterrole=system:service-account-issuer-discovery", "--group=system:unauthenticated")
    for archive in artifacts["images"]:
        run([KIND, "load", "image-archive", archive, "--name", NAME], capture=True)
    wait_for(lambda: kubectl("-n", "default", "get", "serviceaccount", "default", check=False).strip() != "",
             60, "the default ServiceAccount")
    log(f"node Ready, workload image loaded ({time.monotonic() - t0:.1f} s)")
    # CoreDNS up: a cluster without DNS is not one users have (its image must match the node's).
    kubectl("-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=180s", timeout=200)
    log(f"CoreDNS ready ({time.monotonic() - t0:.1f} s)")
    release(artifacts)
    log(f"released {artifacts['version']} to {REGISTRY} ({time.monotonic() - t0:.1f} s)")
    install_chart(artifacts)
    log(f"chart installed, both replicas Ready ({time.monotonic() - t0:.1f} s)")
    check_mutation(artifacts)
    log(f"a test pod was mutated ({time.monotonic() - t0:.1f} s)")
    log(f"up in {time.monotonic() - started:.0f} s (build {built - started:.0f} s, "
        f"start {time.monotonic() - built:.0f} s)")
    print_usage()
    return 0


def kubectl(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
    artifacts = json.loads((STATE / "artifacts.json").read_text())
    env = dict(os.environ, KUBECONFIG=str(STATE / "admin.kubeconfig"))
    return run([artifacts["kubectl"], *args], check=check, capture=True, timeout=timeout, env=env,
               stdin=stdin).stdout


def release(artifacts: dict) -> None:
    """`make release` against our registry, with the image assembled before; then the chart pulled
    back for the tests' upgrades (STATE/chart)."""
    ca = str(STATE / "pki/ca.crt")
    env = dict(os.environ, RELEASE_LAYOUT=artifacts["layout"], REGISTRY_CA=ca, PYTHON=sys.executable, **RELEASE_ENV)
    result = subprocess.run(["bash", str(REPO / "tools/release/release.sh"), REGISTRY, artifacts["version"]],
                            env=env, stdout=subprocess.PIPE, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"kind-cluster: make release to {REGISTRY} failed")
    summary = json.loads((RELEASE_CACHE / "releases" / artifacts["version"] / "release.json").read_text())
    summary.update(registry=REGISTRY, ca=ca,
                   chart_package=str(STATE / "chart" / f"pod-identity-injector-{artifacts['version']}.tgz"))
    (STATE / "chart").mkdir()
    run([artifacts["helm"], "pull", CHART_REF, "--version", artifacts["version"], "--ca-file", ca,
         "--destination", str(STATE / "chart")], capture=True, env=os.environ.copy())
    (STATE / "release.json").write_text(json.dumps(summary, indent=1))


def install_chart(artifacts: dict) -> None:
    """As the README tells users: `cosign verify` the image and the chart with the release's public
    key, then `helm install` from the OCI registry with the chart's defaults; the kubelet pulls."""
    summary = json.loads((STATE / "release.json").read_text())
    version, ca = artifacts["version"], str(STATE / "pki/ca.crt")
    for reference in (f"{REGISTRY}/pod-identity-injector:{version}",
                      f"{REGISTRY}/charts/pod-identity-injector:{version}"):
        run([artifacts["cosign"], "verify", "--key", summary["public_key"], "--insecure-ignore-tlog=true", reference],
            capture=True, env=dict(os.environ, SSL_CERT_FILE=ca))
        log(f"cosign verify {reference}: verified")
    env = dict(os.environ, KUBECONFIG=str(STATE / "admin.kubeconfig"))
    run([artifacts["helm"], "install", RELEASE, CHART_REF, "--version", version, "--ca-file", ca,
         "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m"], env=env, timeout=400)
    kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320)


def check_mutation(artifacts: dict) -> None:
    """Create a pod with an annotated ServiceAccount and look for what the webhook injects."""
    kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHECK_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "check", "namespace": CHECK_NAMESPACE,
                      "annotations": {"eks.amazonaws.com/role-arn": CHECK_ROLE_ARN}}},
    ]}))
    pod = json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check", "namespace": CHECK_NAMESPACE},
        "spec": {"serviceAccountName": "check", "restartPolicy": "Never",
                 "containers": [{"name": "check", "image": artifacts["workload_image"],
                                 "imagePullPolicy": "Never", "command": ["true"]}]},
    })

    def mutated() -> bool:
        out = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=pod, check=False)
        env = json.loads(out)["spec"]["containers"][0].get("env", []) if out.strip() else []
        return any(e.get("name") == "AWS_ROLE_ARN" and e.get("value") == CHECK_ROLE_ARN for e in env)

    wait_for(mutated, 60, "a pod mutated by the webhook", interval=1)
    kubectl("create", "-f", "-", stdin=pod)
    env = json.loads(kubectl("-n", CHECK_NAMESPACE, "get", "pod", "check", "-o", "json"))["spec"]["containers"][0]
    if not any(e.get("name") == "AWS_WEB_IDENTITY_TOKEN_FILE" for e in env.get("env", [])):
        raise SystemExit("kind-cluster: the test pod was created without AWS_WEB_IDENTITY_TOKEN_FILE")
    kubectl("delete", "namespace", CHECK_NAMESPACE, "--wait=false")


def print_usage() -> None:
    print(f"""
The kind cluster {NAME} is up (API server {API_URL}, network {NETWORK} {SUBNET}).
  tools/kind/run -- kubectl get pods -A
  tools/kind/run -- helm list -A
  make cluster-down
""", file=sys.stderr)


# -- faults ------------------------------------------------------------------------------------
def node_exec(*args: str, check: bool = True) -> str:
    return docker("exec", NODE, *args, check=check)


def cmd_restart(args: argparse.Namespace) -> int:
    """Stop a control-plane container (SIGTERM, or SIGKILL with --kill); the kubelet starts the
    static pod's container again, as it does on any kubeadm node. --down-for keeps the manifest
    away that long first, so the component stays down."""
    manifest = f"/etc/kubernetes/manifests/{args.component}.yaml"
    old = node_exec("crictl", "ps", "-q", "--name", f"^{args.component}$").split()
    if args.down_for > 0:
        node_exec("mv", manifest, f"/etc/kubernetes/{args.component}.yaml.away")
    for container in old:
        node_exec("crictl", "stop", *(["--timeout", "0"] if args.kill else []), container, check=False)
    if args.down_for > 0:
        time.sleep(args.down_for)
        node_exec("mv", f"/etc/kubernetes/{args.component}.yaml.away", manifest)
    wait_for(lambda: set(node_exec("crictl", "ps", "-q", "--name", f"^{args.component}$").split()) - set(old),
             120, f"a new {args.component} container", interval=0.5)
    if args.component == "kube-apiserver":
        wait_for(lambda: kubectl("get", "--raw", "/readyz", check=False).strip() == "ok", 120, "/readyz")
    log(f"{args.component} restarted")
    return 0


# -- down --------------------------------------------------------------------------------------
def node_running() -> bool:
    return bool(subprocess.run([DOCKER, "ps", "-q", "--filter", f"name=^{NODE}$"], env=ENV, capture_output=True,
                               text=True, check=False).stdout.strip())


def daemon_up() -> bool:
    return subprocess.run(["bash", str(REPO / "tools/image/dockerd.sh"), "status"], env=ENV,
                          capture_output=True, check=False).returncode == 0


def cmd_down(_: argparse.Namespace) -> int:
    if daemon_up():
        # The daemon is kind's own (tests only): every cluster, container and network on it goes,
        # `make e2e-kind`'s included.
        for cluster in run([KIND, "get", "clusters"], check=False, capture=True).stdout.split():
            run([KIND, "delete", "cluster", "--name", cluster], check=False, capture=True)
        with contextlib.suppress(SystemExit):
            ids = docker("ps", "-aq").split()
            if ids:
                docker("rm", "-f", "-v", *ids)
            for network in docker("network", "ls", "-q", "--filter", "type=custom").split():
                docker("network", "rm", network, check=False)
        run(["bash", str(REPO / "tools/image/dockerd.sh"), "stop"], check=False)
    sys.path.insert(0, str(REPO / "tools/release"))
    import registry

    if (STATE / "registry").exists():
        registry.stop(STATE / "registry")
    shutil.rmtree(STATE, ignore_errors=True)
    left = leftovers()
    for item in left:
        log(f"left behind: {item}")
    if not left:
        log("down: nothing left behind")
    return 1 if left else 0


def leftovers() -> list[str]:
    """What `up` makes that must be gone after `down`: the daemon, its containers, the bridge and
    its veths, mounts under the daemon's directories, the registry, the state."""
    found = []
    daemon_dir = Path(ENV["POD_IDENTITY_IMAGES_CACHE"])
    if daemon_up():
        found.append("kind's Docker daemon")
    pid_file = daemon_dir / "dockerd.pid"
    if pid_file.exists():
        found.append(f"{pid_file}")
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines()
              if any(f" {b}" in line for b in (f"{BRIDGE}:", f"master {BRIDGE} ", "pii-kind-e2e0"))]
    mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    found += [f"mount {m.split()[4]}" for m in mounts if m.split()[4].startswith((str(daemon_dir), str(STATE)))]
    registry_pid = STATE / "registry" / "pid"
    if registry_pid.exists():
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(registry_pid.read_text()), 0)
            found.append(f"registry pid {registry_pid.read_text().strip()}")
    if STATE.exists():
        found.append(str(STATE))
    return found


def cmd_status(_: argparse.Namespace) -> int:
    up = daemon_up() and node_running()
    print(f"kind's Docker daemon: {'running' if daemon_up() else 'stopped'}")
    print(f"node {NODE}: {'running' if up else 'absent'}")
    if up and (STATE / "cluster.json").exists():
        print(f"Kubernetes {json.loads((STATE / 'cluster.json').read_text()).get('kubernetes', '?')}")
    if up:
        print(node_exec("crictl", "ps", check=False))
    return 0 if up else 1


def cmd_load(args: argparse.Namespace) -> int:
    """Image archives into the node's containerd, never through a registry (cert-manager's, the Go
    webhook's: tools/cert-manager/install.sh and the migration scenarios call this)."""
    for archive in args.archives:
        run([KIND, "load", "image-archive", archive, "--name", NAME], capture=True)
        log(f"loaded {archive}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kind-cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("up", cmd_up), ("down", cmd_down), ("status", cmd_status), ("images", cmd_images)):
        sub.add_parser(name).set_defaults(fn=fn)
    restart = sub.add_parser("restart", help="stop a control-plane container; the kubelet starts it again")
    restart.add_argument("component", choices=COMPONENTS)
    restart.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    restart.add_argument("--down-for", type=float, default=0.0, help="seconds to stay down")
    restart.set_defaults(fn=cmd_restart)
    load = sub.add_parser("load", help="load image archives into the node")
    load.add_argument("archives", nargs="+", metavar="ARCHIVE")
    load.set_defaults(fn=cmd_load)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
