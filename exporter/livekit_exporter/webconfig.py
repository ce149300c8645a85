"""`--web.config.file`: TLS and basic auth for the exporter's own endpoints, in the format of the
Prometheus exporter-toolkit, so one file serves node_exporter and this exporter alike:

    tls_server_config:
      cert_file: /etc/livekit-exporter/tls.crt
      key_file: /etc/livekit-exporter/tls.key
      client_auth_type: RequireAndVerifyClientCert   # optional: mutual TLS
      client_ca_file: /etc/livekit-exporter/clients-ca.crt
      min_version: TLS12                              # TLS10 .. TLS13
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

Basic auth guards every endpoint except the webhook and events paths: LiveKit cannot send basic
auth with its webhooks, and both carry their own stronger authentication (a signed JWT, a bearer
token). bcrypt is slow on purpose; a verified (user, password) pair is remembered so a scrape does
not pay for it each time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import secrets
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import yaml
from aiohttp import web

from .config import ConfigError

CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
_TLS_KEYS = {"cert_file", "key_file", "client_auth_type", "client_ca_file", "min_version", "max_version"}
_TOP_KEYS = {"tls_server_config", "basic_auth_users", "http_server_config"}


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)


def load(path: str) -> WebConfig:
    """Reads and checks a web configuration file; ConfigError lists every problem."""
    where = f"{path}"
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
    except OSError as e:
        raise ConfigError([f"{where}: cannot read the web configuration file: {e.strerror}"]) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise ConfigError([f"{where}{':' + str(mark.line + 1) if mark else ''}: not valid YAML"]) from None
    problems: list[str] = []
    if not isinstance(raw, dict):
        raise ConfigError([f"{where}: must be a mapping with tls_server_config and/or basic_auth_users"])
    for key in sorted(set(raw) - _TOP_KEYS):
        problems.append(f"{where}: {key}: unknown key; allowed keys: {', '.join(sorted(_TOP_KEYS))}")

    users: dict[str, bytes] = {}
    for user, hashed in (raw.get("basic_auth_users") or {}).items():
        if not isinstance(hashed, str) or not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            # never echo the value: it may be a password pasted by mistake
            problems.append(f"{where}: basic_auth_users.{user}: must be a bcrypt hash ($2y$..., see htpasswd -B)")
            continue
        users[str(user)] = hashed.encode()

    context = None
    tls = raw.get("tls_server_config")
    if tls is not None:
        context = _tls_context(tls, where, problems)
    if problems:
        raise ConfigError(problems)
    return WebConfig(context, users)


def _tls_context(tls: object, where: str, problems: list[str]) -> ssl.SSLContext | None:
    if not isinstance(tls, dict):
        problems.append(f"{where}: tls_server_config: must be a mapping")
        return None
    for key in sorted(set(tls) - _TLS_KEYS):
        problems.append(f"{where}: tls_server_config.{key}: unknown key; allowed keys: {', '.join(sorted(_TLS_KEYS))}")
    cert, key = tls.get("cert_file"), tls.get("key_file")
    if not cert or not key:
        problems.append(f"{where}: tls_server_config: cert_file and key_file are both required")
        return None
    auth = tls.get("client_auth_type", "NoClientCert")
    if auth not in CLIENT_AUTH:
        problems.append(f"{where}: tls_server_config.client_auth_type: must be one of {', '.join(CLIENT_AUTH)}")
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for name, attr in (("min_version", "minimum_version"), ("max_version", "maximum_version")):
        if name in tls:
            if tls[name] not in TLS_VERSIONS:
                problems.append(f"{where}: tls_server_config.{name}: must be one of {', '.join(TLS_VERSIONS)}")
                return None
            setattr(ctx, attr, TLS_VERSIONS[tls[name]])
    if "min_version" not in tls:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        problems.append(
            f"{where}: tls_server_config: cannot load cert_file/key_file: {getattr(e, 'strerror', None) or e}"
        )
        return None
    ctx.verify_mode = CLIENT_AUTH[auth]
    ca = tls.get("client_ca_file")
    if auth in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert") and not ca:
        problems.append(f"{where}: tls_server_config.client_ca_file: required with client_auth_type {auth}")
        return None
    if ca:
        try:
            ctx.load_verify_locations(ca)
        except (OSError, ssl.SSLError) as e:
            problems.append(
                f"{where}: tls_server_config.client_ca_file: cannot load: {getattr(e, 'strerror', None) or e}"
            )
            return None
    return ctx


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def basic_auth_middleware(users: dict[str, bytes], exempt: Iterable[str]):
    """Requires one of `users` on every path but the exempt ones (which authenticate themselves)."""
    import bcrypt

    exempt_paths = frozenset(exempt)
    dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10))  # for users that do not exist
    verified: set[bytes] = set()  # sha256 of (user, password) pairs bcrypt accepted
    challenge = {"WWW-Authenticate": 'Basic realm="livekit-exporter", charset="UTF-8"'}

    async def check(header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        digest = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        if digest in verified:
            return True
        # An unknown user costs a bcrypt round too, so timing does not tell which users exist.
        hashed = users.get(user, dummy)
        # bcrypt takes tens of milliseconds by design: keep it off the event loop.
        ok = await asyncio.get_running_loop().run_in_executor(None, bcrypt.checkpw, password.encode(), hashed)
        if ok and user in users:
            if len(verified) < 1024:
                verified.add(digest)
            return True
        return False

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in exempt_paths or await check(request.headers.get("Authorization", "")):
            return await handler(request)
        return web.Response(status=401, text="Unauthorized: this exporter requires basic auth.\n", headers=challenge)

    return middleware
