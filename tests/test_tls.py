"""TLS: LiveKit behind TLS with a private CA (livekit.tls_ca_file), and the exporter's own TLS
(--web.config.file tls_server_config) as exporter-toolkit serves it."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import subprocess
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import web

from conftest import free_port, require_binary, value
from livekit_exporter import webconfig
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Simulator


@pytest.fixture
def ca():
    return trustme.CA()


async def test_private_ca(scenario, make_config, aiohttp_client, ca, tmp_path):
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    scenario.add_room("r")
    async with Simulator(scenario, ssl_context=server_ctx) as sim:
        base = make_config()
        trusted = replace(base, livekit=replace(base.livekit, url=sim.url, tls_ca_file=str(ca_file)))
        client = await aiohttp_client(build_app(trusted))
        text = await (await client.get("/metrics")).text()
        assert value(text, "livekit_api_up", service="room") == 1
        assert value(text, "livekit_rooms", occupancy="empty") == 1

        untrusted = replace(base, livekit=replace(base.livekit, url=sim.url))
        client = await aiohttp_client(build_app(untrusted))
        text = await (await client.get("/metrics")).text()
        assert value(text, "livekit_api_up", service="room") == 0
        assert value(text, "livekit_api_errors_total", service="room", method="ListRooms", code="tls") >= 1


# -- --web.config.file: the exporter's own TLS, as exporter-toolkit serves it ------------------------------------
#
# Every file these tests serve is also checked by promtool (Prometheus's exporter-toolkit, in Go): the
# same file means the same thing to node_exporter and to this exporter.


def promtool_accepts(web_file: Path) -> None:
    r = subprocess.run([require_binary("promtool"), "check", "web-config", str(web_file)], capture_output=True,
                       text=True, cwd="/")
    assert r.returncode == 0, r.stdout + r.stderr


class Certs:
    """A server certificate and a client CA (with one of its clients) from trustme, an untrusted
    client from another CA, all in `folder`, which the web config names by relative paths."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.server_ca, self.client_ca, self.stranger_ca = trustme.CA(), trustme.CA(), trustme.CA()
        self.server_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(folder / "server.pem"))
        self.client_ca.cert_pem.write_to_path(str(folder / "clients-ca.pem"))
        self.trusted = self.client_ca.issue_cert("prometheus@example.com")
        self.stranger = self.stranger_ca.issue_cert("mallory@example.com")

    def client(self, cert: trustme.LeafCert | None = None, server_ca: trustme.CA | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        (server_ca or self.server_ca).configure_trust(ctx)
        if cert:
            cert.configure_cert(ctx)
        return ctx

    def web_file(self, auth: str | None, ca: bool) -> Path:
        text = "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n"
        if auth:
            text += f"  client_auth_type: {auth}\n"
        if ca:
            text += "  client_ca_file: clients-ca.pem\n"
        path = self.folder / "web.yml"
        path.write_text(text)
        return path


@pytest.fixture
def certs(tmp_path) -> Certs:
    folder = tmp_path / "etc"  # not the working directory: relative paths are from the file's folder
    folder.mkdir()
    return Certs(folder)


@asynccontextmanager
async def serving(make_config, wc: webconfig.WebConfig):
    """The exporter's app with this web config, served as the command serves it, on loopback."""
    runner = web.AppRunner(build_app(make_config(), web_config=wc), access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=wc.ssl_context).start()
    try:
        yield f"https://127.0.0.1:{port}/-/healthy"
    finally:
        await runner.cleanup()


async def status(url: str, client_ctx: ssl.SSLContext) -> int | None:
    """The status of a GET over a new TLS connection, or None when the handshake (or, in TLS 1.3,
    the first read after it) is refused."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url, ssl=client_ctx) as resp:
            await resp.read()
            return resp.status
    except (aiohttp.ClientError, ssl.SSLError, ConnectionError):
        return None


# client_auth_type -> whether a connection succeeds (no client certificate, one the client CA issued,
# one from another CA), as Go's crypto/tls behaves for tls.ClientAuthType.
CLIENT_AUTH_TYPES = {
    "NoClientCert": (False, (True, True, True)),
    "RequestClientCert": (False, (True, True, True)),  # asked for, never verified
    "RequireAnyClientCert": (False, (False, True, True)),  # required, never verified
    "RequireClientCert": (False, (False, True, True)),  # the toolkit's old name of RequireAnyClientCert
    "VerifyClientCertIfGiven": (True, (True, True, False)),
    "RequireAndVerifyClientCert": (True, (False, True, False)),
}


@pytest.mark.parametrize("auth", list(CLIENT_AUTH_TYPES))
async def test_each_client_auth_type_behaves_as_exporter_toolkit(auth, certs, make_config, caplog):
    needs_ca, expected = CLIENT_AUTH_TYPES[auth]
    web_file = certs.web_file(auth, needs_ca)
    promtool_accepts(web_file)
    async with serving(make_config, webconfig.load(str(web_file))) as url:
        got = tuple([await status(url, certs.client(c)) == 200 for c in (None, certs.trusted, certs.stranger)])
    assert got == expected, f"{auth}: (no cert, trusted cert, untrusted cert) connected: {got}"
    # A refused handshake is the client's problem: no error line, no traceback.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_certificates_are_reloaded_when_their_files_change(certs, make_config, caplog):
    web_file = certs.web_file("RequireAndVerifyClientCert", True)
    promtool_accepts(web_file)
    wc = webconfig.load(str(web_file), reload_interval=0)
    async with serving(make_config, wc) as url:
        assert await status(url, certs.client(certs.trusted)) == 200

        # A renewed server certificate (another CA, to tell them apart), written as cert-manager and
        # kubelet do: a new file renamed over the old one.
        renewed_ca = trustme.CA()
        renewed_ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certs.folder / "new.pem"))
        os.replace(certs.folder / "new.pem", certs.folder / "server.pem")
        assert await status(url, certs.client(certs.trusted, server_ca=renewed_ca)) == 200
        assert await status(url, certs.client(certs.trusted)) is None  # the old certificate is gone

        # A new client CA: its clients get in, the old CA's no longer do.
        new_clients = trustme.CA()
        new_clients.cert_pem.write_to_path(str(certs.folder / "clients-ca.pem"))
        client = new_clients.issue_cert("prometheus@example.com")
        assert await status(url, certs.client(client, server_ca=renewed_ca)) == 200
        assert await status(url, certs.client(certs.trusted, server_ca=renewed_ca)) is None

        # A file that does not load (a half-written renewal) keeps the last good certificate.
        (certs.folder / "server.pem").write_text("-----BEGIN CERTIFICATE-----\nnot yet\n")
        with caplog.at_level(logging.WARNING, logger="livekit_exporter.webconfig"):
            assert await status(url, certs.client(client, server_ca=renewed_ca)) == 200
        assert any("do not load" in r.getMessage() for r in caplog.records)
        assert wc.tls is not None and wc.tls.reloads == 2


def test_certificate_changes_are_looked_for_at_most_every_interval(certs):
    """A handshake looks at the files' change times only once the interval has passed since the last look."""
    now = [0.0]
    settings = webconfig.load(str(certs.web_file(None, False))).tls.settings
    tls = webconfig.ReloadingTLS(settings, 5.0, clock=lambda: now[0])
    trustme.CA().issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(certs.folder / "server.pem"))
    now[0] = 4.9
    tls.refresh()
    assert tls.reloads == 0 and tls.current is tls.context
    now[0] = 5.0
    tls.refresh()
    assert tls.reloads == 1 and tls.current is not tls.context


async def test_cipher_suites_and_versions_are_the_toolkits_names(certs, make_config):
    """Go's cipher suite names (TLS 1.2; TLS 1.3 ones accepted without effect) and TLS versions."""
    web_file = certs.folder / "web.yml"
    web_file.write_text(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.pem\n  max_version: TLS12\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]\n"
        "  prefer_server_cipher_suites: false\n"
    )
    promtool_accepts(web_file)
    async with serving(make_config, webconfig.load(str(web_file))) as url:
        port = int(url.split(":")[2].split("/")[0])
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=certs.client())
        assert writer.get_extra_info("ssl_object").version() == "TLSv1.2"
        assert writer.get_extra_info("cipher")[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"
        writer.close()
        other_cipher = certs.client()
        other_cipher.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
        assert await status(url, other_cipher) is None
        tls13_only = certs.client()
        tls13_only.minimum_version = ssl.TLSVersion.TLSv1_3
        assert await status(url, tls13_only) is None
