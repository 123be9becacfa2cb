# syntax=docker/dockerfile:1
# Two stages: the first builds the wheels (and may need compilers), the second only runs.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY injector ./injector
# Install into a prefix that the runtime stage copies whole: no pip, no compilers there.
RUN pip install --prefix=/install . \
    && find /install -name '__pycache__' -prune -exec rm -rf {} +

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="pod-identity-injector" \
      org.opencontainers.image.description="Kubernetes admission webhook that gives pods AWS IAM credentials" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /install /usr/local
# The Go webhook's Deployments run `/webhook --flag=…`; flags alone mean `serve` here, so
# switching a Deployment needs only a new image.
RUN ln -s /usr/local/bin/pod-identity-injector /webhook \
    && (pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true)
# Numeric non-root user (runAsNonRoot can verify it); nothing is written outside /tmp,
# so the root filesystem can be read-only (mount an emptyDir at /tmp for self-managed certs).
USER 65532:65532
EXPOSE 8443 9999
ENTRYPOINT ["pod-identity-injector"]
CMD ["serve", "--port=8443", "--tls-cert=/etc/webhook/certs/tls.crt", "--tls-key=/etc/webhook/certs/tls.key"]
