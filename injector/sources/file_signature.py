"""Noticing file changes by polling, for the certificate pair and the identities file.
It reads metadata only, never the file's content."""

from __future__ import annotations

import os
from pathlib import Path

FileSignature = tuple[int, int, int]


def file_signature(path: str | Path) -> FileSignature:
    """What changes when the file, or the target of its symlinks, is replaced or edited.

    `os.stat` follows symlinks, so a Kubernetes Secret/ConfigMap volume update (an atomic
    swap of the `..data` symlink) shows up as a new inode.
    """
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)
