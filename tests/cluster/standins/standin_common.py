"""What the two AWS stand-ins (sts.py, pod_identity_agent.py) share: the credentials they issue,
their decision log, and how they serve.

Credentials scheme (no shared state between the processes, only the `--secret`):

- AccessKeyId: ``ASIA`` + 16 random characters of the base32 alphabet (20 characters, like AWS's
  temporary keys).
- SessionToken: ``base64url(payload) "." base64url(HMAC-SHA256(secret, "session-token\\n" + payload))``
  where payload is compact JSON ``{"akid", "arn", "uid", "account", "exp"}`` (exp in epoch seconds).
  Whoever knows the secret can check that a token was issued by a stand-in, for which key, for
  which principal and until when.
- SecretAccessKey: ``base64(HMAC-SHA256(secret, "secret-access-key\\n" + akid + "\\n" + payload))``
  (44 characters). It is never stored: the STS stand-in recomputes it from the session token the
  request carries (X-Amz-Security-Token) and then checks the SigV4 signature with it.

So credentials minted by the agent stand-in verify at the STS stand-in as long as both were started
with the same `--secret`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import ssl
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def iso8601(epoch: float) -> str:
    """AWS's timestamp form: 2024-01-02T03:04:05Z."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stable_id(prefix: str, text: str, length: int = 17) -> str:
    """A deterministic IAM-style unique id (AROA…): prefix + base32 of a hash of `text`."""
    digest = hashlib.sha256(text.encode()).digest()
    return prefix + base64.b32encode(digest).decode("ascii")[:length]


@dataclass(frozen=True)
class SessionCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: int  # epoch seconds
    arn: str  # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION
    user_id: str  # AROA…:SESSION
    account: str


class CredentialIssuer:
    """Mints and verifies stand-in credentials with the shared secret (scheme in the module docstring)."""

    def __init__(self, secret: str) -> None:
        if not secret:
            raise ValueError("the credentials secret must not be empty")
        self._key = secret.encode()

    def _mac(self, label: str, *parts: str) -> bytes:
        return hmac.new(self._key, "\n".join((label, *parts)).encode(), hashlib.sha256).digest()

    def mint(self, *, arn: str, user_id: str, account: str, lifetime: int) -> SessionCredentials:
        akid = "ASIA" + "".join(secrets.choice(_B32) for _ in range(16))
        exp = int(time.time()) + lifetime
        payload = json.dumps({"akid": akid, "arn": arn, "uid": user_id, "account": account, "exp": exp},
                             separators=(",", ":"), sort_keys=True)
        token = b64url_encode(payload.encode()) + "." + b64url_encode(self._mac("session-token", payload))
        return SessionCredentials(akid, self._secret_for(akid, payload), token, exp, arn, user_id, account)

    def _secret_for(self, akid: str, payload: str) -> str:
        return base64.b64encode(self._mac("secret-access-key", akid, payload)).decode("ascii")

    def verify(self, session_token: str) -> SessionCredentials | None:
        """The credentials a session token stands for, or None when no stand-in with this secret issued it.
        Expiry is not checked here (the caller answers ExpiredToken for that)."""
        head, sep, mac = session_token.partition(".")
        if not sep:
            return None
        try:
            payload = b64url_decode(head).decode()
            given = b64url_decode(mac)
            claims = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(given, self._mac("session-token", payload)) or not isinstance(claims, dict):
            return None
        try:
            return SessionCredentials(claims["akid"], self._secret_for(claims["akid"], payload), session_token,
                                      int(claims["exp"]), claims["arn"], claims["uid"], claims["account"])
        except (KeyError, TypeError, ValueError):
            return None


class DecisionLog:
    """Every decision, as one JSON line on stderr and in a list served at GET /_standin/decisions."""

    def __init__(self, keep: int = 20000) -> None:
        self.entries: list[dict[str, Any]] = []
        self.keep = keep  # the newest ones; stderr has them all

    def record(self, **fields: Any) -> dict[str, Any]:
        entry = {"time": iso8601(time.time()), **fields}
        self.entries.append(entry)
        if len(self.entries) > self.keep:
            del self.entries[: len(self.entries) - self.keep]
        log_line(entry)
        return entry

    def routes(self) -> list[web.RouteDef]:
        async def get(_request: web.Request) -> web.Response:
            return web.json_response(self.entries)

        async def clear(_request: web.Request) -> web.Response:
            self.entries.clear()
            return web.Response(status=204)

        return [web.get("/_standin/decisions", get), web.delete("/_standin/decisions", clear)]


def log_line(entry: dict[str, Any]) -> None:
    print(json.dumps(entry, sort_keys=True), file=sys.stderr, flush=True)


class WatchedJSON:
    """A JSON file re-read whenever its mtime or size changes; a broken rewrite keeps the last good
    content (and says so on stderr)."""

    def __init__(self, path: Path, validate) -> None:
        self.path, self._validate = path, validate
        self._stamp: tuple[int, int] | None = None
        self.value = self._load()  # the first read must succeed

    def _load(self) -> Any:
        st = self.path.stat()
        value = self._validate(json.loads(self.path.read_text()))
        self._stamp = (st.st_mtime_ns, st.st_size)
        return value

    def current(self) -> Any:
        try:
            st = self.path.stat()
            if (st.st_mtime_ns, st.st_size) != self._stamp:
                self.value = self._load()
                log_line({"event": "config-reloaded", "path": str(self.path)})
        except (OSError, ValueError) as exc:
            log_line({"event": "config-reload-failed", "path": str(self.path), "error": str(exc)})
        return self.value


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def secret_from(args: argparse.Namespace) -> str:
    secret = args.secret or os.environ.get("STANDIN_SECRET", "")
    if not secret:
        raise SystemExit("a credentials secret is needed: --secret or STANDIN_SECRET")
    return secret


def serve(app: web.Application, listen: tuple[str, int], name: str,
          tls_cert: str | None = None, tls_key: str | None = None) -> int:
    """Serve until SIGTERM/SIGINT, then exit 0. Once bound, one JSON line on stderr:
    {"event": "listening", "url": …} (with the real port when 0 was asked for)."""
    ssl_context = None
    if tls_cert:
        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(tls_cert, tls_key)

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, listen[0], listen[1], ssl_context=ssl_context)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        host = f"[{listen[0]}]" if ":" in listen[0] else listen[0]
        log_line({"event": "listening", "standin": name,
                  "url": f"{'https' if ssl_context else 'http'}://{host}:{port}"})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        with contextlib.suppress(Exception):
            await runner.cleanup()

    asyncio.run(main())
    log_line({"event": "stopped", "standin": name})
    return 0
