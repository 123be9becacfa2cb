"""CPU of one initial sync in this process, without the network (prints numbers).

The ServiceAccount sync as `serve` runs it (`kube.watch_events` splitting lines and decoding
events, the `Reflector`, `ServiceAccountSource._entry` on each object, one `_replace` into the
`IdentityStore`) on N ServiceAccounts made the way `benchmarks/scale.py` makes them (100
namespaces, one in a hundred with a role-arn annotation and its managedFields), fed as the
API server sends them:

- watch-list: ADDED events then the initial-events-end bookmark, in 4 KiB chunks (the median
  chunk aiohttp hands over from a local kube-apiserver);
- list: one `...List` response, as the API server answers `resourceVersion=0` from its watch
  cache.

Only the client's share of a sync: at 100k ServiceAccounts the API server's own sending takes
longer than this on the same cores (docs/performance.md#ready-time). Best of --rounds.
Usage: `python benchmarks/sync_path.py [--count 100000] [--rounds 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import structlog
from bench import interpreter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from injector.core.settings import MutationSettings
from injector.sources.serviceaccounts import ServiceAccountSource
from injector.sources.store import IdentityStore

CHUNK = 4096
ROLE_ANNOTATION = "eks.amazonaws.com/role-arn"


def service_account(index: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": f"sa-{index}", "namespace": f"scale-{index % 100}", "uid": str(uuid.uuid4()),
                                "resourceVersion": str(300 + index), "creationTimestamp": "2026-12-01T22:14:14Z"}
    if index % 100 == 0:
        metadata["annotations"] = {ROLE_ANNOTATION: f"arn:aws:iam::111122223333:role/scale-{index}"}
        metadata["managedFields"] = [{"manager": "unknown", "operation": "Update", "apiVersion": "v1",
                                      "time": "2026-12-01T22:14:14Z", "fieldsType": "FieldsV1", "fieldsV1": {
                                          "f:metadata": {"f:annotations": {".": {}, f"f:{ROLE_ANNOTATION}": {}}}}}]
    return {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": metadata}


class Response:
    """What kubernetes-asyncio returns with `_preload_content=False`: a body to read, or a stream
    (`content.iter_any()`) of chunks."""

    status = 200

    def __init__(self, body: bytes, chunks: list[bytes]) -> None:
        self.body, self.chunks = body, chunks
        self.content = self

    async def iter_any(self):
        for chunk in self.chunks:
            yield chunk

    async def read(self) -> bytes:
        return self.body

    def release(self) -> None:
        pass


def responses(count: int) -> tuple[Response, Response]:
    objects = [service_account(i) for i in range(count)]
    version = str(300 + count)
    stream = b"".join(orjson.dumps({"type": "ADDED", "object": obj}) + b"\n" for obj in objects)
    stream += orjson.dumps({"type": "BOOKMARK", "object": {"kind": "ServiceAccount", "apiVersion": "v1", "metadata": {
        "resourceVersion": version, "annotations": {"k8s.io/initial-events-end": "true"}}}}) + b"\n"
    listing = orjson.dumps({"kind": "ServiceAccountList", "apiVersion": "v1", "metadata": {"resourceVersion": version},
                            "items": objects})
    return (Response(b"", [stream[i:i + CHUNK] for i in range(0, len(stream), CHUNK)]), Response(listing, []))


def one_sync(response: Response, watch_list: bool, count: int) -> float:
    """CPU seconds from the first call to the table holding every ServiceAccount."""
    store = IdentityStore(MutationSettings())

    async def call(watch: bool = False, **params: Any) -> Response:
        if watch and not params.get("send_initial_events"):
            await asyncio.Event().wait()  # the watch after the sync: the server keeps it open
        return response

    source = ServiceAccountSource(object(), store)  # its own wiring; the API call replaced below
    source.reflector.call, source.reflector.watch_list = call, watch_list

    async def main() -> float:
        started = time.process_time()
        task = asyncio.create_task(source.run())
        while store.waiting_for:
            await asyncio.sleep(0)
            if task.done():
                raise RuntimeError(f"the sync failed: {task.exception()!r}")
        took = time.process_time() - started
        task.cancel()
        return took

    took = asyncio.run(main())
    assert len(store.tables.service_accounts) == count, len(store.tables.service_accounts)
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # no log output in the timing
    stream, listing = responses(args.count)
    print(f"{args.count:,} ServiceAccounts; {interpreter()}")
    for name, response, watch_list, size in (("watch-list", stream, True, sum(map(len, stream.chunks))),
                                             ("list", listing, False, len(listing.body))):
        best = min(one_sync(response, watch_list, args.count) for _ in range(args.rounds))
        print(f"{name}: {size / 2**20:.1f} MiB; best of {args.rounds}: {best:.3f} s CPU, "
              f"{best / args.count * 1e6:.1f} µs per ServiceAccount")


if __name__ == "__main__":
    main()
