"""The offline `mutate` command: the server's decision path, fed from files.
It must never grow a rule of its own: what it prints is what `serve` would answer.

It uses the same parse → resolve → decide → encode functions as `serve`, so the two can
never disagree. Bad input exits 2 with one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import random
import sys
from dataclasses import replace
from typing import Any

import jsonpatch
import orjson
import yaml

from injector.core.decision import Decision, decide
from injector.core.review import AdmissionRequest, BadReview, Envelope, encode_response, parse_review
from injector.core.settings import MutationSettings
from injector.sources.manifests import InputError, load_manifests, load_pod_identities, parse_documents, read_text
from injector.sources.store import IdentityStore


def _read_input(path: str) -> Any:
    if path == "-":
        text, path = sys.stdin.read(), "<stdin>"
    else:
        text = read_text(path)
    docs = parse_documents(text, path)
    if len(docs) != 1:
        raise InputError(path, f"expected one Pod or AdmissionReview, found {len(docs)} documents")
    return docs[0]


def request_from_document(doc: Any, path: str, namespace: str) -> tuple[Envelope, AdmissionRequest]:
    """Accept an AdmissionReview as the server would, or wrap a bare Pod in one."""
    if not isinstance(doc, dict):
        raise InputError(path, "expected a Pod or an AdmissionReview object")
    if doc.get("kind") == "AdmissionReview" or "request" in doc:
        try:
            envelope, request = parse_review(doc)
        except BadReview as exc:
            raise InputError(path, str(exc)) from None
        if isinstance(request, str):
            raise InputError(path, request)
        if not request.namespace:
            request = _with_namespace(request, namespace)
        return envelope, request
    if doc.get("kind") not in (None, "Pod"):
        raise InputError(path, f"expected a Pod or an AdmissionReview, got kind {doc.get('kind')!r}")
    if not isinstance(doc.get("spec"), dict):
        raise InputError(path, "the Pod has no spec")
    metadata = doc.get("metadata") if isinstance(doc.get("metadata"), dict) else {}
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": metadata.get("namespace") or namespace,
            "object": doc,
        },
    }
    envelope, request = parse_review(review)
    assert not isinstance(request, str)
    return envelope, request


def _with_namespace(request: AdmissionRequest, namespace: str) -> AdmissionRequest:
    return replace(request, namespace=namespace)


def build_store(args: argparse.Namespace, settings: MutationSettings) -> IdentityStore:
    """The identity inputs the command was given; problems in them are not logged here."""
    store = IdentityStore(settings, log_problems=False)
    load_manifests(store, args.service_account_files, args.config_map_file, args.namespace)
    if args.container_credentials_config:
        identities = load_pod_identities(args.container_credentials_config)
        for bad in identities.skipped:  # as `serve` logs them
            print(f"pod-identity-injector mutate: warning: {args.container_credentials_config}: {bad}", file=sys.stderr)
        store.replace_pod_identities(identities.pairs)
    return store


def render(decision: Decision, request: AdmissionRequest, envelope: Envelope, output: str) -> str:
    if output == "patch":
        return orjson.dumps(decision.operations, option=orjson.OPT_INDENT_2).decode()
    if output == "review":
        body = encode_response(envelope, decision.allowed, decision.operations, decision.message or None,
                               decision.warnings)
        return orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2).decode()
    pod = jsonpatch.apply_patch(request.pod or {}, decision.operations) if decision.operations else request.pod
    if output == "yaml":
        return yaml.safe_dump(pod, sort_keys=False, default_flow_style=False).rstrip("\n")
    return orjson.dumps(pod, option=orjson.OPT_INDENT_2).decode()


def run_mutate(args: argparse.Namespace, settings: MutationSettings) -> int:
    try:
        store = build_store(args, settings)
        envelope, request = request_from_document(_read_input(args.filename), args.filename, args.namespace)
    except InputError as exc:
        print(f"pod-identity-injector mutate: {exc}", file=sys.stderr)
        return 2
    rng = random.Random(args.jitter_seed)
    resolution = store.resolve(request.namespace, request.service_account)
    decision = decide(request, resolution, settings, rng.randint)
    print(render(decision, request, envelope, args.output))
    reason = decision.reason if not decision.message else f"{decision.reason}: {decision.message}"
    print(f"# {reason}", file=sys.stderr)
    for note in decision.plan.notes if decision.plan else ():
        print(f"# note: {note}", file=sys.stderr)
    for warning in decision.warnings:  # what `serve` sends as the review's warnings (kubectl shows them)
        print(f"# warning: {warning}", file=sys.stderr)
    return 0
