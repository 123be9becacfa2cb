# Two stages: the first installs the package into a virtualenv (and may need compilers), the
# second only runs it. No `# syntax=` line: the classic builder and BuildKit both build this
# file as it is, and BuildKit then needs no frontend image from a registry.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml ./
# A venv works on any Python base: the official image (python in /usr/local/bin, pip present)
# and Debian's own python3 (externally managed, PEP 668, no pip command) alike. Its interpreter
# is a symlink to the base's python3, which the runtime stage has at the same path.
# The dependencies go first, in a layer of their own that is rebuilt only when pyproject.toml
# changes: a stub package (and README, which the metadata names) stands in for ours while they
# install, so a change to injector/ or the README rebuilds in seconds instead of a minute.
RUN python3 -m venv /opt/venv \
    && mkdir injector && echo '__version__ = "0"' > injector/__init__.py && touch README.md \
    && /opt/venv/bin/pip install --no-cache-dir . \
    && /opt/venv/bin/pip uninstall --yes pod-identity-injector \
    && rm -r injector
COPY README.md ./
COPY injector ./injector
# pip and setuptools leave the venv once it is installed: none of them at run time. The
# bytecode pip compiled stays (+25 MB): the root filesystem is read-only, so without it every
# process start compiles kubernetes_asyncio & co. again (measured: 4.4 s instead of 0.9 s).
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
    && /opt/venv/bin/pip uninstall --yes pip setuptools wheel

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pod-identity-injector" \
      org.opencontainers.image.description="Kubernetes admission webhook that gives pods AWS IAM credentials" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/venv /opt/venv
# The Go webhook's Deployments run `/webhook --flag=…`; flags alone mean `serve` here, so
# switching a Deployment needs only a new image. The base's own pip (the official image has
# one) is not needed at run time either. The interpreter gets the file capability
# cap_net_bind_service=+p (permitted, not effective; no setcap needed): the Go webhook's
# manifests listen on 443, and the webhook makes the capability effective only for a port below
# 1024 (docs/image.md#port-443).
RUN ln -s /opt/venv/bin/pod-identity-injector /webhook \
    && (pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true) \
    && python3 -c "import os, struct; os.setxattr(os.path.realpath('/opt/venv/bin/python3'), \
'security.capability', struct.pack('<5I', 0x02000000, 1 << 10, 0, 0, 0))"
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# Numeric non-root user (runAsNonRoot can verify it); nothing is written outside /tmp,
# so the root filesystem can be read-only (mount an emptyDir at /tmp for self-managed certs).
USER 65532:65532
EXPOSE 8443 9999
ENTRYPOINT ["pod-identity-injector"]
CMD ["serve", "--port=8443", "--tls-cert=/etc/webhook/certs/tls.crt", "--tls-key=/etc/webhook/certs/tls.key"]
