"""End-to-end tier: a real kube-apiserver (and etcd) on 127.0.0.1, our webhook registered by URL.

See docs/e2e.md. Every test here carries the `e2e` marker (added by conftest.py).
"""
