"""Binding `serve`'s ports: the one privilege a port below 1024 needs, and why a bind failed.

The Go webhook's manifests pass no `--port`, so it listens on 443, as root. Our image runs as
UID 65532 and its interpreter carries the file capability `cap_net_bind_service=+p`
(permitted, not effective; Dockerfile and tools/image/assemble.py): the kernel grants it only
where the container's bounding set allows NET_BIND_SERVICE, and never refuses the exec when it
does not. `allow_low_ports` makes it effective, and only when a port below 1024 is asked for
(docs/image.md#port-443). A bind that fails anyway becomes one line naming the port, the
reason and the way out, never a traceback (docs/migrate.md#port-443).
"""

from __future__ import annotations

import ctypes
import errno

from injector.core.settings import ServeSettings, SettingsError
from injector.server.connections import bound_socket

CAP_NET_BIND_SERVICE = 10
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def listening_ports(settings: ServeSettings) -> list[tuple[str, int]]:
    """The ports `serve` binds, by flag; 0 (any port, or disabled) left out."""
    ports = [("--port", settings.port), ("--health-port", settings.health_port),
             ("--metrics-port", settings.metrics_port)]
    return [(flag, port) for flag, port in ports if port]


def allow_low_ports() -> bool:
    """Make CAP_NET_BIND_SERVICE effective when this process is permitted it (the image's file
    capability); True when it is effective afterwards. Never raises: without it, the bind fails
    and `listen_failure` says why."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
        if libc.capget(ctypes.byref(header), data) != 0:
            return False
        bit = 1 << CAP_NET_BIND_SERVICE
        if data[0].effective & bit:
            return True
        if not data[0].permitted & bit:
            return False
        data[0].effective |= bit
        return libc.capset(ctypes.byref(header), data) == 0
    except (OSError, AttributeError):  # not Linux, or a libc without capget
        return False


def check_can_listen(settings: ServeSettings) -> None:
    """Bind every port once and let go, before anything slow starts: a port that cannot be had
    stops start-up now, as one line (`SettingsError`), rather than in each forked worker."""
    for flag, port in listening_ports(settings):
        try:
            _bind_once(settings.bind_address or None, port)
        except OSError as exc:
            raise SettingsError(listen_failure(flag, port, settings.bind_address, exc)) from None


def _bind_once(host: str | None, port: int) -> None:
    """Bind as the listeners do, then close. No SO_REUSEPORT: a port some other process holds,
    even one sharing it, is taken."""
    bound_socket(host, port).close()


def listen_failure(flag: str, port: int, address: str, exc: OSError) -> str:
    """One line: which flag's port, why it failed, and what to change."""
    where = f"{flag}={port}" + (f" on {address}" if address else "")
    if exc.errno == errno.EACCES and port < 1024:
        return (f"{where}: cannot listen: permission denied. Ports below 1024 need NET_BIND_SERVICE, which the "
                f"image's file capability gives only where the container keeps that capability (capabilities.add: "
                f"[NET_BIND_SERVICE] where ALL are dropped) and allowPrivilegeEscalation is not false; or set the "
                f"pod sysctl net.ipv4.ip_unprivileged_port_start=0, or use --port=8443 with the Service's "
                f"targetPort to match (docs/migrate.md#port-443)")
    if exc.errno == errno.EADDRINUSE:
        return (f"{where}: cannot listen: address already in use; another process in this pod (or another "
                f"webhook container) holds it")
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: cannot listen: {address or 'the address'} is not an address of this pod"
    return f"{where}: cannot listen: {exc.strerror or exc}"
