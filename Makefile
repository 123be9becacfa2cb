# Everything runs from a local virtualenv (.venv) that these targets create on demand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8443
METRICS_PORT ?= 9999

.PHONY: help install run certs test lint unit bench clean

help:
	@echo "make run    - generate local certificates and serve the webhook on https://127.0.0.1:$(PORT)"
	@echo "make test   - lint and run the whole test suite"
	@echo "make bench  - throughput/latency benchmark of serve (wrk) and of the planner"
	@echo "make certs  - (re)generate certs/ (CA + serving certificate for localhost/127.0.0.1)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

certs: $(STAMP)
	$(BIN)/pod-identity-injector certs --out-dir certs --dns localhost --ip 127.0.0.1 --ip ::1

run: certs
	$(BIN)/pod-identity-injector serve --port $(PORT) --metrics-port $(METRICS_PORT) \
		--bind-address 127.0.0.1 --tls-cert certs/tls.crt --tls-key certs/tls.key \
		--service-account examples/serviceaccount.yaml --log-format console

lint: $(STAMP)
	$(BIN)/ruff check injector tests benchmarks
	$(BIN)/hadolint Dockerfile

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint unit

bench: $(STAMP)
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis .bench
