"""What `doctor` and `audit` read from a live cluster, turned into `doctor.Case`s.
Reads only: it never writes to the cluster, and a read it may not do is a note, never a guess.

The pod, its ServiceAccount and namespace; the MutatingWebhookConfiguration that should send
it to us, that webhook's Service endpoints, TLS Secret and flags (from its Deployment's
container args, parsed by our own parser, so the planner runs with the webhook's settings);
the cluster's issuer; and, for a mutated pod, a token through TokenRequest checked against
what the issuer publishes. A read that is forbidden is skipped with a note, never guessed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import socket
import ssl
import urllib.parse
from dataclasses import dataclass, field, replace
from typing import Any

from kubernetes_asyncio import client

from injector.core.flags import parse_serve_flags, settings_from_args
from injector.core.pod import mapping, spec, token_source, volumes_of
from injector.core.settings import WEB_IDENTITY_VOLUME_NAME, MutationSettings
from injector.diagnostics.doctor import Case, TokenCheck, WebhookView
from injector.diagnostics.webhook_config import ca_bundle_problem, intercepts_pod_creation, selector_matches
from injector.kube.client import KubeError, api_client, call_json
from injector.oidc.documents import OidcError, TokenRejected
from injector.oidc.fetch import FetchError, pod_token, verify_published
from injector.sources.manifests import InputError, config_map_mapping

CONNECT_TIMEOUT = 3.0


class LiveError(Exception):
    """The cluster cannot be read (unreachable, the pod does not exist): exit 2."""


class LiveCluster:
    """Raw JSON reads through kubernetes_asyncio; 404 is None, 403 is None plus a note."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.admission = client.AdmissionregistrationV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.notes: list[str] = []

    async def get(self, call: Any, *args: Any, what: str, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return await call_json(call, *args, **kwargs)
        except KubeError as exc:
            if exc.status == 404:
                return None
            if exc.status in (401, 403):
                self.notes.append(f"cannot read {what}: {exc}")
                return None
            raise LiveError(f"{what}: {exc}") from None
        except Exception as exc:  # aiohttp connection and TLS errors
            raise LiveError(f"{what} from the API server {self.api.configuration.host}: "
                            f"{type(exc).__name__}: {exc}") from None


async def connect(kubeconfig: str, kube_api: str) -> Any:
    try:
        return await api_client(kubeconfig, kube_api)
    except Exception as exc:  # kubeconfig loading raises many kinds; all mean "cannot reach"
        raise LiveError(f"cannot configure the API client ({kubeconfig or 'default kubeconfig'}): {exc}") from None


# -- the webhook -----------------------------------------------------------------------------------
def choose_webhook(configurations: list[dict[str, Any]], preferred: str, namespace_labels: dict[str, str] | None,
                   ) -> tuple[str, dict[str, Any]] | None:
    """Our webhook among the registered ones: in `preferred` when named, else one whose
    configuration, webhook or Service is called pod-identity…; the one selecting the namespace first."""
    candidates = []
    for configuration in configurations:
        name = mapping(configuration.get("metadata")).get("name", "")
        for hook in configuration.get("webhooks") or []:
            service = mapping(mapping(hook.get("clientConfig")).get("service")).get("name", "")
            ours = name == preferred if preferred else any(
                "pod-identity" in str(n) for n in (name, hook.get("name", ""), service))
            if ours and intercepts_pod_creation(hook):
                candidates.append((name, hook))
    if not candidates:
        return None
    def rank(candidate: tuple[str, dict[str, Any]]) -> tuple[bool, bool]:
        selected = namespace_labels is None or selector_matches(candidate[1].get("namespaceSelector"),
                                                                namespace_labels)[0]
        return not selected, candidate[0] != "pod-identity-webhook"

    return min(candidates, key=rank)


def parse_webhook_args(command: list[str]) -> argparse.Namespace:
    """The webhook's flags from its container's command and args (`serve …`, `/webhook
    --flag=…` or bare flags), parsed exactly as the webhook parses them."""
    first = next((i for i, a in enumerate(command) if a.startswith("-")), len(command))
    return parse_serve_flags(command[first:])


@dataclass
class WebhookFacts:
    view: WebhookView | None
    searched: bool
    settings: MutationSettings | None = None
    config_map_namespace: str = ""
    flags_from: str = ""
    notes: list[str] = field(default_factory=list)


async def webhook_facts(cluster: LiveCluster, shared: SharedReads,
                        namespace_labels: dict[str, str] | None) -> WebhookFacts:
    """The webhook that would see a pod in a namespace with these labels, and what is wrong with
    it. The configurations are listed once per command and each webhook checked once: every
    namespace has labels of its own (kubernetes.io/metadata.name), but few webhooks."""
    listed = await shared.get(cluster, "MutatingWebhookConfigurations",
                              cluster.admission.list_mutating_webhook_configuration)
    if listed is None:
        return WebhookFacts(None, False)
    chosen = choose_webhook(listed.get("items") or [], shared.preferred, namespace_labels)
    if chosen is None:
        return WebhookFacts(None, True)
    key = f"{chosen[0]}/{chosen[1].get('name')}"
    if key not in shared.facts:
        shared.facts[key] = await _checked_webhook(cluster, *chosen)
    return shared.facts[key]


async def _checked_webhook(cluster: LiveCluster, name: str, hook: dict[str, Any]) -> WebhookFacts:
    client = mapping(hook.get("clientConfig"))
    problems: list[tuple[str, str]] = []
    facts = WebhookFacts(None, True)
    if client.get("url"):
        problem = await asyncio.to_thread(_url_problem, str(client["url"]), str(client.get("caBundle") or ""))
        if problem:
            problems.append(problem)
        facts.notes.append("the webhook is registered by URL: its flags are not readable; the command line's are used")
    elif client.get("service"):
        service = mapping(client["service"])
        problems += await _service_problems(cluster, service, str(client.get("caBundle") or ""), facts)
        if facts.settings is None:
            facts.notes.append("the webhook's Deployment was not found: the command line's flags are used")
    facts.view = WebhookView(name, hook, tuple(problems), facts.flags_from)
    return facts


def _url_problem(url: str, ca_bundle: str) -> tuple[str, str] | None:
    """Connect to a URL webhook as the API server would: with the caBundle as the only trust."""
    parts = urllib.parse.urlsplit(url)
    host, port = parts.hostname or "", parts.port or 443
    context = ssl.create_default_context()
    if ca_bundle:
        context = ssl.create_default_context(cadata=base64.b64decode(ca_bundle).decode(errors="replace"))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return None
    except ssl.SSLCertVerificationError as exc:
        return "webhook-ca-mismatch", f"the webhook at {url} serves a certificate its caBundle does not verify: " \
                                      f"{exc.verify_message}"
    except (OSError, ssl.SSLError) as exc:
        return "webhook-unreachable", f"the webhook at {url} does not answer: {exc}"


async def _service_problems(cluster: LiveCluster, service_ref: dict[str, Any], ca_bundle: str,
                            facts: WebhookFacts) -> list[tuple[str, str]]:
    namespace, name = str(service_ref.get("namespace", "")), str(service_ref.get("name", ""))
    service = await cluster.get(cluster.core.read_namespaced_service, name, namespace,
                                what=f"service {namespace}/{name}")
    if service is None:
        return [("webhook-no-endpoints", f"the webhook's Service {namespace}/{name} does not exist (or cannot be "
                 "read): the API server cannot call it")]
    problems = []
    ready = await _ready_endpoints(cluster, namespace, name)
    if ready == 0:
        problems.append(("webhook-no-endpoints", f"the webhook's Service {namespace}/{name} has no ready endpoints: "
                         "the API server cannot call it"))
    selector = mapping(mapping(service.get("spec")).get("selector"))
    deployments = await cluster.get(cluster.apps.list_namespaced_deployment, namespace,
                                    what=f"deployments in {namespace}")
    for deployment in (deployments or {}).get("items") or []:
        template = mapping(mapping(deployment.get("spec")).get("template"))
        labels = mapping(mapping(template.get("metadata")).get("labels"))
        if not selector or not selector.items() <= labels.items():
            continue
        pod_spec = mapping(template.get("spec"))
        container = next(iter(pod_spec.get("containers") or []), {})
        command = [*(container.get("command") or [])[1:], *(container.get("args") or [])]
        deployment_name = f"{namespace}/{deployment['metadata']['name']}"
        try:
            # Not cli.parser.mutation_settings: that asks this machine's EC2 instance metadata for an
            # account the webhook's flags leave out, which says nothing about the webhook's.
            flags = parse_webhook_args([str(a) for a in command])
            facts.settings = settings_from_args(MutationSettings, flags)
        except (SystemExit, ValueError) as exc:
            facts.notes.append(f"the webhook's args in deployment {deployment_name} do not parse ({exc}); "
                               "the command line's flags are used")
        else:
            facts.flags_from = f"deployment {deployment_name}"
            facts.config_map_namespace = flags.namespace if flags.watch_config_map else ""
        problem = await _secret_problem(cluster, namespace, name, pod_spec, ca_bundle)
        if problem:
            problems.append(problem)
        break
    return problems


async def _ready_endpoints(cluster: LiveCluster, namespace: str, name: str) -> int | None:
    slices = await cluster.get(cluster.discovery.list_namespaced_endpoint_slice, namespace,
                               label_selector=f"kubernetes.io/service-name={name}", what=f"endpointslices of {name}")
    items = (slices or {}).get("items") or []
    if items:
        return sum(1 for s in items for e in s.get("endpoints") or []
                   if mapping(e.get("conditions")).get("ready") is not False)
    endpoints = await cluster.get(cluster.core.read_namespaced_endpoints, name, namespace,
                                  what=f"endpoints of {namespace}/{name}")
    if endpoints is None and slices is None:
        return None
    return sum(len(subset.get("addresses") or []) for subset in (endpoints or {}).get("subsets") or [])


async def _secret_problem(cluster: LiveCluster, namespace: str, service: str, pod_spec: dict[str, Any],
                          ca_bundle: str) -> tuple[str, str] | None:
    for volume in pod_spec.get("volumes") or []:
        secret_name = mapping(volume.get("secret")).get("secretName")
        if not secret_name:
            continue
        secret = await cluster.get(cluster.core.read_namespaced_secret, secret_name, namespace,
                                   what=f"secret {namespace}/{secret_name}")
        certificate = mapping((secret or {}).get("data")).get("tls.crt")
        if not certificate:
            continue
        names = (f"{service}.{namespace}.svc",)
        problem = ca_bundle_problem(ca_bundle, base64.b64decode(certificate), names)
        return ("webhook-ca-mismatch", f"secret {namespace}/{secret_name}: {problem}") if problem else None
    return None


# -- the pod ---------------------------------------------------------------------------------------
async def live_case(args: argparse.Namespace, settings: MutationSettings) -> Case:
    api = await connect(args.kubeconfig, args.kube_api)
    async with api:
        cluster = LiveCluster(api)
        namespace, name = args.namespace, args.pod
        pod = await cluster.get(cluster.core.read_namespaced_pod, name, namespace, what=f"pod {namespace}/{name}")
        if pod is None:
            raise LiveError(f"pod {namespace}/{name} not found (or not readable)")
        shared = SharedReads(settings, {}, args.webhook_configuration or "")
        case = await case_for(cluster, shared, pod, namespace)
        issuer = args.issuer or await _cluster_issuer(cluster)
        case = replace(case, issuer=issuer)
        if issuer and _has_web_identity(pod):
            case = replace(case, token=await _token_check(args, pod, issuer))
    return replace(case, notes=(*case.notes, *cluster.notes))


@dataclass
class SharedReads:
    """What every pod of one command shares: the webhook, its settings, the ConfigMap."""

    settings: MutationSettings
    facts: dict[str, WebhookFacts]
    preferred: str
    objects: dict[str, Any] = field(default_factory=dict)

    async def get(self, cluster: LiveCluster, key: str, call: Any, *args: Any) -> Any:
        """A read shared by every pod of the command (a ServiceAccount, a namespace)."""
        if key not in self.objects:
            self.objects[key] = await cluster.get(call, *args, what=key)
        return self.objects[key]


async def case_for(cluster: LiveCluster, shared: SharedReads, pod: dict[str, Any], namespace: str) -> Case:
    """One pod's Case; the webhook facts are read once per webhook (`webhook_facts`)."""
    sa_name = mapping(pod.get("spec")).get("serviceAccountName") or "default"
    account = await shared.get(cluster, f"serviceaccount {namespace}/{sa_name}",
                               cluster.core.read_namespaced_service_account, sa_name, namespace)
    ns = await shared.get(cluster, f"namespace {namespace}", cluster.core.read_namespace, namespace)
    labels = mapping(mapping((ns or {}).get("metadata")).get("labels")) if ns is not None else None
    facts = await webhook_facts(cluster, shared, labels)
    settings = facts.settings or shared.settings
    config_map = None
    if facts.config_map_namespace:
        key = f"configmap {facts.config_map_namespace}"
        if key not in shared.objects:
            shared.objects[key] = await _config_map(cluster, facts.config_map_namespace, settings)
        config_map = shared.objects[key]
    kwargs = {"config_map": config_map} if config_map is not None else {}
    return Case(pod, namespace, account, settings, live=True, namespace_labels=labels, webhook=facts.view,
                webhook_searched=facts.searched, notes=tuple(facts.notes), **kwargs)


async def _config_map(cluster: LiveCluster, namespace: str, settings: MutationSettings) -> Any:
    manifest = await cluster.get(cluster.core.read_namespaced_config_map, "pod-identity-webhook", namespace,
                                 what=f"configmap {namespace}/pod-identity-webhook")
    if manifest is None:
        return None
    try:
        return config_map_mapping({**manifest, "kind": "ConfigMap"}, settings, f"configmap {namespace}")
    except InputError as exc:
        cluster.notes.append(str(exc))
        return None


async def _cluster_issuer(cluster: LiveCluster) -> str:
    discovery = await cluster.get(client.WellKnownApi(cluster.api).get_service_account_issuer_open_id_configuration,
                                  what="/.well-known/openid-configuration")
    return str((discovery or {}).get("issuer") or "")


def _has_web_identity(pod: dict[str, Any]) -> bool:
    return token_source(volumes_of(spec(pod)).get(WEB_IDENTITY_VOLUME_NAME)) is not None


async def _token_check(args: argparse.Namespace, pod: dict[str, Any], issuer: str) -> TokenCheck:
    """A token as the kubelet would mint it, checked against what the issuer publishes."""
    audience = (token_source(volumes_of(spec(pod)).get(WEB_IDENTITY_VOLUME_NAME)) or {}).get("audience", "")
    meta = mapping(pod.get("metadata"))
    try:
        token = await pod_token(meta.get("namespace", ""), meta.get("name", ""), args.kubeconfig, args.kube_api)
    except FetchError as exc:
        return TokenCheck(False, "token-request", str(exc))
    try:
        verified = await verify_published(token, issuer, audience, args.ca_file)
    except TokenRejected as exc:
        return TokenCheck(False, exc.check, str(exc))
    except OidcError as exc:
        return TokenCheck(False, "discovery", f"the issuer's documents cannot be fetched as STS would: {exc}")
    return TokenCheck(True, "", f"a token as the pod gets it verifies against {issuer} (key "
                                f"{verified.header.get('kid')}, audience {audience})")
