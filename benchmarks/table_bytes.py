"""Bytes per ServiceAccount in the identity table, measured with tracemalloc (prints numbers).

Builds the table the way a sync does (`ServiceAccountSource._entry` on each object as it
arrives, kept by namespace/name, then one `_replace`) for N ServiceAccounts over 100
namespaces, one in a hundred with a role-arn annotation, and reports what the table holds once
the objects are gone.
Usage: `python benchmarks/table_bytes.py [N]`.
"""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from injector.core.settings import MutationSettings
from injector.sources.reflector import object_key
from injector.sources.serviceaccounts import ServiceAccountSource
from injector.sources.store import IdentityStore


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    store = IdentityStore(MutationSettings(), log_problems=False)
    source = ServiceAccountSource.__new__(ServiceAccountSource)  # the callbacks only, no API client
    source.store = store
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    items = {}
    for i in range(count):
        annotations = {"eks.amazonaws.com/role-arn": f"arn:aws:iam::111122223333:role/app-{i}"} if i % 100 == 0 else {}
        obj = {"metadata": {"namespace": f"team-{i % 100}", "name": f"service-account-{i}",
                            "uid": f"{i:08d}-0000-0000-0000-000000000000", "resourceVersion": str(i),
                            "annotations": annotations}}
        items[object_key(obj)] = source._entry(obj)
    source._replace(items)
    del items
    after = tracemalloc.take_snapshot()
    size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    with_role = sum(1 for e in store.tables.service_accounts.values() if e.role_arn)
    print(f"{count:,} ServiceAccounts ({with_role:,} with a role): {size / 2**20:.1f} MiB in the table, "
          f"{size / count:.0f} bytes per ServiceAccount")


if __name__ == "__main__":
    main()
