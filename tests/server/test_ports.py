"""Binding serve's ports: a port that cannot be had is one line that says why and what to change."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys

import pytest

from injector.core.settings import ServeSettings, SettingsError
from injector.server.ports import allow_low_ports, check_can_listen, listen_failure, listening_ports

from serving import EXAMPLES, make_certs


def test_the_ports_checked_are_those_set_by_flag():
    settings = ServeSettings(port=443, metrics_port=0, health_port=8081)
    assert listening_ports(settings) == [("--port", 443), ("--health-port", 8081)]


def test_permission_denied_below_1024_names_the_capability_and_the_way_out():
    line = listen_failure("--port", 443, "", OSError(errno.EACCES, "Permission denied"))
    assert line.startswith("--port=443: cannot listen: permission denied")
    assert "NET_BIND_SERVICE" in line and "--port=8443" in line and "\n" not in line


def test_address_in_use_says_so():
    line = listen_failure("--metrics-port", 9999, "", OSError(errno.EADDRINUSE, "Address already in use"))
    assert line.startswith("--metrics-port=9999: cannot listen: address already in use")


def test_a_taken_port_stops_start_up_as_a_settings_error():
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SettingsError, match=f"--port={port}: cannot listen: address already in use"):
            check_can_listen(ServeSettings(port=port, metrics_port=0))


def test_asking_for_the_bind_capability_never_raises():
    assert allow_low_ports() in (True, False)


def _serve(certs, *extra):
    return subprocess.run(
        [sys.executable, "-m", "injector", "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"),
         "--service-account", str(EXAMPLES / "serviceaccount.yaml"), "--metrics-port=0", *extra],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_on_a_taken_port_exits_2_with_one_line_and_no_traceback(tmp_path, workers):
    make_certs(tmp_path)
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = _serve(tmp_path, f"--port={port}", f"--workers={workers}")
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pod-identity-injector: --port={port}: cannot listen: address already in use; another process in "
        "this pod (or another webhook container) holds it")


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/usr/bin/setpriv"), reason="needs root and setpriv")
def test_port_443_without_net_bind_service_exits_2_with_one_line(tmp_path):
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as start:
        if int(start.read()) <= 443:
            pytest.skip("port 443 is unprivileged in this network namespace")
    make_certs(tmp_path)
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service", sys.executable, "-m",
         "injector", "--tls-cert", str(tmp_path / "tls.crt"), "--tls-key", str(tmp_path / "tls.key"),
         "--service-account", str(EXAMPLES / "serviceaccount.yaml"), "--metrics-port=0"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "pod-identity-injector: --port=443: cannot listen: permission denied. Ports below 1024 need NET_BIND_SERVICE")
