"""`--web.config.file`: TLS, mutual TLS, basic auth and response headers for the exporter's own
endpoints, in the format of the Prometheus exporter-toolkit, so one file serves node_exporter and
this exporter alike:

    tls_server_config:
      cert_file: tls.crt                              # relative paths: from the file's folder
      key_file: tls.key
      client_auth_type: RequireAndVerifyClientCert   # optional: mutual TLS
      client_ca_file: clients-ca.crt
      min_version: TLS12                              # TLS10 .. TLS13
    http_server_config:
      headers: {Strict-Transport-Security: max-age=31536000}
    basic_auth_users:
      prometheus: $2y$10$...                          # bcrypt hash (htpasswd -nBC 10 "" | tr -d ':\\n')

What the toolkit does, this module does (its web/tls_config.go and web/handler.go are the
reference); what cannot be done the same way is refused at startup with a message naming the key,
never silently ignored. README's "TLS and basic auth" section lists every rule.

Certificates: the certificate, key and client CA files are re-read when they change (checked at
most every RELOAD_CHECK_SECONDS, on a TLS handshake), so a renewed certificate is served without a
restart; a renewal that does not load keeps the last good one and says so in the log. The file
itself is re-read when it changes too (checked at most as often, on a request): basic_auth_users
and headers apply at once, a changed tls_server_config is logged as needing a restart.

Basic auth guards every endpoint except the webhook and events paths: LiveKit cannot send basic
auth with its webhooks, and both carry their own stronger authentication (a signed JWT, a bearer
token). bcrypt is slow on purpose; a verified (user, password) pair is remembered so a scrape does
not pay for it each time. Every refused request is a 401 with a challenge, counted by reason in
livekit_exporter_basic_auth_rejected_total and logged at most once a minute per reason.
"""

from __future__ import annotations

import _ssl
import asyncio
import base64
import binascii
import ctypes
import functools
import hashlib
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from .config import ConfigError
from .config.load import _parse as parse_yaml
from .logsetup import RateLimitedLog

log = logging.getLogger(__name__)

RELOAD_CHECK_SECONDS = 5.0  # how often, at most, a handshake looks at the certificate files' change times

# client_auth_type -> (OpenSSL verify mode, whether the certificate is verified against client_ca_file)
CLIENT_AUTH: dict[str, tuple[ssl.VerifyMode, bool]] = {
    "NoClientCert": (ssl.CERT_NONE, False),
    "RequestClientCert": (ssl.CERT_OPTIONAL, False),  # asked for, never verified (Go's tls.RequestClientCert)
    "RequireAnyClientCert": (ssl.CERT_REQUIRED, False),  # required, never verified
    "VerifyClientCertIfGiven": (ssl.CERT_OPTIONAL, True),
    "RequireAndVerifyClientCert": (ssl.CERT_REQUIRED, True),
}
_CLIENT_AUTH_ALIASES = {"": "NoClientCert", "RequireClientCert": "RequireAnyClientCert"}  # as the toolkit
TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's tls.CipherSuites() names -> OpenSSL's. The TLS 1.3 suites are not configurable in Go either:
# accepted, without effect (cipher_suites, in Go as in OpenSSL, applies to TLS 1.2 and below).
CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
}
# The toolkit's extraHTTPHeaders: the only headers http_server_config.headers may set, and for
# some, the only values (None: any value).
HEADERS: dict[str, tuple[str, ...] | None] = {
    "Strict-Transport-Security": None,
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": None,
    "Content-Security-Policy": None,
}

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS = ("headers", "http2")
# Keys of newer exporter-toolkit versions this exporter does not implement: refused by name.
_REFUSED = {
    "rate_limit": "not supported by this exporter; remove it (limit the request rate in front of it)",
    "tls_server_config.cert": "inline certificates are not supported; put it in a file and set cert_file",
    "tls_server_config.key": "inline keys are not supported; put it in a file and set key_file",
    "tls_server_config.client_ca": "inline CAs are not supported; put them in a file and set client_ca_file",
    "tls_server_config.curve_preferences": "not supported (Python's ssl cannot set a list of curves); "
    "remove it: OpenSSL's default groups (X25519, P-256, P-384, ...) are offered",
    "tls_server_config.client_allowed_sans": "not supported; remove it, and use a client CA that issues "
    "certificates only to the allowed clients (RequireAndVerifyClientCert)",
}
_BCRYPT_HASH = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")
BCRYPT_MAX_PASSWORD = 72  # bytes: bcrypt (Python's since 5.0, and Go's) refuses longer passwords


@dataclass(frozen=True)
class TLSSettings:
    """tls_server_config, checked, with its paths made absolute."""

    cert_file: str
    key_file: str
    client_auth_type: str = "NoClientCert"
    client_ca_file: str | None = None
    min_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_2
    max_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
    ciphers: str | None = None  # OpenSSL cipher list, from cipher_suites
    prefer_server_cipher_suites: bool = True

    def files(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file, *([self.client_ca_file] if self.client_ca_file else []))


@dataclass(frozen=True)
class WebConfig:
    ssl_context: ssl.SSLContext | None = None  # what the server listens with (it follows certificate changes)
    basic_auth_users: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # http_server_config.headers, on every response
    tls: ReloadingTLS | None = None
    file: WebConfigFile | None = None  # the file it was read from: users and headers follow its changes


class _Problem(Exception):
    pass


def load(path: str, *, reload_interval: float = RELOAD_CHECK_SECONDS) -> WebConfig:
    """Reads and checks a web configuration file; ConfigError lists every problem."""
    users, headers, settings = _parse_file(path)
    tls = None
    if settings is not None:
        try:
            tls = ReloadingTLS(settings, reload_interval)
        except _Problem as e:
            raise ConfigError([f"{path}: tls_server_config{e}"]) from None
    source = WebConfigFile(path, reload_interval, users, headers, settings)
    return WebConfig(tls.context if tls else None, users, headers, tls, source)


def _parse_file(path: str) -> tuple[dict[str, bytes], dict[str, str], TLSSettings | None]:
    where = f"{path}"
    # As the configuration file: at most 1 MiB of UTF-8, aliases and nesting bounded, and a key
    # given twice refused (the toolkit's yaml.UnmarshalStrict refuses it too).
    raw, _ = parse_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError([f"{where}: must be a mapping of {', '.join(_TOP_KEYS)}"])
    problems: list[str] = []
    _check_keys(raw, "", _TOP_KEYS, where, problems)
    # The toolkit resolves relative paths against the file's folder, not the working directory.
    folder = os.path.dirname(os.path.abspath(path))
    users = _users(raw.get("basic_auth_users"), where, problems)
    headers = _http(raw.get("http_server_config"), where, problems)
    settings = _tls(raw.get("tls_server_config"), folder, where, problems)
    if problems:
        raise ConfigError(problems)
    return users, headers, settings


def _check_keys(section: dict[Any, Any], prefix: str, allowed: Iterable[str], where: str, problems: list[str]) -> None:
    allowed = tuple(allowed)
    for key in section:
        name = f"{prefix}{key}"
        if name in _REFUSED:
            problems.append(f"{where}: {name}: {_REFUSED[name]}")
        elif key not in allowed:
            problems.append(f"{where}: {name}: unknown key; allowed keys: {', '.join(allowed)}")


def _mapping(section: object, name: str, where: str, problems: list[str], of: str = "") -> dict[Any, Any] | None:
    """A top-level section as a mapping; None when it is absent, or not a mapping (a problem, with
    `of` saying what the mapping holds)."""
    if section is None:
        return None
    if not isinstance(section, dict):
        problems.append(f"{where}: {name}: must be a mapping{of}")
        return None
    return section


def _users(raw: object, where: str, problems: list[str]) -> dict[str, bytes]:
    section = _mapping(raw, "basic_auth_users", where, problems, of=" of user name to bcrypt hash")
    if section is None:
        return {}
    users: dict[str, bytes] = {}
    for user, hashed in section.items():
        if not isinstance(hashed, str) or not _BCRYPT_HASH.fullmatch(hashed):
            # never echo the value: it may be a password pasted by mistake
            problems.append(
                f"{where}: basic_auth_users.{user}: must be a bcrypt hash ($2y$10$ and 53 more characters; "
                "see htpasswd -nBC 10 \"\" | tr -d ':\\n')"
            )
            continue
        users[str(user)] = hashed.encode()
    return users


def _http(raw: object, where: str, problems: list[str]) -> dict[str, str]:
    section = _mapping(raw, "http_server_config", where, problems)
    if section is None:
        return {}
    _check_keys(section, "http_server_config.", _HTTP_KEYS, where, problems)
    http2 = section.get("http2")
    if http2 is True:
        problems.append(
            f"{where}: http_server_config.http2: this exporter serves HTTP/1.1 only (Prometheus scrapes with it); "
            "set http2: false or remove the key"
        )
    elif http2 is not None and http2 is not False:
        problems.append(f"{where}: http_server_config.http2: must be true or false")
    headers = section.get("headers") or {}
    if not isinstance(headers, dict):
        problems.append(f"{where}: http_server_config.headers: must be a mapping of header name to value")
        return {}
    out: dict[str, str] = {}
    for name, value in headers.items():
        at = f"{where}: http_server_config.headers.{name}"
        if name not in HEADERS:
            problems.append(f"{at}: this header cannot be configured; allowed: {', '.join(HEADERS)}")
            continue
        allowed = HEADERS[name]
        if not isinstance(value, str) or any(ord(c) < 32 or ord(c) == 127 for c in value):
            problems.append(f"{at}: must be a string on one line")
        elif allowed is not None and value not in allowed:
            problems.append(f"{at}: must be one of {', '.join(allowed)}")
        else:
            out[str(name)] = value
    return out


def _tls(raw: object, folder: str, where: str, problems: list[str]) -> TLSSettings | None:
    section = _mapping(raw, "tls_server_config", where, problems)
    if not section:
        return None  # absent or empty: the toolkit serves plain HTTP
    before = len(problems)
    _check_keys(section, "tls_server_config.", _TLS_KEYS, where, problems)
    at = f"{where}: tls_server_config"

    def path(key: str) -> str | None:
        value = section.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            problems.append(f"{at}.{key}: must be a file path")
            return None
        return os.path.join(folder, value)  # an absolute value stays as it is

    cert, key, ca = path("cert_file"), path("key_file"), path("client_ca_file")
    auth = section.get("client_auth_type") or ""
    auth = _CLIENT_AUTH_ALIASES.get(auth, auth) if isinstance(auth, str) else "(not a string)"
    if not cert or not key:
        problems.append(f"{at}: cert_file and key_file are both required (relative paths are from {folder})")
    if auth not in CLIENT_AUTH:
        problems.append(f"{at}.client_auth_type: must be one of {', '.join(CLIENT_AUTH)}")
    elif auth == "NoClientCert" and ca:
        problems.append(
            f"{at}.client_ca_file: set, but client_auth_type is NoClientCert (the toolkit refuses this too); "
            "set client_auth_type, e.g. RequireAndVerifyClientCert"
        )
    elif CLIENT_AUTH[auth][1] and not ca:
        problems.append(
            f"{at}.client_ca_file: required with client_auth_type {auth} (the toolkit would trust the "
            "system's CAs; this exporter trusts only the CAs you name)"
        )
    versions = {}
    for name, default in (("min_version", ssl.TLSVersion.TLSv1_2), ("max_version", ssl.TLSVersion.TLSv1_3)):
        value = section.get(name)
        if value is None:
            versions[name] = default
        elif isinstance(value, str) and value in TLS_VERSIONS:
            versions[name] = TLS_VERSIONS[value]
        else:
            problems.append(f"{at}.{name}: must be one of {', '.join(TLS_VERSIONS)}")
    if len(versions) == 2 and versions["min_version"] > versions["max_version"]:
        problems.append(f"{at}: min_version is above max_version")
    ciphers = None
    suites = section.get("cipher_suites")
    if suites is not None:
        if not isinstance(suites, list) or not all(isinstance(s, str) for s in suites):
            problems.append(f"{at}.cipher_suites: must be a list of Go cipher suite names")
        else:
            unknown = [s for s in suites if s not in CIPHER_SUITES]
            names = [n for s in suites if (n := CIPHER_SUITES.get(s))]
            if unknown:
                problems.append(
                    f"{at}.cipher_suites: unknown cipher {', '.join(unknown)}; known: {', '.join(CIPHER_SUITES)}"
                )
            elif suites and not names:
                problems.append(
                    f"{at}.cipher_suites: only TLS 1.3 suites, which are not configurable; name TLS 1.2 suites "
                    "too, or remove the key"
                )
            elif names:
                ciphers = ":".join(names)
    prefer = section.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        problems.append(f"{at}.prefer_server_cipher_suites: must be true or false")
    if len(problems) > before or not cert or not key:
        return None
    return TLSSettings(cert, key, auth, ca, versions["min_version"], versions["max_version"], ciphers, prefer)


def build_context(s: TLSSettings) -> ssl.SSLContext:
    """One SSLContext from the files as they are now; _Problem says what did not load."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version, ctx.maximum_version = s.min_version, s.max_version
    if s.prefer_server_cipher_suites:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if s.ciphers:
        ctx.set_ciphers(s.ciphers)
    try:
        ctx.load_cert_chain(s.cert_file, s.key_file)
    except (OSError, ssl.SSLError) as e:
        raise _Problem(f": cannot load cert_file/key_file: {_reason(e)}") from None
    mode, verified = CLIENT_AUTH[s.client_auth_type]
    ctx.verify_mode = mode
    if s.client_ca_file:
        try:
            ctx.load_verify_locations(s.client_ca_file)
        except (OSError, ssl.SSLError) as e:
            raise _Problem(f".client_ca_file: cannot load: {_reason(e)}") from None
    if mode != ssl.CERT_NONE and not verified:
        _accept_any_certificate(ctx, s.client_auth_type)
    return ctx


def _reason(e: OSError) -> str:
    return str(getattr(e, "strerror", None) or getattr(e, "reason", None) or e)


# Python's ssl verifies every certificate it asks for; Go's RequestClientCert and RequireAnyClientCert
# ask without verifying. OpenSSL does that with a verify callback that accepts every certificate,
# which the ssl module does not expose: it is set on the context's SSL_CTX through ctypes, after
# checking that the pointer found is that context's (its verify mode and options read back), and the
# ssl module keeps a callback it finds when verify_mode is set again.
_VERIFY_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p)
_ACCEPT_ANY = _VERIFY_CALLBACK(lambda _preverify_ok, _store: 1)
_SSL_VERIFY_PEER, _SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 0x01, 0x02


@functools.cache
def _libssl() -> Any:
    lib = ctypes.CDLL(_ssl.__file__)  # its symbols resolve through the libssl the ssl module is linked to
    lib.SSL_CTX_set_verify.argtypes = [ctypes.c_void_p, ctypes.c_int, _VERIFY_CALLBACK]
    lib.SSL_CTX_set_verify.restype = None
    lib.SSL_CTX_get_verify_mode.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_verify_mode.restype = ctypes.c_int
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    return lib


def _accept_any_certificate(ctx: ssl.SSLContext, auth: str) -> None:
    required = ctx.verify_mode == ssl.CERT_REQUIRED
    mode = _SSL_VERIFY_PEER | (_SSL_VERIFY_FAIL_IF_NO_PEER_CERT if required else 0)
    try:
        lib = _libssl()
        # PySSLContext: the object header, then the SSL_CTX pointer.
        pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
        found = bool(pointer) and (
            lib.SSL_CTX_get_verify_mode(pointer) == mode and lib.SSL_CTX_get_options(pointer) == ctx.options
        )
    except (OSError, AttributeError):
        found = False
    if not found:
        raise _Problem(
            f".client_auth_type: {auth} (a client certificate accepted unverified) is not available with this "
            "Python's ssl module; use VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file"
        )
    lib.SSL_CTX_set_verify(pointer, mode, _ACCEPT_ANY)


def _identity(paths: Iterable[str]) -> tuple[tuple[int, int, int] | None, ...]:
    """What tells a file's change: inode (a file renamed over it), size and change time."""
    out: list[tuple[int, int, int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class _Watched:
    """Files that refresh() looks at at most every `interval` seconds: when their identity differs
    from the one last seen, _reload() reads them again (counted in `reloads` when it took)."""

    def __init__(self, paths: Iterable[str], interval: float, clock: Callable[[], float]):
        self._paths, self._interval, self._clock = tuple(paths), interval, clock
        self._seen = _identity(self._paths)
        self._checked = clock()
        self.reloads = 0

    def refresh(self) -> None:
        now = self._clock()
        if now - self._checked < self._interval:
            return
        self._checked = now
        seen = _identity(self._paths)
        if seen == self._seen:
            return
        self._seen = seen  # a broken state is retried when the files change again, not every time
        if self._reload():
            self.reloads += 1

    def _reload(self) -> bool:
        raise NotImplementedError


class WebConfigFile(_Watched):
    """The web config file as it is now, for what can change without a restart: basic_auth_users
    and http_server_config.headers. A request looks at the file at most every `interval` seconds
    (the toolkit reads it on every request); a change that is not a usable file keeps the last good
    one and is logged, and a changed tls_server_config is logged as needing a restart (the files it
    names are reloaded by ReloadingTLS)."""

    def __init__(
        self,
        path: str,
        interval: float,
        users: dict[str, bytes],
        headers: dict[str, str],
        tls: TLSSettings | None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__([path], interval, clock)
        self.path = path
        self.users, self.headers, self._tls = users, headers, tls

    def _reload(self) -> bool:
        try:
            users, headers, tls = _parse_file(self.path)
        except ConfigError as e:  # the problems never quote a secret
            log.warning(
                "web config file changed but is not usable: still using the previous one",
                extra={"file": self.path, "problems": "; ".join(e.problems)},
            )
            return False
        if tls != self._tls:
            log.warning(
                "tls_server_config changed: restart the exporter to apply it (the certificate files it "
                "names are reloaded without one)",
                extra={"file": self.path},
            )
        self.users, self.headers = users, headers
        log.info("web config file changed: basic_auth_users and headers reloaded", extra={"file": self.path})
        return True


class ReloadingTLS(_Watched):
    """The server's SSLContext, which follows the certificate files: on a handshake, at most every
    `interval` seconds, the files' identity (inode, size, change time) is compared with the last
    seen, and on a change a new context is built and the handshake (and every later one) switches
    to it. The toolkit reads the files on every handshake; a failed reload here keeps the last
    good context (and logs why) instead of failing the handshakes."""

    def __init__(self, settings: TLSSettings, interval: float, clock: Callable[[], float] = time.monotonic):
        super().__init__(settings.files(), interval, clock)  # the files as they are when built
        self.settings = settings
        self.context = build_context(settings)  # what the server is given; it never changes
        self.context.sni_callback = self._on_client_hello  # called with or without SNI
        self.current = self.context

    def _reload(self) -> bool:
        try:
            self.current = build_context(self.settings)
        except _Problem as e:
            log.warning("TLS files changed but do not load: still serving the previous ones", extra={"err": str(e)})
            return False
        log.info("TLS files changed: reloaded", extra={"files": ",".join(self.settings.files())})
        return True

    def _on_client_hello(self, conn: ssl.SSLObject, _server_name: str | None, _ctx: ssl.SSLContext) -> None:
        try:
            self.refresh()
            if self.current is not self.context:
                conn.context = self.current
        except Exception:  # never fail a handshake over the reload: serve what is loaded
            log.exception("TLS reload check failed")


# -- basic auth and headers ----------------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REJECTION_LOG_WINDOW = 60.0  # seconds; one line a reason per window
_ANSWERS = {
    "missing": "this endpoint requires HTTP basic auth: send a user of the exporter's --web.config.file "
    "basic_auth_users and its password",
    "malformed": "the Authorization header is not basic auth: it must be 'Basic ' and base64 of user:password",
    "password_too_long": f"the password is longer than bcrypt's {BCRYPT_MAX_PASSWORD} bytes, so it cannot match",
    "wrong_credentials": "wrong user name or password",
}
REASONS = tuple(_ANSWERS)


def install(app: web.Application, config: WebConfig, exempt: Iterable[str], registry: CollectorRegistry) -> None:
    """What the web config asks of the application: basic auth (except on `exempt` paths) and
    the configured response headers (on every response, as the toolkit sets them). With the file
    behind it, both follow the file's changes (an empty basic_auth_users lets every request in)."""
    source = config.file
    if source is None and not config.headers and not config.basic_auth_users:
        return
    if source is not None:
        current_users: Callable[[], dict[str, bytes]] = lambda: source.users  # noqa: E731
        current_headers: Callable[[], dict[str, str]] = lambda: source.headers  # noqa: E731
    else:
        current_users, current_headers = lambda: config.basic_auth_users, lambda: config.headers

    async def add_headers(_request: web.Request, response: web.StreamResponse) -> None:
        if source is not None:
            source.refresh()
        response.headers.update(current_headers())

    app.on_response_prepare.append(add_headers)
    app.middlewares.append(
        basic_auth_middleware(current_users, exempt, registry, refresh=source.refresh if source else None)
    )


def basic_auth_middleware(
    users: dict[str, bytes] | Callable[[], dict[str, bytes]],
    exempt: Iterable[str],
    registry: CollectorRegistry | None = None,
    refresh: Callable[[], None] | None = None,
):
    """Requires one of `users` (a mapping, or what returns the current one) on every path but the
    exempt ones (which authenticate themselves); no users, no requirement. `refresh` is called
    first on each request (WebConfigFile.refresh)."""
    import bcrypt

    current = users if callable(users) else lambda: users
    exempt_paths = frozenset(exempt)
    dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(10))  # for users that do not exist
    # sha256 of (user:password, its hash) bcrypt accepted: a changed hash is verified again
    verified: set[bytes] = set()
    by_name: list[Any] = [None, {}]  # [the users mapping, its bytes-keyed copy]

    def hashes() -> dict[bytes, bytes]:
        now = current()
        if by_name[0] is not now:
            by_name[:] = [now, {user.encode(): hashed for user, hashed in now.items()}]
            verified.clear()
        return by_name[1]

    lock = asyncio.Lock()  # one bcrypt at a time, as the toolkit: a flood costs one core, not all
    challenge = {"WWW-Authenticate": 'Basic realm="livekit-exporter", charset="UTF-8"'}
    rejected = Counter(
        "livekit_exporter_basic_auth_rejected_total",
        "Requests refused by basic auth (401), by reason: missing, malformed, password_too_long, wrong_credentials.",
        ["reason"],
        registry=registry,
    )
    for reason in REASONS:
        rejected.labels(reason)
    rejections = RateLimitedLog(log, "basic auth rejections not logged", 1, REJECTION_LOG_WINDOW, kind_field="reason")

    async def refusal(header: str, hashes: dict[bytes, bytes]) -> str | None:
        """None when the header carries a user's password, else the reason it does not."""
        if not header:
            return "missing"
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            return "malformed"
        try:
            # aiohttp hands bytes that are not UTF-8 on as surrogates: not ASCII, not base64
            pair = base64.b64decode(encoded.strip().encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            return "malformed"
        user, colon, password = pair.partition(b":")
        if not colon:
            return "malformed"
        if len(password) > BCRYPT_MAX_PASSWORD:
            return "password_too_long"
        # An unknown user costs a bcrypt round too, so timing does not tell which users exist.
        hashed = hashes.get(user, dummy)
        digest = hashlib.sha256(pair + b"\0" + hashed).digest()  # the hash has a fixed length: unambiguous
        if digest in verified:
            return None
        async with lock:
            # bcrypt takes tens of milliseconds by design: keep it off the event loop.
            ok = await asyncio.get_running_loop().run_in_executor(None, _bcrypt_matches, password, hashed)
        if not ok or user not in hashes:
            return "wrong_credentials"
        if len(verified) < 1024:
            verified.add(digest)
        return None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if refresh is not None:
            refresh()
        known = hashes()
        if not known or request.path in exempt_paths:
            return await handler(request)
        reason = await refusal(request.headers.get("Authorization", ""), known)
        if reason is None:
            return await handler(request)
        rejected.labels(reason).inc()
        rejections.warning(
            reason, "request refused by basic auth", reason=reason, remote=request.remote, path=request.path[:100]
        )
        return web.Response(status=401, text=f"Unauthorized: {_ANSWERS[reason]}.\n", headers=challenge)

    return middleware


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    import bcrypt

    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # a password bcrypt refuses (checked before), or a hash load() would have refused
        return False
