"""`pod-identity-injector oidc …`: what each subcommand prints and how it exits.
Printing and the exit code only; the checks are `injector.oidc`'s.

Exit 0 when everything holds, 1 when a check fails (what STS or IAM would reject), 2 when
the command could not run (bad flags, unreadable files, an unreachable API server); a
failure is one line on stderr. Everything heavier than argparse is imported here, only when
an `oidc` subcommand runs, so `serve` never loads it. The user's side of each step is
docs/self-hosted.md#publish, docs/self-hosted.md#thumbprint and docs/self-hosted.md#verify.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from injector.oidc.documents import (
    DISCOVERY_PATH,
    ChainError,
    IssuerMismatch,
    OidcError,
    Publication,
    TokenRejected,
    check_issuer,
    create_provider_command,
    discovery_url,
    jwks_from_keys,
    load_public_keys,
    provider_host_path,
    publication_from_cluster,
)
from injector.oidc.fetch import (
    FetchError,
    UntrustedChain,
    client_context,
    cluster_documents,
    host_and_port,
    pod_token,
    thumbprint,
    trust_store_name,
    verify_published,
)

OK, FAILED, UNUSABLE = 0, 1, 2


def _say(command: str, message: str, code: int) -> int:
    print(f"pod-identity-injector: oidc {command}: {message}", file=sys.stderr)
    return code


def run_oidc(args: argparse.Namespace) -> int:
    run = {"publish": run_publish, "thumbprint": run_thumbprint, "verify": run_verify}[args.oidc_command]
    return run(args)


# -- publish -------------------------------------------------------------------------------------
def run_publish(args: argparse.Namespace) -> int:
    try:
        issuer = check_issuer(args.issuer)
        publication = _publication_from_files(issuer, args.key_files) if args.key_files else None
    except OidcError as exc:
        return _say("publish", str(exc), UNUSABLE)
    if publication is None:
        try:
            discovery, jwks = asyncio.run(cluster_documents(args.kubeconfig, args.kube_api))
        except FetchError as exc:
            return _say("publish", str(exc), UNUSABLE)
        try:
            publication = publication_from_cluster(issuer, discovery, jwks)
        except IssuerMismatch as exc:
            return _say("publish", str(exc), FAILED)
        except OidcError as exc:
            return _say("publish", str(exc), UNUSABLE)
        if discovery.get("jwks_uri") != publication.jwks_uri:
            print(f"note: the API server's own discovery document names jwks_uri {discovery.get('jwks_uri')!r}; "
                  f"add --service-account-jwks-uri={publication.jwks_uri} to kube-apiserver so both agree",
                  file=sys.stderr)
    try:
        written = _write(Path(args.out), publication)
    except OSError as exc:
        return _say("publish", f"--out {args.out}: {exc}", UNUSABLE)
    kids = ", ".join(k.get("kid", "?") for k in publication.jwks["keys"])
    for path in written:
        print(f"wrote {path}")
    print(f"keys: {kids}")
    print(f"upload the contents of {args.out} so that {discovery_url(issuer)} serves {DISCOVERY_PATH} and "
          f"{publication.jwks_uri} serves {publication.jwks_path} (Content-Type: application/json), then:")
    print(f"  pod-identity-injector oidc thumbprint {issuer}")
    print(f"  {create_provider_command(issuer, 'THUMBPRINT')}")
    print(f"  pod-identity-injector oidc verify --issuer {issuer} --pod NAME -n NAMESPACE")
    return OK


def _publication_from_files(issuer: str, key_files: list[str]) -> Publication:
    keys = []
    for name in key_files:
        try:
            pem = Path(name).read_bytes()
        except OSError as exc:
            raise OidcError(f"--key {name}: {exc.strerror or exc}") from None
        keys += load_public_keys(pem, f"--key {name}")
    return Publication(issuer, jwks_from_keys(keys))


def _write(out: Path, publication: Publication) -> list[Path]:
    """Each file replaced atomically, so a sync running meanwhile never uploads half a document."""
    written = []
    for relative, content in publication.files().items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(content)
        os.replace(partial, path)
        written.append(path)
    return written


# -- thumbprint ----------------------------------------------------------------------------------
def run_thumbprint(args: argparse.Namespace) -> int:
    url = args.url if "://" in args.url else f"https://{args.url}"
    try:
        host, _ = host_and_port(url)
        if not args.insecure:
            client_context(args.ca_file)
        result = thumbprint(url, ca_file=args.ca_file, verify=not args.insecure)
    except UntrustedChain as exc:
        return _say("thumbprint", f"{exc} (checked against {trust_store_name(args.ca_file)}). A private CA: give "
                                  "it with --ca-file FILE. Otherwise something between this machine and the host "
                                  "may be serving its own certificate: do not register a thumbprint of it "
                                  "(--insecure takes one without this check)", FAILED)
    except ChainError as exc:
        return _say("thumbprint", str(exc), FAILED)
    except OidcError as exc:
        return _say("thumbprint", str(exc), UNUSABLE)
    print(result.value)
    print(create_provider_command(url.rstrip("/"), result.value, (args.audience,)))
    if not result.trusted_by:
        warning = (f"the chain {host} served was NOT checked against any trust store (--insecure): anyone "
                   "between this machine and the host could have served it; confirm the thumbprint another way "
                   "before registering it")
        print(f"# WARNING: {warning}")
        print(f"pod-identity-injector: oidc thumbprint: warning: {warning}", file=sys.stderr)
    return OK


# -- verify --------------------------------------------------------------------------------------
def run_verify(args: argparse.Namespace) -> int:
    try:
        issuer = check_issuer(args.issuer)
        client_context(args.ca_file)
    except OidcError as exc:
        return _say("verify", str(exc), UNUSABLE)
    if args.token:
        try:
            token = (sys.stdin.read() if args.token == "-" else Path(args.token).read_text()).strip()
        except (OSError, UnicodeDecodeError) as exc:
            return _say("verify", f"--token {args.token}: {exc}", UNUSABLE)
        if not token:
            return _say("verify", f"--token {args.token} is empty", UNUSABLE)
    else:
        try:
            token = asyncio.run(pod_token(args.namespace, args.pod, args.kubeconfig, args.kube_api))
        except FetchError as exc:
            return _say("verify", str(exc), UNUSABLE)
    try:
        verified = asyncio.run(verify_published(token, issuer, args.audience, args.ca_file))
    except TokenRejected as exc:
        return _say("verify", f"{exc.check}: {exc}", FAILED)
    except OidcError as exc:  # the published documents cannot be fetched: STS could not either
        return _say("verify", f"published documents: {exc}", FAILED)
    provider = provider_host_path(issuer)
    print(f"ok: the token of {verified.subject} verifies against {issuer} as STS checks it "
          f"(key {verified.header.get('kid')}, {verified.header.get('alg')}, audience {args.audience}, "
          f"expires {verified.expires_at:%Y-%m-%dT%H:%M:%SZ})")
    print(f'trust policy condition: "StringEquals": {{"{provider}:sub": "{verified.subject}", '
          f'"{provider}:aud": "{args.audience}"}}')
    return OK
