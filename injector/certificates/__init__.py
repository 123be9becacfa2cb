"""Certificates: a private CA and serving certificates (`certs`), the renewal policy, and the
self-managed controller that keeps the Secret and the caBundle in step. Serving TLS is the
server's."""
