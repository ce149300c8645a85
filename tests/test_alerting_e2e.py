"""End to end, with the real binaries: the exporter (its LiveKit simulated) -> Prometheus with rules
generated from a test variant of prometheus/mixin.yml (same generator, short windows and `for`) ->
Alertmanager with the bundle's alertmanager.yml -> a receiver inside this test.

The Alertmanager configuration is the shipped one with only its endpoints swapped (Slack's URL file,
a webhook beside each receiver so the test reads labels and annotations, no SMTP server) and
notification timings shortened; routes and inhibitions are untouched.

Shown: a LiveKit service answering 401 pages LiveKitApiUnauthenticated (and its LiveKitApiServiceDown
is inhibited), simulated voice agents whose latency regresses raise LiveKitVoiceAgentLatencyHigh,
both resolve (send_resolved) once the fault clears, and with every LiveKit service down only
LiveKitApiUnreachable is delivered while the dependent alerts are inhibited.
"""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import aiohttp
import yaml
from aiohttp import web

from conftest import EVENTS_TOKEN, add_rooms, free_port, require_binary, serve_on_loopback, stop_process
from livekit_exporter.client import EventsClient
from livekit_exporter.mixin import DEFAULT_CONFIG, generate, load, write
from livekit_exporter.server import build_app
from livekit_exporter.simulator import Fault
from livekit_exporter.simulator.voice_agents import AgentProfile, Provider, SimCall, VoiceAgentFleet

ROOT = Path(__file__).parent.parent
WEBHOOK_TOKEN = "receiver-token-0123456789"

# The test variant: same generator, windows and `for` of seconds instead of minutes.
FAST = {
    "prometheus.scrape_interval": "1s",
    "prometheus.scrape_timeout": "1s",
    "prometheus.evaluation_interval": "1s",
    "prometheus.targets.livekit_server": [],
    "inhibitors.keep_firing_for": "10s",
    "livekit_api.unreachable_for": "2s",
    "livekit_api.service_down_for": "3s",
    "livekit_api.auth_errors": {"window": "5s", "for": "1s", "codes": ["unauthenticated", "permission_denied"]},
    "livekit_api.error_ratio": {"window": "5s", "warning": 0.05, "critical": 0.10, "for": "2s"},
    "livekit_api.latency": {"window": "5s", "quantile": 0.95, "warning": 2, "critical": 5, "for": "2s"},
    "voice_agents.latency": {"window": "8s", "quantile": 0.95, "warning": 1.5, "critical": 3, "for": "2s"},
}

SLOW = AgentProfile("support-agent", "inbound", Provider("deepgram", "nova-3", 0.2, 0.1),
                    Provider("openai", "gpt-4o", 1.3, 0.05), Provider("cartesia", "sonic-2", 0.2, 0.05), ())
FAST_AGENT = replace(SLOW, llm=Provider("openai", "gpt-4o", 0.3, 0.05))


class Receiver:
    """Alertmanager's notifications, as a webhook and as Slack would get them."""

    def __init__(self) -> None:
        self.webhooks: list[tuple[str, dict[str, Any]]] = []  # (receiver, payload)
        self.slack: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/webhook/{receiver}", self._webhook)
        self.app.router.add_post("/slack", self._slack)

    async def _webhook(self, request: web.Request) -> web.Response:
        receiver = request.match_info["receiver"]
        if receiver == "default-webhook":
            assert request.headers.get("Authorization") == f"Bearer {WEBHOOK_TOKEN}"
        self.webhooks.append((receiver, await request.json()))
        return web.Response()

    async def _slack(self, request: web.Request) -> web.Response:
        self.slack.append(await request.json())
        return web.Response(text="ok")

    def delivered(self, alertname: str, status: str = "firing", since: int = 0) -> list[tuple[str, dict[str, Any]]]:
        """Alerts of that name and status in the notifications from the `since`-th on."""
        return [(rcv, a) for rcv, p in self.webhooks[since:] for a in p["alerts"]
                if a["labels"]["alertname"] == alertname and a["status"] == status]

    async def notified(self, alertname: str, status: str = "firing", since: int = 0) -> list[tuple[str, dict[str, Any]]]:
        """Waits until delivered() has alerts of that name and status, and returns them."""
        what = f"{alertname} {'delivered' if status == 'firing' else status}"
        return await eventually(what, lambda: self.delivered(alertname, status, since))

    async def first_firing(self, receiver: str, labels: dict[str, str]) -> dict[str, Any]:
        """Waits for the alert named labels["alertname"]; the first one delivered went to `receiver`,
        with exactly these labels. That alert."""
        (rcv, alert), *_ = await self.notified(labels["alertname"])
        assert rcv == receiver
        assert alert["labels"] == labels
        return alert


def alertmanager_config(tmp: Path, receiver_port: int) -> Path:
    am = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    base = f"http://127.0.0.1:{receiver_port}"
    (tmp / "slack_url").write_text(f"{base}/slack")
    (tmp / "smtp_password").write_text("not-used")
    (tmp / "webhook_token").write_text(WEBHOOK_TOKEN)
    am["global"]["slack_api_url_file"] = str(tmp / "slack_url")
    am["global"]["smtp_auth_password_file"] = str(tmp / "smtp_password")
    am["templates"] = [str(ROOT / "alertmanager" / "templates" / "*.tmpl")]
    am["route"].update(group_wait="1s", group_interval="1s", repeat_interval="1h")
    for r in am["route"]["routes"]:
        r["repeat_interval"] = "1h"
    for r in am["receivers"]:
        r.pop("email_configs", None)  # no SMTP server here; the email templates are rendered by amtool
        for w in r.get("webhook_configs", []):
            w["url"] = f"{base}/webhook/{r['name']}"
            w["http_config"]["authorization"]["credentials_file"] = str(tmp / "webhook_token")
        if r["name"] != "default-webhook":
            r["webhook_configs"] = [{"url": f"{base}/webhook/{r['name']}", "send_resolved": True}]
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(am, sort_keys=False))
    return path


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))


async def eventually(what: str, check: Callable[[], Any], timeout: float = 45.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = check()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def drive_turns(client: EventsClient, profile: list[AgentProfile], stop_event: asyncio.Event) -> None:
    """Turns of one long call, 20 a second, with whichever profile is current."""
    fleet = VoiceAgentFleet(client, seed=7, agents=tuple(profile))
    while not stop_event.is_set():
        fleet.turn(SimCall(profile[0], "sim-e2e", answered=True, turns_left=1))
        await asyncio.sleep(0.05)


async def test_alerts_fire_route_inhibit_and_resolve_end_to_end(scenario, simulator, events_config, tmp_path):
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("alertmanager")
    add_rooms(scenario, 3, prefix="room-", identity="caller")

    receiver = Receiver()
    receiver_runner, receiver_port = await serve_on_loopback(receiver.app)
    exporter_runner, exporter_port = await serve_on_loopback(build_app(events_config()))
    am_port, prom_port = free_port(), free_port()
    files = generate(load(ROOT / DEFAULT_CONFIG, {
        **FAST,
        "prometheus.targets.exporter": [f"127.0.0.1:{exporter_port}"],
        "prometheus.alertmanagers": [f"127.0.0.1:{am_port}"],
    }))
    write({k: v for k, v in files.items() if k.startswith("prometheus/")}, tmp_path)
    am_proc = start([alertmanager_bin, f"--config.file={alertmanager_config(tmp_path, receiver_port)}",
                     f"--storage.path={tmp_path / 'am-data'}", f"--web.listen-address=127.0.0.1:{am_port}",
                     "--cluster.listen-address="], tmp_path / "alertmanager.log")
    prom_proc = start([prometheus_bin, f"--config.file={tmp_path / 'prometheus' / 'prometheus.yml'}",
                       f"--storage.tsdb.path={tmp_path / 'prom-data'}", f"--web.listen-address=127.0.0.1:{prom_port}",
                       "--rules.alert.resend-delay=1s"], tmp_path / "prometheus.log")
    profile = [SLOW]
    stop_turns = asyncio.Event()
    client = EventsClient(f"http://127.0.0.1:{exporter_port}/v1/events", EVENTS_TOKEN, flush_interval=0.2)
    turns = asyncio.create_task(drive_turns(client, profile, stop_turns))
    try:
        async with aiohttp.ClientSession() as http:
            async def firing_in_prometheus(alertname: str) -> list[dict]:
                try:
                    async with http.get(f"http://127.0.0.1:{prom_port}/api/v1/alerts") as r:
                        alerts = (await r.json())["data"]["alerts"]
                except aiohttp.ClientError:
                    return []
                return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]

            async def in_alertmanager(alertname: str) -> list[dict]:
                try:
                    async with http.get(f"http://127.0.0.1:{am_port}/api/v2/alerts",
                                        params={"filter": f'alertname="{alertname}"'}) as r:
                        return await r.json()
                except aiohttp.ClientError:
                    return []

            # 1. A LiveKit service answers 401; the agents' latency has regressed.
            scenario.set_fault("egress", Fault("unauthorized"))
            alert = await receiver.first_firing("critical", {
                "alertname": "LiveKitApiUnauthenticated", "severity": "critical", "component": "livekit",
                "job": "livekit-exporter", "service": "egress"})
            ann = alert["annotations"]
            assert ann["summary"] == "LiveKit refuses the exporter's credentials or grants."
            assert ann["description"].startswith("LiveKit answers the exporter's egress calls with unauthenticated")
            assert ann["runbook_url"].endswith("/docs/runbooks.md#livekitapiunauthenticated")
            assert ann["dashboard_url"].startswith("http://localhost:3000/d/livekit-overview?viewPanel=")
            # Slack gets the same, through the bundle's templates (its own integration: it may come later).
            slack = await eventually("the Slack message", lambda: [
                a for p in receiver.slack for a in p.get("attachments", [])
                if a.get("title") == "[FIRING:1] LiveKitApiUnauthenticated (critical)"])
            assert ann["runbook_url"] in slack[0]["text"] and ann["description"] in slack[0]["text"]
            assert slack[0]["color"] == "danger" and "/#/silences/new?filter=" in slack[0]["text"]
            # The same service is down too, and Alertmanager holds that back: it needs the credentials fixed.
            await eventually("LiveKitApiServiceDown firing", lambda: firing_in_prometheus("LiveKitApiServiceDown"))
            held = await eventually("LiveKitApiServiceDown inhibited", lambda: in_alertmanager("LiveKitApiServiceDown"))
            assert held[0]["status"]["state"] == "suppressed" and held[0]["status"]["inhibitedBy"]

            alert = await receiver.first_firing("slack", {
                "alertname": "LiveKitVoiceAgentLatencyHigh", "severity": "warning", "component": "voice_agents",
                "job": "livekit-exporter", "agent": "support-agent"})
            assert "p95 voice-to-voice latency of support-agent is" in alert["annotations"]["description"]
            assert alert["annotations"]["runbook_url"].endswith("#livekitvoiceagentlatencyhigh")

            # 2. Both faults clear: both resolve.
            scenario.set_fault("egress", None)
            profile[0] = FAST_AGENT
            await receiver.notified("LiveKitApiUnauthenticated", "resolved")
            await receiver.notified("LiveKitVoiceAgentLatencyHigh", "resolved")
            assert receiver.delivered("LiveKitApiServiceDown") == []

            # 3. Every LiveKit service down: LiveKitApiUnreachable only; what depends on it is inhibited.
            await asyncio.sleep(2)  # phase 2's last notifications
            since = len(receiver.webhooks)
            for service in ("room", "egress", "ingress", "sip"):
                scenario.set_fault(service, Fault("reset"))
            (rcv, alert), *_ = await receiver.notified("LiveKitApiUnreachable", since=since)
            assert rcv == "critical" and alert["labels"]["job"] == "livekit-exporter"
            for dependent in ("LiveKitApiServiceDown", "LiveKitApiErrorRatioHigh"):
                await eventually(f"{dependent} firing", lambda d=dependent: firing_in_prometheus(d))
                held = await eventually(f"{dependent} in Alertmanager", lambda d=dependent: in_alertmanager(d))
                assert all(a["status"]["state"] == "suppressed" for a in held), held
            down = await firing_in_prometheus("LiveKitApiServiceDown")
            assert {a["labels"]["service"] for a in down} == {"room", "egress", "ingress", "sip"}
            await asyncio.sleep(3)  # several notification rounds: still nothing of the dependents
            assert receiver.delivered("LiveKitApiServiceDown", since=since) == []
            assert receiver.delivered("LiveKitApiErrorRatioHigh", since=since) == []
            for service in ("room", "egress", "ingress", "sip"):
                scenario.set_fault(service, None)
            await receiver.notified("LiveKitApiUnreachable", "resolved", since=since)
            # It kept firing (inhibitors.keep_firing_for) until its symptoms had resolved: none of
            # them was delivered on the way out either.
            await asyncio.sleep(2)
            assert receiver.delivered("LiveKitApiServiceDown", since=since) == []
            assert receiver.delivered("LiveKitApiErrorRatioHigh", since=since) == []
    except AssertionError:
        for log in ("prometheus.log", "alertmanager.log"):
            print(log, (tmp_path / log).read_text()[-3000:])
        raise
    finally:
        stop_turns.set()
        await turns
        await client.aclose(timeout=1.0)
        stop_process(prom_proc)
        stop_process(am_proc)
        await exporter_runner.cleanup()
        await receiver_runner.cleanup()
