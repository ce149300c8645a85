"""--web.config.file: TLS (and mutual TLS) and basic auth for the exporter's own endpoints."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme

from conftest import free_port, require_binary, value
from livekit_exporter import webconfig
from livekit_exporter.config import ConfigError
from livekit_exporter.server import build_app

PASSWORD = "correct horse battery staple"


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


def _write(tmp_path: Path, text: str) -> str:
    p = tmp_path / "web.yml"
    p.write_text(text)
    return str(p)


async def test_basic_auth_guards_everything_but_the_self_authenticating_endpoints(
    aiohttp_client, make_config, tmp_path
):
    web_file = _write(tmp_path, f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n")
    promtool_check(web_file, ok=True)
    client = await aiohttp_client(build_app(make_config(), web_config=webconfig.load(web_file)))
    for path in ("/metrics", "/", "/-/healthy"):
        resp = await client.get(path)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Basic ")
    assert (await client.get("/metrics", headers=basic("prometheus", "wrong"))).status == 401
    assert (await client.get("/metrics", headers=basic("nobody", PASSWORD))).status == 401
    for _ in range(2):  # the second time from the cache of verified pairs
        resp = await client.get("/metrics", headers=basic("prometheus", PASSWORD))
        assert resp.status == 200
        assert value(await resp.text(), "livekit_up") is not None
    # The webhook endpoint answers with its own authentication, not basic auth's challenge.
    resp = await client.post("/webhook", data=b"{}", headers={"Content-Type": "application/webhook+json"})
    assert resp.status == 401 and not resp.headers.get("WWW-Authenticate", "").startswith("Basic")
    resp = await client.post("/v1/events", json={"events": []})
    assert resp.status == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")


async def raw_get(port: int, authorization: bytes) -> tuple[int, bytes]:
    """GET /metrics over a plain socket, with header bytes no HTTP client library would send."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + authorization
                 + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nWWW-Authenticate: Basic " in head, head
    return int(head.split()[1]), body


SCHOEN = "sch\u00f6n"  # a UTF-8 password
LONG_PASSWORD = "x" * 73  # bcrypt refuses passwords over 72 bytes (bcrypt 5 raises ValueError)


async def test_bad_basic_auth_is_a_counted_401_and_one_log_line_never_a_500(
    aiohttp_client, make_config, tmp_path, caplog
):
    latin1 = "caf\xe9".encode("latin-1")  # a password that is not UTF-8: Go's toolkit compares bytes, so do we
    legacy = bcrypt.hashpw(latin1, bcrypt.gensalt(4)).decode()
    users = f"  prometheus: '{_hash(PASSWORD)}'\n  p\u00e4ul: '{_hash(SCHOEN)}'\n  legacy: '{legacy}'\n"
    web_file = _write(tmp_path, "basic_auth_users:\n" + users)
    promtool_check(web_file, ok=True)
    wc = webconfig.load(web_file)
    client = await aiohttp_client(build_app(make_config(), web_config=wc))

    async def get(authorization: str | None) -> int:
        resp = await client.get("/metrics", headers={"Authorization": authorization} if authorization else {})
        if resp.status == 401:
            assert resp.headers["WWW-Authenticate"].startswith("Basic ")
        return resp.status

    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    with caplog.at_level(logging.DEBUG):
        for _ in range(3):  # every repetition is answered and counted, but logged once a reason
            assert (await client.get("/metrics", headers=basic("prometheus", LONG_PASSWORD))).status == 401
            assert (await client.get("/metrics", headers=basic("nobody", LONG_PASSWORD))).status == 401
            assert await get(None) == 401
            assert await get("Basic !!not-base64!!") == 401
            assert await get("Basic " + b64(b"no-colon")) == 401
            assert await get("Bearer " + b64(b"prometheus:" + PASSWORD.encode())) == 401
            assert await get("Basic " + b64(b"\xff\xfe:\xfd")) == 401  # decodes to bytes that are not UTF-8
            assert (await client.get("/metrics", headers=basic("prometheus", "wrong"))).status == 401
            status, body = await raw_get(client.port, b"Basic \xff\xfe\xfd")  # header bytes that are not UTF-8
            assert status == 401 and b"not basic auth" in body
            status, _ = await raw_get(client.port, "Basic cHJvbWV0aGV1czp4\u00e9".encode())  # non-ASCII base64
            assert status == 401
            status, body = await raw_get(client.port, b"Basic " + b64(b"prometheus:" + b"y" * 100).encode())
            assert status == 401 and b"72 bytes" in body
    assert (await client.get("/metrics", headers=basic("p\u00e4ul", SCHOEN))).status == 200
    assert await get("Basic " + b64(b"legacy:" + latin1)) == 200
    resp = await client.get("/metrics", headers=basic("prometheus", PASSWORD))
    assert resp.status == 200
    text = await resp.text()
    count = lambda reason: value(text, "livekit_exporter_basic_auth_rejected_total", reason=reason)  # noqa: E731
    assert count("password_too_long") == 9
    assert count("missing") == 3
    assert count("malformed") == 5 * 3
    assert count("wrong_credentials") == 2 * 3

    records = [r for r in caplog.records if r.name.startswith(("livekit_exporter", "aiohttp"))]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info], "a traceback or an error line"
    refused = [r for r in records if r.getMessage() == "request refused by basic auth"]
    assert sorted(r.reason for r in refused) == ["malformed", "missing", "password_too_long", "wrong_credentials"]
    logged = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in records)
    assert PASSWORD not in logged and LONG_PASSWORD not in logged and "nobody" not in logged


async def test_configured_headers_are_on_every_response(aiohttp_client, make_config, tmp_path):
    web_file = _write(tmp_path, (
        "http_server_config:\n  http2: false\n  headers:\n"
        "    Strict-Transport-Security: max-age=31536000; includeSubDomains\n"
        "    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
        f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n"
    ))
    promtool_check(web_file, ok=True)
    client = await aiohttp_client(build_app(make_config(), web_config=webconfig.load(web_file)))
    for resp in (
        await client.get("/metrics", headers=basic("prometheus", PASSWORD)),
        await client.get("/metrics"),  # 401
        await client.get("/nowhere", headers=basic("prometheus", PASSWORD)),  # 404
        await client.post("/webhook", data=b"{}", headers={"Content-Type": "application/webhook+json"}),
    ):
        assert resp.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains", resp.status
        assert resp.headers["X-Frame-Options"] == "deny" and resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_users_and_headers_follow_the_file_without_a_restart(aiohttp_client, make_config, tmp_path, caplog):
    """As the toolkit, which reads the file on every request: here at most every reload interval."""
    def write(text: str) -> str:
        path = _write(tmp_path, text)
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))  # a coarse clock
        return path

    web_file = write(f"http_server_config:\n  headers: {{X-Frame-Options: deny}}\n"
                     f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n")
    promtool_check(web_file, ok=True)
    client = await aiohttp_client(build_app(make_config(), web_config=webconfig.load(web_file, reload_interval=0)))
    resp = await client.get("/-/healthy", headers=basic("prometheus", PASSWORD))
    assert resp.status == 200 and resp.headers["X-Frame-Options"] == "deny"

    write(f"http_server_config:\n  headers: {{X-Frame-Options: sameorigin}}\n"
          f"basic_auth_users:\n  prometheus: '{_hash('new password')}'\n")
    promtool_check(web_file, ok=True)
    assert (await client.get("/-/healthy", headers=basic("prometheus", PASSWORD))).status == 401  # cached before
    resp = await client.get("/-/healthy", headers=basic("prometheus", "new password"))
    assert resp.status == 200 and resp.headers["X-Frame-Options"] == "sameorigin"

    with caplog.at_level(logging.WARNING, logger="livekit_exporter.webconfig"):
        write("basic_auth_users:\n  prometheus: hunter2\n")  # not usable: the last good file stays
        assert (await client.get("/-/healthy", headers=basic("prometheus", "new password"))).status == 200
        assert (await client.get("/-/healthy", headers=basic("prometheus", "hunter2"))).status == 401
        ca = trustme.CA()
        ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "s.pem"))
        write("tls_server_config: {cert_file: s.pem, key_file: s.pem}\n")  # TLS needs a restart; the rest applies
        promtool_check(web_file, ok=True)
        resp = await client.get("/-/healthy")
        assert resp.status == 200 and "X-Frame-Options" not in resp.headers
    warnings = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "not usable: still using the previous one" in warnings and "must be a bcrypt hash" in warnings
    assert "tls_server_config changed: restart the exporter" in warnings
    assert "hunter2" not in warnings


def promtool_check(web_file: str, ok: bool) -> None:
    r = subprocess.run([require_binary("promtool"), "check", "web-config", web_file], capture_output=True, text=True,
                       cwd="/")
    assert (r.returncode == 0) is ok, r.stdout + r.stderr


BAD_FILES = [
    # (file, what the message says, whether the toolkit refuses it too: promtool must agree)
    ("basic_auth_users:\n  prometheus: hunter2-plain\n", "basic_auth_users.prometheus: must be a bcrypt hash", True),
    ("basic_auth_users:\n  prometheus: $2y$10$hunter2\n", "basic_auth_users.prometheus: must be a bcrypt hash", True),
    ("tls_server_config:\n  cert_file: /nope.crt\n", "cert_file and key_file are both required", True),
    ("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n", "cannot load cert_file/key_file", True),
    ("basic_auth_user: {}\n", "basic_auth_user: unknown key", True),
    ("basic_auth_users: {}\nbasic_auth_users: {}\n", "'basic_auth_users' is given twice", True),
    ("basic_auth_users: {a: &x [*x]}\n", "once its aliases (*name) are expanded", True),  # a recursive alias
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Sometimes}\n",
     "client_auth_type: must be one of", True),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, client_ca_file: ca.pem}\n",
     "client_ca_file: set, but client_auth_type is NoClientCert", True),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, min_version: TLS14}\n", "min_version: must be one of", True),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, min_version: [TLS12]}\n", "min_version: must be one of",
     True),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, client_auth_type: [NoClientCert]}\n",
     "client_auth_type: must be one of", True),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]}\n",
     "cipher_suites: unknown cipher TLS_RSA_WITH_RC4_128_SHA", True),
    ("http_server_config:\n  headers: {X-Powered-By: hunter2}\n", "headers.X-Powered-By: this header cannot be configured",
     True),
    ("http_server_config:\n  headers: {X-Frame-Options: allow}\n", "X-Frame-Options: must be one of deny, sameorigin",
     True),
    ("http_server_config:\n  htt2: false\n", "http_server_config.htt2: unknown key", True),
    # What the toolkit (or a newer one) takes and this exporter refuses, by name:
    ("tls_server_config: {min_version: TLS12}\n", "cert_file and key_file are both required", False),  # toolkit: HTTP
    ("http_server_config:\n  http2: true\n", "http_server_config.http2: this exporter serves HTTP/1.1 only", False),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, curve_preferences: [X25519]}\n",
     "tls_server_config.curve_preferences: not supported", False),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, client_auth_type: VerifyClientCertIfGiven}\n",
     "client_ca_file: required with client_auth_type VerifyClientCertIfGiven", False),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, min_version: TLS13, max_version: TLS12}\n",
     "min_version is above max_version", False),
    ("rate_limit: {burst: 10, interval: 1s}\n", "rate_limit: not supported by this exporter", None),
    ("tls_server_config: {cert: x, key: hunter2}\n", "tls_server_config.key: inline keys are not supported", None),
    ("tls_server_config: {cert_file: s.pem, key_file: s.pem, client_allowed_sans: [a]}\n",
     "client_allowed_sans: not supported", None),
]


@pytest.mark.parametrize("text,expected,toolkit_refuses", BAD_FILES)
def test_bad_web_config_is_reported_without_echoing_secrets(tmp_path, text, expected, toolkit_refuses):
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "s.pem"))
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with pytest.raises(ConfigError) as e:
        webconfig.load(_write(tmp_path, text))
    assert expected in str(e.value)
    assert "hunter2" not in str(e.value)
    if toolkit_refuses is not None:  # None: a key of a toolkit newer than Debian's promtool
        promtool_check(str(tmp_path / "web.yml"), ok=not toolkit_refuses)


async def test_the_command_serves_tls_and_mutual_tls(scenario, simulator, tmp_path):
    """The installed command with --web.config.file: HTTPS only, and a client certificate required."""
    ca = trustme.CA()
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client_cert = ca.issue_cert("prometheus")
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "client.pem"))
    web_file = _write(tmp_path, (
        "tls_server_config:\n"
        f"  cert_file: {tmp_path / 'server.pem'}\n  key_file: {tmp_path / 'server.pem'}\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tmp_path / 'ca.pem'}\n"
        f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n"
    ))
    promtool_check(web_file, ok=True)
    port = free_port()
    env = {**os.environ, "LIVEKIT_URL": simulator.url, "LIVEKIT_API_KEY": scenario.api_key,
           "LIVEKIT_API_SECRET": scenario.api_secret}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livekit_exporter.cli", "--web.config.file", web_file,
        "--web.listen-address", f"127.0.0.1:{port}", env=env, cwd=Path(__file__).parent.parent / "exporter",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    trusted = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with_cert = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
    with_cert.load_cert_chain(str(tmp_path / "client.pem"))
    auth = basic("prometheus", PASSWORD)
    url = f"https://127.0.0.1:{port}/metrics"
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(150):
                try:
                    async with session.get(url, ssl=with_cert, headers=auth) as resp:
                        assert resp.status == 200
                        assert value(await resp.text(), "livekit_up") == 1
                        break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.05)
            else:
                raise AssertionError("the exporter did not start")
            with pytest.raises(aiohttp.ClientError):  # no client certificate
                async with session.get(url, ssl=trusted, headers=auth):
                    pass
            with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
                async with session.get(f"http://127.0.0.1:{port}/metrics", headers=auth):
                    pass
    finally:
        proc.terminate()
        await proc.wait()


def test_the_command_refuses_a_bad_web_config(tmp_path):
    web_file = _write(tmp_path, "basic_auth_users:\n  prometheus: plaintext-password\n")
    r = subprocess.run(
        [sys.executable, "-m", "livekit_exporter.cli", "--web.config.file", web_file],
        capture_output=True, text=True, cwd=Path(__file__).parent.parent / "exporter",
        env={"PATH": "/usr/bin:/bin", "LIVEKIT_URL": "http://127.0.0.1:1", "LIVEKIT_API_KEY": "k",
             "LIVEKIT_API_SECRET": "s" * 32},
    )
    assert r.returncode == 2
    assert "must be a bcrypt hash" in r.stderr and "plaintext-password" not in r.stderr
