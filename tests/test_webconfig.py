"""--web.config.file: TLS (and mutual TLS) and basic auth for the exporter's own endpoints."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import subprocess
import sys
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme

from conftest import free_port, value
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
    wc = webconfig.load(_write(tmp_path, f"basic_auth_users:\n  prometheus: '{_hash(PASSWORD)}'\n"))
    client = await aiohttp_client(build_app(make_config(), web_config=wc))
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


@pytest.mark.parametrize("text,expected", [
    ("basic_auth_users:\n  prometheus: hunter2-plain\n", "basic_auth_users.prometheus: must be a bcrypt hash"),
    ("tls_server_config:\n  cert_file: /nope.crt\n", "cert_file and key_file are both required"),
    ("tls_server_config:\n  cert_file: /nope.crt\n  key_file: /nope.key\n", "cannot load cert_file/key_file"),
    ("basic_auth_user: {}\n", "basic_auth_user: unknown key"),
    ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: Sometimes}\n", "client_auth_type: must be one of"),
])
def test_bad_web_config_is_reported_without_echoing_secrets(tmp_path, text, expected):
    with pytest.raises(ConfigError) as e:
        webconfig.load(_write(tmp_path, text))
    assert expected in str(e.value)
    assert "hunter2" not in str(e.value)


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
