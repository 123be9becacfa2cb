"""Start-up wiring: the identity store, the TLS reloader, and the cluster connection with its
identity sources and certificate controller.
It builds and connects; it serves nothing and decides nothing.

`load_inputs` does everything that can fail because of a flag or a file, in the foreground,
before any process listens; `connect_cluster` then connects what needs the API server.
Nothing here starts a background task: the process roles in `processes` run the jobs these
objects offer, beside the app whose lifetime they share.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from injector.certificates.controller import SelfManagedCertificates
from injector.core.role_arn import compose_role_arn
from injector.core.settings import ServeSettings, SettingsError
from injector.kube.client import api_client
from injector.kube.events import ServiceAccountEvents
from injector.server.metrics import (
    count_identity_skipped,
    count_lookup_shed,
    count_service_account_event,
    mark_certificate_checked,
)
from injector.server.routes import Job
from injector.server.tls import CertificateLoadError, CertificateReloader, parse_cipher_suites, parse_min_version
from injector.sources.configmap import ConfigMapSource
from injector.sources.credentials_file import CredentialsFileSource
from injector.sources.manifests import InputError, load_manifests
from injector.sources.serviceaccounts import ServiceAccountSource
from injector.sources.store import IdentityStore

log = structlog.get_logger(__name__)


@dataclass
class ServingInputs:
    """What `serve` validated before listening: settings as used, store, sources from files, TLS."""

    settings: ServeSettings
    store: IdentityStore
    credentials: CredentialsFileSource | None
    tls: CertificateReloader


def load_inputs(settings: ServeSettings) -> ServingInputs:
    """Load every file and check every TLS flag once; any problem is a `SettingsError`."""
    settings = self_managed_paths(settings)
    try:
        store, credentials = build_store(settings)
        tls = build_tls(settings)
        if settings.cert_mode == "files":
            tls.load()
    except (InputError, CertificateLoadError, OSError, ValueError) as exc:
        raise SettingsError(str(exc)) from None
    mutation = settings.mutation
    if mutation.compose_role_arn:
        log.info("role names are composed into role ARNs", account_id=mutation.aws_account_id,
                 partition=mutation.aws_partition, example=compose_role_arn("NAME", mutation))
    return ServingInputs(settings, store, credentials, tls)


def self_managed_paths(settings: ServeSettings) -> ServeSettings:
    """Self-managed: the serving pair lives in --cert-dir (a fresh temporary one by default)."""
    if settings.cert_mode != "self-managed":
        return settings
    cert_dir = settings.cert_dir or tempfile.mkdtemp(prefix="injector-certs-")
    return replace(settings, cert_dir=cert_dir, tls_cert=os.path.join(cert_dir, "tls.crt"),
                   tls_key=os.path.join(cert_dir, "tls.key"))


def build_store(settings: ServeSettings) -> tuple[IdentityStore, CredentialsFileSource | None]:
    """The store, filled from every file source given; a bad file stops start-up."""
    store = IdentityStore(settings.mutation, settings.service_account_lookup_grace_period)
    if settings.config_map_file and settings.watch_config_map:
        raise SettingsError("--config-map FILE and --watch-config-map are exclusive: choose one source")
    load_manifests(store, settings.service_account_files, settings.config_map_file)
    credentials = None
    if settings.watch_container_credentials_config:
        credentials = CredentialsFileSource(settings.watch_container_credentials_config, store,
                                           skipped=count_identity_skipped)
        credentials.load()
    if store.tables.service_accounts:
        log.info("service accounts loaded", count=len(store.tables.service_accounts),
                 with_role=sum(1 for e in store.tables.service_accounts.values() if e.role_arn))
    return store, credentials


def build_tls(settings: ServeSettings) -> CertificateReloader:
    try:
        min_version = parse_min_version(settings.tls_min_version)
        ciphers = parse_cipher_suites(settings.tls_cipher_suites)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    return CertificateReloader(settings.tls_cert, settings.tls_key, min_version, ciphers)


def uses_cluster(settings: ServeSettings) -> bool:
    """ServiceAccounts come from the API server unless manifests were given; the ConfigMap on request."""
    return not settings.service_account_files or settings.watch_config_map


@dataclass
class ClusterConnection:
    """The API server connection and what runs against it (nothing at all without a cluster)."""

    api: Any = None
    sources: list[ServiceAccountSource | ConfigMapSource] = field(default_factory=list)
    events: ServiceAccountEvents | None = None
    certificates: SelfManagedCertificates | None = None

    def _clients(self) -> list[Any]:
        """Everything that calls the API server through `api`."""
        return [*self.sources, *(x for x in (self.events, self.certificates) if x is not None)]

    def jobs(self) -> list[Job]:
        """The loops to run for as long as the process serves: watches, Events, certificate checks."""
        return [client.run for client in self._clients()]

    def sync_jobs(self) -> list[Job]:
        """The loops that run during the initial sync: the watches and the Events they lead to."""
        return [client.run for client in (*self.sources, self.events) if client is not None]

    async def close(self) -> None:
        if self.api is not None:
            await self.api.close()

    async def reconnect(self, settings: ServeSettings) -> None:
        """A new client for the same sources and controller: the supervisor closes the first one
        with the event loop of its initial sync, before it forks (injector/server/processes.py)."""
        if self.api is None:
            return
        self.api = await api_client(settings.kubeconfig, settings.kube_api)
        for client in self._clients():
            client.reconnect(self.api)


async def connect_cluster(settings: ServeSettings, store: IdentityStore, *, watch: bool,
                          manage_certificates: bool) -> ClusterConnection:
    """Connect what needs the API server: identity watches (`watch`) and, in self-managed mode,
    the certificate controller (`manage_certificates`), which has a certificate on disk and
    its caBundle registered before this returns, so a listener always has a certificate."""
    watch = watch and uses_cluster(settings)
    certificates = manage_certificates and settings.cert_mode == "self-managed"
    if not (watch or certificates):
        return ClusterConnection()
    cluster = ClusterConnection(await api_client(settings.kubeconfig, settings.kube_api))
    if watch and not settings.service_account_files:
        cluster.sources.append(ServiceAccountSource(cluster.api, store, shed=count_lookup_shed))
        if settings.service_account_events:  # beside the watch (docs/reference.md#service-account-events)
            cluster.events = ServiceAccountEvents(cluster.api, settings.mutation, counted=count_service_account_event)
            store.problem_listeners.append(cluster.events.notice)
    if watch and settings.watch_config_map:
        cluster.sources.append(
            ConfigMapSource(cluster.api, store, settings.namespace))
    if certificates:
        cluster.certificates = SelfManagedCertificates(cluster.api, settings, checked=mark_certificate_checked)
        log.info("self-managed certificate: waiting for the Secret and caBundle",
                 secret=f"{settings.namespace}/{settings.tls_secret}", configuration=settings.webhook_configuration)
        await cluster.certificates.wait_until_ready()
    log.info("connected to the API server", api=cluster.api.configuration.host,
             sources=[type(job.__self__).__name__ for job in cluster.jobs()])
    return cluster
