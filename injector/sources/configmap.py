"""The `pod-identity-webhook` ConfigMap (`--watch-config-map`), watched in `--namespace`.
It writes only to the store; lookups never wait on the watch.

Only that one object is watched (field selector on its name). An invalid `config` keeps
the previous mapping and logs why; deleting the ConfigMap clears its mappings (the Go
webhook kept them until restart).
"""

from __future__ import annotations

from typing import Any

import structlog
from kubernetes_asyncio import client

from injector.core.identity import EMPTY_CONFIG_MAP
from injector.sources.manifests import CONFIG_MAP_NAME, InputError, config_map_mapping
from injector.sources.reflector import Reflector
from injector.sources.store import IdentityStore

log = structlog.get_logger(__name__)
SOURCE = "configmap"


class ConfigMapSource:
    def __init__(self, api: client.ApiClient, store: IdentityStore, namespace: str) -> None:
        self.store = store
        self.namespace = namespace
        core = client.CoreV1Api(api)
        self.reflector = Reflector(
            SOURCE, core.list_namespaced_config_map, on_replace=self._replace, on_event=self._event,
            on_synced=lambda: store.mark_ready(SOURCE),
            namespace=namespace, field_selector=f"metadata.name={CONFIG_MAP_NAME}")
        store.expect(SOURCE)
        store.refill.append(self.reflector.relist)

    def reconnect(self, api: client.ApiClient) -> None:
        """Carry on with another client; the watch resumes where it stopped."""
        self.reflector.call = client.CoreV1Api(api).list_namespaced_config_map

    def _apply(self, obj: dict[str, Any]) -> None:
        where = f"configmap {self.namespace}/{CONFIG_MAP_NAME}"
        try:
            mapping = config_map_mapping(obj, self.store.settings, where)
        except InputError as exc:
            log.error("config map invalid; keeping the previous mapping", error=str(exc))
            return
        self.store.replace_config_map(mapping)
        log.info("config map mapping loaded", configmap=where, entries=len(mapping))

    def _replace(self, items: dict[str, dict[str, Any]]) -> None:
        if items:  # one at most: the field selector names it
            self._apply({"kind": "ConfigMap", **next(iter(items.values()))})
        else:
            self.store.replace_config_map(EMPTY_CONFIG_MAP)

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "DELETED":
            self.store.replace_config_map(EMPTY_CONFIG_MAP)
            log.info("config map deleted; its mappings are cleared", namespace=self.namespace)
        else:
            self._apply({"kind": "ConfigMap", **obj})

    async def run(self) -> None:
        await self.reflector.run()
