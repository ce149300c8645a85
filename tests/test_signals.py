"""Signals and the lifecycle API, through a real `livekit-exporter serve` process against the simulator:
SIGHUP (and POST /-/reload with --web.enable-lifecycle) reloads the configuration without losing a
counter, a bad file keeps the running configuration and says why; SIGTERM drains within
server.shutdown_grace and exits 0."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from conftest import finish_held_request, free_port, value
from livekit_exporter.simulator import Fault

EXPORTER_DIR = Path(__file__).parent.parent / "exporter"
TOKEN_A = "token-a-0123456789abcdef0123"
TOKEN_B = "token-b-0123456789abcdef0123"
EVENT = {"events": [{"type": "call_started", "agent": "a", "call_id": "c1", "direction": "inbound"}]}
WAIT = 30.0  # generous bound for anything below; nothing is timed


def write_config(path: Path, simulator, scenario, tokens: list[str], extra: str = "") -> None:
    path.write_text(
        f"livekit: {{url: '{simulator.url}', api_key: {scenario.api_key}, api_secret: '{scenario.api_secret}'}}\n"
        f"events:\n  tokens: [{', '.join(tokens)}]\n{extra}"
    )


class Serve:
    """`livekit-exporter serve --config.file CFG` on a free loopback port, its log collected."""

    def __init__(self, config: Path, *flags: str):
        self.config, self.flags, self.port = config, flags, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log: list[str] = []

    async def __aenter__(self) -> Serve:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIVEKIT_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "livekit_exporter.cli", "serve", "--config.file", str(self.config),
            "--web.listen-address", f"127.0.0.1:{self.port}", "--log.format", "json", *self.flags,
            env=env, cwd=EXPORTER_DIR, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._reader = asyncio.create_task(self._read_log())
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT))
        await self.until(self._healthy, "the exporter did not start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        await self.session.close()
        await self._reader

    async def _read_log(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode())

    async def _healthy(self) -> bool:
        try:
            async with self.session.get(self.base + "/-/healthy") as resp:
                return resp.status == 200
        except aiohttp.ClientConnectionError:
            return False

    async def until(self, condition, message: str) -> None:
        for _ in range(int(WAIT / 0.05)):
            if await condition():
                return
            assert self.proc.returncode is None, f"the exporter exited ({self.proc.returncode}): {''.join(self.log)}"
            await asyncio.sleep(0.05)
        pytest.fail(f"{message}: {''.join(self.log)}")

    async def until_metric(self, name: str, expected: float, message: str, **labels: str) -> None:
        """Waits until the exporter's /metrics shows `name`{labels} == expected."""

        async def shown() -> bool:
            return await self.metric(name, **labels) == expected

        await self.until(shown, message)

    async def post_event(self, token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        async with self.session.post(self.base + "/v1/events", json=EVENT, headers=headers) as resp:
            return resp.status

    async def metric(self, name: str, **labels: str) -> float | None:
        async with self.session.get(self.base + "/metrics") as resp:
            return value(await resp.text(), name, **labels)

    def lines(self, msg: str) -> list[dict]:
        out = []
        for line in self.log:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("msg", "").startswith(msg):
                out.append(record)
        return out


async def test_sighup_reloads_tokens_keeps_counters_and_a_bad_file_keeps_the_running_config(scenario, simulator, tmp_path):
    cfg = tmp_path / "cfg.yml"
    write_config(cfg, simulator, scenario, [TOKEN_A])
    async with Serve(cfg) as ex:
        assert await ex.post_event(TOKEN_A) == 200
        assert await ex.post_event(TOKEN_B) == 401
        assert await ex.metric("livekit_exporter_config_last_reload_successful") == 1

        write_config(cfg, simulator, scenario, [TOKEN_A, TOKEN_B])
        ex.proc.send_signal(signal.SIGHUP)

        async def b_accepted() -> bool:
            return await ex.post_event(TOKEN_B) == 200

        await ex.until(b_accepted, "the new token never became valid")
        assert await ex.metric("voice_agent_calls_started_total", agent="a", direction="inbound", campaign="") == 2
        assert await ex.metric("livekit_exporter_events_total", type="call_started") == 2  # counted across it
        assert ex.lines("configuration reloaded")

        cfg.write_text("livekit: [this is not: a mapping\n")  # broken
        ex.proc.send_signal(signal.SIGHUP)
        await ex.until_metric("livekit_exporter_config_last_reload_successful", 0, "the failed reload was not reported")
        [line] = ex.lines("configuration reload failed")
        assert "not valid YAML" in " ".join(line["problems"]) and str(cfg) in " ".join(line["problems"])
        assert await ex.post_event(TOKEN_B) == 200  # the running configuration is kept
        assert await ex.post_event(TOKEN_A) == 200
        assert await ex.metric("livekit_exporter_events_total", type="call_started") == 4
        assert (await ex.session.post(ex.base + "/-/reload")).status == 403  # no --web.enable-lifecycle
        assert ex.proc.returncode is None
        ex.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(ex.proc.wait(), WAIT) == 0
    assert scenario.api_secret not in "".join(ex.log)


async def test_post_reload_with_lifecycle_enabled(scenario, simulator, tmp_path):
    cfg = tmp_path / "cfg.yml"
    write_config(cfg, simulator, scenario, [TOKEN_A])
    async with Serve(cfg, "--web.enable-lifecycle") as ex:
        assert (await ex.session.get(ex.base + "/-/reload")).status == 405
        write_config(cfg, simulator, scenario, [TOKEN_B], "server: {max_in_flight: 7}\n")
        async with ex.session.post(ex.base + "/-/reload") as resp:
            assert resp.status == 200, await resp.text()
        assert await ex.post_event(TOKEN_B) == 200
        assert await ex.post_event(TOKEN_A) == 401  # removed from the file, so no longer valid

        # A key the running state is shaped by: refused by name, nothing else applied.
        write_config(cfg, simulator, scenario, [TOKEN_A], "labels: {max_values: 3}\n")
        async with ex.session.post(ex.base + "/-/reload") as resp:
            text = await resp.text()
            assert resp.status == 500 and "labels.max_values" in text and "restart" in text, text
        assert await ex.post_event(TOKEN_B) == 200 and await ex.post_event(TOKEN_A) == 401
        assert await ex.metric("livekit_exporter_config_last_reload_successful") == 0


async def test_new_livekit_credentials_are_used_after_a_reload(scenario, simulator, tmp_path):
    cfg = tmp_path / "cfg.yml"
    scenario.add_room("r")
    stale = type("Stale", (), {"api_key": scenario.api_key, "api_secret": "a-stale-secret-" + "x" * 32})
    write_config(cfg, simulator, stale, [TOKEN_A])  # LiveKit's secret was rotated; the file not yet
    async with Serve(cfg) as ex:
        assert await ex.metric("livekit_up") == 0
        write_config(cfg, simulator, scenario, [TOKEN_A])
        ex.proc.send_signal(signal.SIGHUP)
        await ex.until_metric("livekit_up", 1, "the exporter never used the new secret")
        assert await ex.metric("livekit_rooms", occupancy="empty") == 1
        assert (await ex.metric("livekit_api_errors_total", service="room", method="ListRooms", code="unauthenticated") or 0) >= 1


async def test_sigterm_drains_in_flight_requests_and_exits_0_within_the_grace(scenario, simulator, tmp_path):
    cfg = tmp_path / "cfg.yml"
    write_config(cfg, simulator, scenario, [TOKEN_A], "server: {shutdown_grace: 2s}\n")
    async with Serve(cfg) as ex:
        # An events request half sent: it is finished, and answered, after SIGTERM.
        reader, writer = await asyncio.open_connection("127.0.0.1", ex.port)
        body = json.dumps(EVENT).encode()
        writer.write(
            f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body[:10]
        )
        await writer.drain()
        # A scrape held by a LiveKit call that never answers (with a long scrape timeout).
        scenario.set_fault("room", Fault("hang"))
        scrape = asyncio.create_task(
            ex.session.get(ex.base + "/metrics", headers={"X-Prometheus-Scrape-Timeout-Seconds": "100"})
        )
        await asyncio.sleep(0.5)  # both in the exporter's hands
        ex.proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.2)
        head = await finish_held_request(reader, writer, body[10:], WAIT)
        assert head.startswith(b"HTTP/1.1 200"), head
        # Within the grace (2 s) plus cleanup; without it, aiohttp waited 60 s for the scrape.
        assert await asyncio.wait_for(ex.proc.wait(), 20) == 0
        scrape.cancel()
        with pytest.raises((asyncio.CancelledError, aiohttp.ClientError)):
            await scrape
    assert ex.lines("shutting down") and ex.lines("stopped")
    assert not [line for line in ex.log if "Traceback" in line]


async def test_a_reload_changes_the_server_limits_of_the_next_request(scenario, simulator, tmp_path):
    from test_http_limits import serve

    from livekit_exporter.config import load
    from livekit_exporter.reload import RELOADER
    from livekit_exporter.server import build_app

    cfg = tmp_path / "cfg.yml"
    write_config(cfg, simulator, scenario, [TOKEN_A], "server: {body_timeout: 1m}\n")
    app = build_app(load(str(cfg), env={}), config_file=str(cfg))
    runner, port = await serve(app)
    try:
        write_config(cfg, simulator, scenario, [TOKEN_A], "server: {body_timeout: 1s}\n")
        assert await app[RELOADER].reload("test") == []
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN_A}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WAIT)  # 408 after 1 s, not after a minute
        writer.close()
        assert answer.startswith(b"HTTP/1.1 408") and b"(1s)" in answer, answer
    finally:
        await runner.cleanup()


async def test_a_reload_keeps_the_webhook_dedup_ids_and_adds_the_new_key(scenario, simulator, tmp_path, aiohttp_client):
    from test_webhooks import post, room_started

    from livekit_exporter.config import load
    from livekit_exporter.reload import RELOADER
    from livekit_exporter.server import build_app
    from livekit_exporter.simulator.webhooks import request_headers, sign

    new_secret = "the-new-webhook-secret-" + "n" * 32
    keys = f"webhooks:\n  keys:\n    - {{api_key: {scenario.api_key}, api_secret: '{scenario.api_secret}'}}\n"
    cfg = tmp_path / "cfg.yml"
    write_config(cfg, simulator, scenario, [TOKEN_A], keys)
    client = await aiohttp_client(build_app(load(str(cfg), env={}), config_file=str(cfg)))
    body = room_started("EV_kept")
    old_key = request_headers(sign(body, scenario.api_key, scenario.api_secret))
    new_key = request_headers(sign(body, "APInewkey", new_secret))
    assert (await post(client, body, old_key))[1]["result"] == "accepted"
    assert (await post(client, body, new_key))[0] == 401  # not configured yet

    write_config(cfg, simulator, scenario, [TOKEN_A], keys + f"    - {{api_key: APInewkey, api_secret: '{new_secret}'}}\n")
    assert await client.app[RELOADER].reload("test") == []
    assert await post(client, body, new_key) == (200, {"result": "duplicate", "id": "EV_kept"})  # id remembered
