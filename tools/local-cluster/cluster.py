"""A single-node Kubernetes cluster of real components, in a network namespace of its own.

    cluster.py up       build what is missing, start everything, install the chart, check a pod
    cluster.py down     stop everything and remove what `up` made (also after a crash)
    cluster.py status   what is running
    cluster.py images   only the Debian packages, helm/kubectl and the images (no start)

etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet come from
tools/kube-test-plane (one binary built from the Go module proxy); containerd, runc and the CNI
plugins from Debian's packages; the images (ours and a pause image) from tools/image. Nothing is
pulled from a container registry.

Networking: every process runs in the network namespace NETNS, which has no link to the host
and no default route, so no packet can leave it. The node address is on a bridge in TEST-NET-1,
pods get addresses in TEST-NET-2 from the CNI bridge plugin, Services take TEST-NET-3. There is
no kube-proxy: the API server reaches webhook Services through their endpoints
(--enable-aggregator-routing), and the `kubernetes` Service's ClusterIP is an address of the
node itself, where the API server listens on 443, so in-cluster clients reach it without NAT.
Other ClusterIP Services are not routed (see tools/local-cluster/README.md).

Runs as root. State lives in STATE (removed by `down`); built artefacts in ~/.cache.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
NETNS = os.environ.get("LOCAL_CLUSTER_NETNS", "pii-local")
NETNS_PATH = Path("/var/run/netns") / NETNS
STATE = Path(os.environ.get("LOCAL_CLUSTER_STATE", "/var/lib/pii-local-cluster"))
CACHE = Path(os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")))

NODE_NAME = "local-node"
NODE_IP = "192.0.2.10"            # TEST-NET-1, on the bridge NODE_BRIDGE
NODE_CIDR = "192.0.2.0/24"
NODE_BRIDGE = "node0"
POD_CIDR = "198.51.100.0/24"      # TEST-NET-2, the CNI bridge
POD_GATEWAY = "198.51.100.1"
SERVICE_CIDR = "203.0.113.0/24"   # TEST-NET-3
KUBERNETES_SERVICE_IP = "203.0.113.1"
POD_IDENTITY_AGENT_IP = "169.254.170.23"  # where EKS runs its Pod Identity Agent on every node
API_PORT = 443
API_URL = f"https://{NODE_IP}:{API_PORT}"
ISSUER = f"https://{NODE_IP}"  # tokens' `iss`; the API server serves the discovery document there

RELEASE = "pod-identity-injector"
RELEASE_NAMESPACE = "pod-identity-injector"
# Our image and chart are not preloaded: `up` releases them (tools/release/release.sh) to a
# registry on the node, with TLS from the cluster's CA (which containerd trusts for that host),
# and installs the chart from there as users do; the kubelet pulls the image.
REGISTRY = f"{NODE_IP}:5000"
CHART_REF = f"oci://{REGISTRY}/charts/pod-identity-injector"
RELEASE_CACHE = CACHE / "pod-identity-injector-release"
LAYOUT = RELEASE_CACHE / "local-cluster-image"
CHECK_NAMESPACE = "local-cluster-check"
CHECK_ROLE_ARN = "arn:aws:iam::111122223333:role/local-cluster-check"

# tool → Debian package; dockerd and debootstrap build the images (tools/image).
APT_PACKAGES = {"containerd": "containerd", "runc": "runc", "/usr/lib/cni/bridge": "containernetworking-plugins",
                "ip": "iproute2", "nsenter": "util-linux", "dockerd": "docker.io", "debootstrap": "debootstrap"}
# Processes in start order; `down` stops them in reverse.
COMPONENTS = ("registry", "containerd", "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")


def log(message: str) -> None:
    print(f"local-cluster: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], *, check: bool = True, capture: bool = False, timeout: float = 600,
        env: dict[str, str] | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, check=False, text=True, timeout=timeout, env=env, input=stdin,
                            stdout=subprocess.PIPE if capture else None,
                            stderr=subprocess.PIPE if capture else None)
    if check and result.returncode != 0:
        detail = f"\n{result.stderr.strip()}" if capture and result.stderr else ""
        raise SystemExit(f"local-cluster: {' '.join(cmd[:4])}… exited {result.returncode}{detail}")
    return result


def script_output(cmd: list[str], what: str, timeout: float = 3600) -> str:
    """The last stdout line of a build script (the path it prints); its progress goes to our stderr."""
    result = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=timeout, check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise SystemExit(f"local-cluster: {what} failed ({' '.join(cmd)} exited {result.returncode})")
    return lines[-1].strip()


# -- prerequisites -----------------------------------------------------------------------------
def ensure_packages() -> None:
    """Install the Debian packages the node needs, only when one is missing."""
    missing = sorted({pkg for tool, pkg in APT_PACKAGES.items()
                      if not (Path(tool).exists() if tool.startswith("/") else shutil.which(tool))})
    if not missing:
        return
    log(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=env)


def cmd_images(_: argparse.Namespace) -> int:
    """The Debian packages, helm/kubectl and the image archives, without the Kubernetes binary:
    `make` builds that beside it (on a cold machine the two are the longest steps)."""
    if os.geteuid() != 0:
        raise SystemExit("local-cluster: needs root (Debian packages, dockerd)")
    started = time.monotonic()
    ensure_packages()
    script_output(["bash", str(REPO / "tools/get-helm.sh")], "helm download")
    build_images()
    log(f"packages, helm and images ready in {time.monotonic() - started:.0f} s")
    return 0


def build_images() -> list[str]:
    """The pause and workload images (imported into containerd); ours is released, not imported."""
    result = subprocess.run(["bash", str(REPO / "tools/image/build.sh"), "--no-app"],
                            stdout=subprocess.PIPE, text=True, timeout=3600, check=False)
    archives = [line.strip() for line in result.stdout.splitlines() if line.strip()]
    if result.returncode != 0 or len(archives) < 2:
        raise SystemExit(f"local-cluster: tools/image/build.sh exited {result.returncode} with {archives}")
    return archives


def build_artifacts() -> dict:
    """The Kubernetes binary, helm/kubectl and the image archives (each cached; a no-op when current)."""
    binary = script_output(["bash", str(REPO / "tools/kube-test-plane/build.sh")], "kube-test-plane build")
    helm = script_output(["bash", str(REPO / "tools/get-helm.sh")], "helm download")
    archives = build_images()
    names = subprocess.run(["bash", "-c", f'. "{REPO}/tools/image/lib.sh" >/dev/null 2>&1; '
                            'printf "%s %s" "$PAUSE_IMAGE" "$WORKLOAD_IMAGE"'],
                           capture_output=True, text=True, check=True).stdout.split()
    return {"binary": binary, "helm": helm, "kubectl": str(Path(helm).with_name("kubectl")),
            "images": archives, "pause_image": names[0], "workload_image": names[1], **build_release()}


def build_release() -> dict:
    """What `release` needs that needs the network, done before the namespace (which has no route
    out): the image for both architectures, the release tools, the registry; and the check that
    each architecture's image starts and prints its version (arm64 under qemu-user)."""
    version = subprocess.run([sys.executable, str(REPO / "tools/release/versions.py"), "show"], capture_output=True,
                             text=True, check=True).stdout.strip()
    tools = dict(line.split("=", 1) for line in subprocess.run(
        ["bash", str(REPO / "tools/release/tools.sh")], stdout=subprocess.PIPE, text=True, check=True,
        timeout=3600).stdout.split())
    sys.path.insert(0, str(REPO / "tools/release"))
    import registry

    registry.ensure_installed()
    run(["bash", str(REPO / "tools/release/tools.sh"), "deps"], capture=True, timeout=600)  # strip, qemu-user
    run([sys.executable, str(REPO / "tools/image/assemble.py"), "--out", str(LAYOUT), "--version", version],
        capture=False, timeout=1800)
    for arch in ("amd64", "arm64"):
        out = run([sys.executable, str(REPO / "tools/image/run.py"), "--layout", str(LAYOUT), "--ref",
                   f"{version}-{arch}", "--", "version"], capture=True, timeout=300).stdout.strip()
        if out.split()[:1] != [version]:
            raise SystemExit(f"local-cluster: the linux/{arch} image printed {out!r}, not {version}")
        log(f"linux/{arch} image started{' under qemu-user' if arch != 'amd64' else ''}: {out}")
    return {"version": version, "layout": str(LAYOUT), "cosign": tools["COSIGN"]}


# -- PKI ---------------------------------------------------------------------------------------
def make_pki(directory: Path) -> None:
    """One CA for the cluster; serving, client and ServiceAccount-signing keys."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write(name: str, data: bytes, mode: int = 0o644) -> None:
        (directory / name).write_bytes(data)
        os.chmod(directory / name, mode)

    def save_key(name: str, private: rsa.RSAPrivateKey) -> None:
        write(name, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                          serialization.NoEncryption()), 0o600)

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "local-cluster-ca")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
          .not_valid_after(now + timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    write("ca.crt", ca.public_bytes(serialization.Encoding.PEM))
    save_key("ca.key", ca_key)

    def issue(name: str, common_name: str, *, groups: tuple[str, ...] = (), dns: tuple[str, ...] = (),
              ips: tuple[str, ...] = (), server: bool = False) -> None:
        private = key()
        subject = x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups),
                             x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca.subject)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=365))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=True, content_commitment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                                crl_sign=False, encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                         else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if dns or ips:
            names = [*(x509.DNSName(d) for d in dns), *(x509.IPAddress(ipaddress.ip_address(i)) for i in ips)]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        write(f"{name}.crt", builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        save_key(f"{name}.key", private)

    issue("apiserver", "kube-apiserver", server=True,
          dns=("kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local",
               "localhost"),
          ips=(NODE_IP, KUBERNETES_SERVICE_IP, "127.0.0.1"))
    issue("admin", "local-admin", groups=("system:masters",))
    issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", groups=("system:masters",))
    issue("kubelet", f"system:node:{NODE_NAME}", groups=("system:nodes",))
    issue("controller-manager", "system:kube-controller-manager")
    issue("scheduler", "system:kube-scheduler")
    issue("registry", "registry", server=True, ips=(NODE_IP,))
    signing = key()
    save_key("sa.key", signing)
    write("sa.pub", signing.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo))


def write_kubeconfig(path: Path, pki: Path, user: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "local", "preferences": {},
        "clusters": [{"name": "local", "cluster": {"server": API_URL, "certificate-authority": str(pki / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki / f"{user}.crt"),
                                          "client-key": str(pki / f"{user}.key")}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
    }
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    os.chmod(path, 0o600)
    return path


# -- configuration files ---------------------------------------------------------------------
def containerd_config(pause_image: str) -> str:
    c = STATE / "containerd"
    return f"""version = 2
root = "{c}/root"
state = "{c}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]

[grpc]
  address = "{c}/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause_image}"
  # runc cannot lower oom_score_adj without CAP_SYS_RESOURCE, which this machine lacks.
  restrict_oom_score_adj = true
  enable_selinux = false
  # Pod network namespaces under STATE, not in the host's /var/run/netns: `down` removes its own only.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{STATE}/cni/net.d"
  # hosts.toml per registry (registry_hosts()): the node's registry is trusted with the cluster's CA.
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "{c}/certs.d"
"""


def registry_hosts(ca: Path) -> None:
    """containerd's configuration for the node's registry: HTTPS, verified with the cluster's CA."""
    directory = STATE / "containerd/certs.d" / REGISTRY
    directory.mkdir(parents=True)
    (directory / "hosts.toml").write_text(f'server = "https://{REGISTRY}"\n\n[host."https://{REGISTRY}"]\n'
                                          f'  capabilities = ["pull", "resolve"]\n  ca = "{ca}"\n')


def cni_config() -> str:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "local-cluster",
        "plugins": [{
            "type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False, "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(STATE / "cni/ipam"),
                     "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }, indent=1)


def kubelet_config(pki: Path) -> str:
    return json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "failCgroupV1": False,
        "failSwapOn": False,
        "containerRuntimeEndpoint": f"unix://{STATE}/containerd/containerd.sock",
        "clusterDomain": "cluster.local",
        "resolvConf": str(STATE / "resolv.conf"),
        "podLogsDir": str(STATE / "pod-logs"),
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "serializeImagePulls": False,
        # Images are imported, never pulled: garbage-collecting them would break the node.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "1%", "imagefs.available": "1%",
                         "nodefs.inodesFree": "1%"},
        "maxPods": 250,
    }, indent=1)


def component_commands(binary: str, pki: Path) -> dict[str, list[str]]:
    kc = STATE / "kubeconfig"
    p = str(pki)
    return {
        "containerd": ["containerd", "--config", str(STATE / "containerd/config.toml")],
        "etcd": [binary, "etcd", "--data-dir", str(STATE / "etcd"), "--listen-client-url", "http://127.0.0.1:2379",
                 "--listen-peer-url", "http://127.0.0.1:2380"],
        "kube-apiserver": [
            binary, "kube-apiserver", "--etcd-servers=http://127.0.0.1:2379",
            "--bind-address=0.0.0.0", f"--secure-port={API_PORT}", f"--advertise-address={NODE_IP}",
            f"--tls-cert-file={p}/apiserver.crt", f"--tls-private-key-file={p}/apiserver.key",
            f"--client-ca-file={p}/ca.crt",
            f"--kubelet-client-certificate={p}/apiserver-kubelet-client.crt",
            f"--kubelet-client-key={p}/apiserver-kubelet-client.key",
            # The node name has no DNS record here.
            "--kubelet-preferred-address-types=InternalIP",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--service-account-issuer={ISSUER}", f"--service-account-key-file={p}/sa.pub",
            f"--service-account-signing-key-file={p}/sa.key",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Webhook (and aggregated API) Services are called at their endpoints: no kube-proxy.
            "--enable-aggregator-routing=true",
            "--allow-privileged=true", "--profiling=false", "--v=1",
        ],
        "kube-controller-manager": [
            binary, "kube-controller-manager", f"--kubeconfig={kc}/controller-manager.kubeconfig",
            f"--authentication-kubeconfig={kc}/controller-manager.kubeconfig",
            f"--authorization-kubeconfig={kc}/controller-manager.kubeconfig",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--use-service-account-credentials=true",
            f"--service-account-private-key-file={p}/sa.key", f"--root-ca-file={p}/ca.crt",
            f"--cluster-signing-cert-file={p}/ca.crt", f"--cluster-signing-key-file={p}/ca.key",
            "--cluster-name=local", "--profiling=false", "--v=1",
        ],
        "kube-scheduler": [
            binary, "kube-scheduler", f"--kubeconfig={kc}/scheduler.kubeconfig",
            f"--authentication-kubeconfig={kc}/scheduler.kubeconfig",
            f"--authorization-kubeconfig={kc}/scheduler.kubeconfig",
            "--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false", "--v=1",
        ],
        "kubelet": [
            binary, "kubelet", f"--config={STATE}/kubelet.json", f"--kubeconfig={kc}/kubelet.kubeconfig",
            f"--node-ip={NODE_IP}", f"--hostname-override={NODE_NAME}", f"--root-dir={STATE}/kubelet",
            f"--cert-dir={STATE}/kubelet/pki", "--v=1",
        ],
    }


# -- processes ---------------------------------------------------------------------------------
def pid_file(name: str) -> Path:
    return STATE / "pids" / f"{name}.pid"


def start(name: str, cmd: list[str]) -> int:
    """Start a component in its own session (it outlives `up`), logging to STATE/logs/NAME.log."""
    (STATE / "logs").mkdir(parents=True, exist_ok=True)
    (STATE / "pids").mkdir(parents=True, exist_ok=True)
    with open(STATE / "logs" / f"{name}.log", "ab") as out:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=STATE)
    pid_file(name).write_text(str(proc.pid))
    return proc.pid


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own child that exited) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def read_pid(name: str) -> int | None:
    try:
        return int(pid_file(name).read_text())
    except (OSError, ValueError):
        return None


def log_tail(name: str, lines: int = 40) -> str:
    try:
        return "\n".join((STATE / "logs" / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_for(check, timeout: float, what: str, component: str | None = None, interval: float = 0.5) -> float:
    started = time.monotonic()
    while True:
        if component:
            pid = read_pid(component)
            if pid is None or not alive(pid):
                raise SystemExit(f"local-cluster: {component} exited while waiting for {what}:\n{log_tail(component)}")
        try:
            if check():
                return time.monotonic() - started
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
        if time.monotonic() - started > timeout:
            tail = f"\n{log_tail(component)}" if component else ""
            raise SystemExit(f"local-cluster: {what}: not after {timeout:.0f} s{tail}")
        time.sleep(interval)


def https_ok(url: str, pki: Path) -> bool:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    context.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    with urllib.request.urlopen(url, context=context, timeout=5) as response:
        return response.status == 200


# -- up ----------------------------------------------------------------------------------------
def netns_setup() -> None:
    """The namespace, its loopback, and the node bridge carrying the node address, the `kubernetes`
    Service address and the Pod Identity Agent's link-local address."""
    run(["ip", "netns", "add", NETNS])
    ip = ["ip", "-n", NETNS]
    run([*ip, "link", "set", "lo", "up"])
    run([*ip, "link", "add", NODE_BRIDGE, "type", "bridge"])
    run([*ip, "addr", "add", f"{NODE_IP}/{NODE_CIDR.split('/')[1]}", "dev", NODE_BRIDGE])
    run([*ip, "addr", "add", f"{KUBERNETES_SERVICE_IP}/32", "dev", NODE_BRIDGE])
    run([*ip, "addr", "add", f"{POD_IDENTITY_AGENT_IP}/32", "dev", NODE_BRIDGE])
    run([*ip, "link", "set", NODE_BRIDGE, "up"])


def cmd_up(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("local-cluster: needs root (network namespace, containerd, kubelet)")
    if NETNS_PATH.exists() or STATE.exists():
        if all(read_pid(n) and alive(read_pid(n) or 0) for n in COMPONENTS):
            log("already up; `make cluster-down` first to start afresh")
            print_usage()
            return 0
        log("leftovers of an earlier cluster found: cleaning up first")
        cmd_down(args)
    started = time.monotonic()
    ensure_packages()
    artifacts = build_artifacts()
    built = time.monotonic()
    log(f"binaries and images ready in {built - started:.0f} s")
    STATE.mkdir(parents=True)
    (STATE / "artifacts.json").write_text(json.dumps(artifacts, indent=1))
    netns_setup()
    # Everything after this runs inside the namespace, and so do the processes it starts.
    result = subprocess.run(["nsenter", f"--net={NETNS_PATH}", sys.executable, __file__, "_start"], check=False)
    if result.returncode != 0:
        log(f"start failed (logs in {STATE}/logs); `make cluster-down` removes what was started")
        return result.returncode
    log(f"up in {time.monotonic() - started:.0f} s (build {built - started:.0f} s, start "
        f"{time.monotonic() - built:.0f} s)")
    print_usage()
    return 0


def kubectl(*args: str, check: bool = True, timeout: float = 120, stdin: str | None = None) -> str:
    artifacts = json.loads((STATE / "artifacts.json").read_text())
    env = dict(os.environ, KUBECONFIG=str(STATE / "admin.kubeconfig"))
    return run([artifacts["kubectl"], *args], check=check, capture=True, timeout=timeout, env=env,
               stdin=stdin).stdout


def cmd_start(_: argparse.Namespace) -> int:
    """Inside the namespace: configuration, processes, images, chart, and a mutated pod."""
    artifacts = json.loads((STATE / "artifacts.json").read_text())
    pki = STATE / "pki"
    make_pki(pki)
    (STATE / "kubeconfig").mkdir()
    write_kubeconfig(STATE / "admin.kubeconfig", pki, "admin")
    for user in ("controller-manager", "scheduler", "kubelet"):
        write_kubeconfig(STATE / "kubeconfig" / f"{user}.kubeconfig", pki, user)
    (STATE / "containerd").mkdir()
    (STATE / "cni/net.d").mkdir(parents=True)
    (STATE / "cni/net.d/10-local-cluster.conflist").write_text(cni_config())
    (STATE / "kubelet.json").write_text(kubelet_config(pki))
    # Pods resolve nothing: no name server is reachable from the namespace.
    (STATE / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
    images = [Path(p) for p in artifacts["images"]]
    (STATE / "containerd/config.toml").write_text(containerd_config(artifacts["pause_image"]))
    commands = component_commands(artifacts["binary"], pki)
    (STATE / "commands.json").write_text(json.dumps(commands, indent=1))
    sock = str(STATE / "containerd/containerd.sock")

    registry_hosts(pki / "ca.crt")

    t0 = time.monotonic()
    sys.path.insert(0, str(REPO / "tools/release"))
    import registry

    registry.start(STATE / "registry", REGISTRY, (str(pki / "registry.crt"), str(pki / "registry.key")),
                   str(pki / "ca.crt"))
    pid_file("registry").parent.mkdir(parents=True, exist_ok=True)
    pid_file("registry").write_text((STATE / "registry/pid").read_text())
    start("containerd", commands["containerd"])
    wait_for(lambda: run(["ctr", "-a", sock, "version"], check=False, capture=True).returncode == 0,
             60, "containerd", "containerd")
    for archive in images:
        run(["ctr", "-a", sock, "-n", "k8s.io", "images", "import", "--no-unpack", str(archive)], capture=True)
    log(f"containerd up, {len(images)} images imported ({time.monotonic() - t0:.1f} s)")
    start("etcd", commands["etcd"])
    wait_for(lambda: b'"true"' in urllib.request.urlopen("http://127.0.0.1:2379/health", timeout=2).read(),
             60, "etcd /health", "etcd")
    start("kube-apiserver", commands["kube-apiserver"])
    wait_for(lambda: https_ok(f"{API_URL}/readyz", pki), 120, "kube-apiserver /readyz", "kube-apiserver")
    log(f"API server ready ({time.monotonic() - t0:.1f} s)")
    # The discovery document and JWKS readable without credentials, as IAM (and the STS
    # stand-in of the cluster tier) fetch them; self-hosted IRSA setups do the same.
    kubectl("create", "clusterrolebinding", "service-account-issuer-discovery-anonymous",
            "--clusterrole=system:service-account-issuer-discovery", "--group=system:unauthenticated")
    for name in ("kube-controller-manager", "kube-scheduler", "kubelet"):
        start(name, commands[name])
    wait_for(lambda: "True" in kubectl("get", "node", NODE_NAME, "-o",
                                       "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False),
             180, f"node {NODE_NAME} Ready", "kubelet", interval=1)
    wait_for(lambda: kubectl("-n", "default", "get", "serviceaccount", "default", check=False).strip() != "",
             60, "the default ServiceAccount", "kube-controller-manager")
    log(f"node Ready ({time.monotonic() - t0:.1f} s)")
    release(artifacts, pki)
    log(f"released {artifacts['version']} to {REGISTRY} ({time.monotonic() - t0:.1f} s)")
    install_chart(artifacts, pki)
    log(f"chart installed, both replicas Ready ({time.monotonic() - t0:.1f} s)")
    check_mutation(artifacts)
    log(f"a test pod was mutated ({time.monotonic() - t0:.1f} s)")
    return 0


def release(artifacts: dict, pki: Path) -> None:
    """`make release` against the node's registry, with the image assembled before (no route out
    of the namespace); then the chart pulled back for the tests' upgrades (STATE/chart)."""
    env = dict(os.environ, RELEASE_LAYOUT=artifacts["layout"], REGISTRY_CA=str(pki / "ca.crt"),
               PYTHON=sys.executable)
    result = subprocess.run(["bash", str(REPO / "tools/release/release.sh"), REGISTRY, artifacts["version"]],
                            env=env, stdout=subprocess.PIPE, text=True, timeout=1800, check=False)
    if result.returncode != 0:
        raise SystemExit(f"local-cluster: make release to {REGISTRY} failed")
    summary = json.loads((RELEASE_CACHE / "releases" / artifacts["version"] / "release.json").read_text())
    summary.update(registry=REGISTRY, ca=str(pki / "ca.crt"),
                   chart_package=str(STATE / "chart" / f"pod-identity-injector-{artifacts['version']}.tgz"))
    (STATE / "chart").mkdir()
    run([artifacts["helm"], "pull", CHART_REF, "--version", artifacts["version"], "--ca-file", str(pki / "ca.crt"),
         "--destination", str(STATE / "chart")], capture=True)
    (STATE / "release.json").write_text(json.dumps(summary, indent=1))


def install_chart(artifacts: dict, pki: Path) -> None:
    """As the README tells users: `cosign verify` the image and the chart with the release's public
    key, then `helm install` from the OCI registry with the chart's defaults (no --set image…);
    the kubelet pulls the image."""
    summary = json.loads((STATE / "release.json").read_text())
    version = artifacts["version"]
    cosign_env = dict(os.environ, SSL_CERT_FILE=str(pki / "ca.crt"))
    for reference in (f"{REGISTRY}/pod-identity-injector:{version}", f"{REGISTRY}/charts/pod-identity-injector:{version}"):
        run([artifacts["cosign"], "verify", "--key", summary["public_key"], "--insecure-ignore-tlog=true", reference],
            capture=True, env=cosign_env)
        log(f"cosign verify {reference}: verified")
    env = dict(os.environ, KUBECONFIG=str(STATE / "admin.kubeconfig"))
    run([artifacts["helm"], "install", RELEASE, CHART_REF, "--version", version, "--ca-file", str(pki / "ca.crt"),
         "--namespace", RELEASE_NAMESPACE, "--create-namespace", "--wait", "--timeout", "5m"], env=env, timeout=400)
    kubectl("-n", RELEASE_NAMESPACE, "rollout", "status", f"deployment/{RELEASE}", "--timeout=300s", timeout=320)


def check_mutation(artifacts: dict) -> None:
    """Create a pod with an annotated ServiceAccount and look for what the webhook injects."""
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": CHECK_NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": "check", "namespace": CHECK_NAMESPACE,
                      "annotations": {"eks.amazonaws.com/role-arn": CHECK_ROLE_ARN}}},
    ]})
    kubectl("apply", "-f", "-", stdin=manifest)
    pod = json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check", "namespace": CHECK_NAMESPACE},
        "spec": {"serviceAccountName": "check", "restartPolicy": "Never",
                 "containers": [{"name": "check", "image": artifacts["workload_image"],
                                 "imagePullPolicy": "Never", "command": ["true"]}]},
    })

    def mutated() -> bool:
        kubectl("-n", CHECK_NAMESPACE, "delete", "pod", "check", "--ignore-not-found", "--wait=false", check=False)
        out = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", stdin=pod, check=False)
        env = json.loads(out)["spec"]["containers"][0].get("env", []) if out.strip() else []
        return any(e.get("name") == "AWS_ROLE_ARN" and e.get("value") == CHECK_ROLE_ARN for e in env)

    wait_for(mutated, 60, "a pod mutated by the webhook", interval=1)
    kubectl("create", "-f", "-", stdin=pod)
    env = json.loads(kubectl("-n", CHECK_NAMESPACE, "get", "pod", "check", "-o", "json"))["spec"]["containers"][0]
    if not any(e.get("name") == "AWS_WEB_IDENTITY_TOKEN_FILE" for e in env.get("env", [])):
        raise SystemExit("local-cluster: the test pod was created without AWS_WEB_IDENTITY_TOKEN_FILE")
    kubectl("delete", "namespace", CHECK_NAMESPACE, "--wait=false")


def print_usage() -> None:
    print(f"""
The local cluster is up (node {NODE_NAME} at {NODE_IP}, network namespace {NETNS}).
  tools/local-cluster/run -- kubectl get pods -A
  tools/local-cluster/run -- helm list -A
  tools/local-cluster/run -- bash          # a shell with KUBECONFIG, kubectl and helm
Logs: {STATE}/logs/   Stop and clean up: make cluster-down
""")


# -- down --------------------------------------------------------------------------------------
def netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def our_processes() -> set[int]:
    """Every process that belongs to the cluster: in its namespace, under kubepods, a shim of
    its containerd, or recorded in a PID file."""
    pids: set[int] = set()
    ns = netns_inode(str(NETNS_PATH))
    marker = str(STATE)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if ns is not None and os.stat(f"/proc/{pid}/ns/net").st_ino == ns:
                pids.add(pid)
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if marker in cmdline:
                pids.add(pid)
                continue
            if "/kubepods" in (entry / "cgroup").read_text():
                pids.add(pid)
        except OSError:
            continue
    for name in COMPONENTS:
        pid = read_pid(name)
        if pid and alive(pid):
            pids.add(pid)
    return pids


def kill_pods() -> None:
    """SIGKILL every container process (the kubepods cgroups): their open watches would hold the
    API server's graceful shutdown for its whole timeout."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if "/kubepods" in (entry / "cgroup").read_text():
                    os.kill(int(entry.name), signal.SIGKILL)
            except OSError:  # gone already (ProcessLookupError) or unreadable
                continue


def stop_component(name: str, timeout: float, sig: int = signal.SIGTERM) -> float | None:
    """Signal a component by its PID file and wait at most `timeout` for it to exit; returns
    the seconds it took, or None when it was not running."""
    pid = read_pid(name)
    if not pid or not alive(pid):
        return None
    began = time.monotonic()
    os.kill(pid, sig)
    while alive(pid) and time.monotonic() < began + timeout:
        time.sleep(0.05)
    return time.monotonic() - began


def stop_processes() -> None:
    stop_component("kubelet", 15)  # first, so that nothing restarts the containers killed next
    kill_pods()
    for name in reversed(COMPONENTS):  # orderly first, so that etcd shuts down cleanly
        took = stop_component(name, 8)
        if took is not None:
            log(f"{name} stopped in {took:.1f} s")
    for _ in range(20):
        pids = {p for p in our_processes() if alive(p)}
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.3)
    left = sorted(p for p in our_processes() if alive(p))
    if left:
        log(f"processes still alive after SIGKILL: {left}")


def our_mounts() -> list[str]:
    """Mount points under STATE (pod volumes, rootfs, pod network namespaces), deepest first."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if point.startswith(str(STATE) + "/") or point == str(STATE):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def remove_cgroups() -> None:
    """The kubepods hierarchy the kubelet created in every cgroup v1 controller (and v2)."""
    for root in Path("/sys/fs/cgroup").iterdir():
        for top in (root / "kubepods", root / "kubepods.slice"):
            if top.is_dir():
                for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts),
                                        reverse=True):
                    with contextlib.suppress(OSError):
                        directory.rmdir()
                with contextlib.suppress(OSError):
                    top.rmdir()


def cmd_down(_: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        raise SystemExit("local-cluster: needs root")
    stop_processes()
    for point in our_mounts():
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)
    if NETNS_PATH.exists():
        subprocess.run(["ip", "netns", "delete", NETNS], check=False, capture_output=True)
    remove_cgroups()
    if STATE.exists():
        shutil.rmtree(STATE, ignore_errors=True)
    problems = leftovers()
    if problems:
        log("left behind: " + "; ".join(problems))
        return 1
    log("down: no process, mount, namespace or veth left")
    return 0


def leftovers() -> list[str]:
    problems = []
    if NETNS_PATH.exists():
        problems.append(f"network namespace {NETNS}")
    if our_mounts():
        problems.append(f"mounts {our_mounts()[:5]}")
    alive_pids = sorted(p for p in our_processes() if alive(p))
    if alive_pids:
        problems.append(f"processes {alive_pids}")
    if STATE.exists():
        problems.append(f"directory {STATE}")
    links = subprocess.run(["ip", "-o", "link", "show", "type", "veth"], capture_output=True, text=True,
                           check=False).stdout
    if "veth" in links:
        problems.append(f"veth links in the host namespace: {links.strip()[:200]}")
    if any((root / "kubepods").exists() for root in Path("/sys/fs/cgroup").iterdir()):
        problems.append("kubepods cgroups")
    return problems


def cmd_restart(args: argparse.Namespace) -> int:
    """Stop a component (SIGTERM, or SIGKILL with --kill) and start it again with the same command,
    inside the namespace; for fault tests."""
    if netns_inode("/proc/self/ns/net") != netns_inode(str(NETNS_PATH)):
        return subprocess.run(["nsenter", f"--net={NETNS_PATH}", sys.executable, __file__, "restart", args.component,
                               *(["--kill"] if args.kill else []), "--down-for", str(args.down_for)]).returncode
    commands = json.loads((STATE / "commands.json").read_text())
    stop_component(args.component, 30, signal.SIGKILL if args.kill else signal.SIGTERM)
    time.sleep(args.down_for)
    start(args.component, commands[args.component])
    log(f"{args.component} restarted")
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    up = True
    for name in COMPONENTS:
        pid = read_pid(name)
        state = "running" if pid and alive(pid) else "stopped"
        up &= state == "running"
        print(f"{name:24} {state}{f' (pid {pid})' if pid else ''}")
    print(f"network namespace {NETNS}: {'present' if NETNS_PATH.exists() else 'absent'}")
    return 0 if up else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="local-cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, fn in (("up", cmd_up), ("down", cmd_down), ("status", cmd_status), ("images", cmd_images),
                     ("_start", cmd_start)):
        sub.add_parser(name).set_defaults(fn=fn)
    restart = sub.add_parser("restart", help="stop a component and start it again (fault tests)")
    restart.add_argument("component", choices=COMPONENTS)
    restart.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    restart.add_argument("--down-for", type=float, default=0.0, help="seconds to stay down")
    restart.set_defaults(fn=cmd_restart)
    args = parser.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
