"""An HA Prometheus pair, with the real binaries: two Debian `prometheus` servers generated from
prometheus/mixin.yml with their own external labels (prometheus_replica="a" / "b", and a shared
cluster="ha-test"), both scraping one real `livekit-exporter serve` on the simulator, both sending
alerts to one real Alertmanager and remote-writing to one store (a third Prometheus with
--web.enable-remote-write-receiver, standing in for Thanos Receive or Mimir).

Shown: each server's own queries of the bundle (its recording rules) answer alike, without the
external labels; the store gets both copies told apart by prometheus_replica (what Thanos Query's
--query.replica-label and Mimir's HA tracker deduplicate by), where a read that does not deduplicate
doubles the dashboards' state queries (a sum after `max without (instance, pod)`) and one without the
replica label reads what one server does; with every LiveKit service down both
servers fire LiveKitApiUnreachable and, with prometheus.replica_label set, Alertmanager holds ONE
alert without the replica label (amtool), while without it (no alert_relabel_configs) it holds two,
one per server.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import (
    EVENTS_TOKEN,
    add_rooms,
    free_port,
    prometheus_query,
    require_binary,
    samples,
    start_prometheus,
    stop_process,
)
from test_alerting_e2e import FAST, eventually  # FAST: the mixin's test variant (1s scrapes, 2s `for`)
from test_signals import Serve, write_config

from livekit_exporter.mixin import DEFAULT_CONFIG, MixinError, generate, load, write
from livekit_exporter.simulator import Fault

ROOT = Path(__file__).parent.parent
ALERT = "LiveKitApiUnreachable"
SERVICES = ("room", "egress", "ingress", "sip")
REPLICAS = ("a", "b")
SHARED_LABELS = {"cluster": "ha-test"}  # an external label both servers carry: kept on the alert
RULES = ("service:livekit_api_up:max", "occupancy:livekit_rooms:max")
ALERTMANAGER_YML = {"route": {"receiver": "hold", "group_by": ["alertname"]}, "receivers": [{"name": "hold"}]}


def pair_member(tmp_path: Path, replica: str, replica_label: str, exporter: str, am_port: int, store_port: int) -> Path:
    """One server of the pair, generated from the mixin: the directory its prometheus.yml and rules are in."""
    files = generate(
        load(
            ROOT / DEFAULT_CONFIG,
            {
                **FAST,
                "prometheus.targets.exporter": [exporter],
                "prometheus.alertmanagers": [f"127.0.0.1:{am_port}"],
                "prometheus.remote_write": [{"url": f"http://127.0.0.1:{store_port}/api/v1/write", "name": "store"}],
                "prometheus.external_labels": {**SHARED_LABELS, "prometheus_replica": replica},
                "prometheus.replica_label": replica_label,
            },
        )
    )
    out = tmp_path / f"prometheus-{replica}"
    write({k: v for k, v in files.items() if k.startswith("prometheus/")}, out)
    return out / "prometheus"


async def query(http: aiohttp.ClientSession, port: int, expr: str) -> list[dict[str, Any]] | None:
    """The instant query's result on the Prometheus of that port; None while it does not answer."""
    try:
        return await prometheus_query(http, port, expr)
    except aiohttp.ClientError:
        return None


async def scalar(http: aiohttp.ClientSession, port: int, expr: str) -> float | None:
    """The one value of an instant query on the Prometheus of that port (None: no result, or no answer)."""
    result = await query(http, port, expr)
    assert result is None or len(result) <= 1, (expr, result)
    return float(result[0]["value"][1]) if result else None


def readings(result: list[dict[str, Any]] | None) -> dict[frozenset, float | None]:
    """A query's result: {labels: value} (NaN as None)."""
    out: dict[frozenset, float | None] = {}
    for r in result or []:
        v = float(r["value"][1])
        out[frozenset(r["metric"].items())] = None if math.isnan(v) else v
    return out


async def firing(http: aiohttp.ClientSession, port: int, alertname: str) -> list[dict[str, Any]]:
    """The alerts of that name the Prometheus of that port has firing."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/api/v1/alerts") as r:
            alerts = (await r.json())["data"]["alerts"]
    except (aiohttp.ClientError, json.JSONDecodeError):
        return []
    return [a for a in alerts if a["labels"]["alertname"] == alertname and a["state"] == "firing"]


async def notifications_sent(http: aiohttp.ClientSession, port: int) -> float:
    """prometheus_notifications_sent_total of the Prometheus of that port: the alerts it sent Alertmanager."""
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(v for (name, _), v in samples(text).items() if name == "prometheus_notifications_sent_total")


def held_in_alertmanager(amtool: str, am_port: int, alertname: str) -> list[dict[str, str]]:
    """The label sets of the alerts of that name Alertmanager holds, as `amtool alert query` lists them."""
    run = subprocess.run(
        [
            amtool,
            "alert",
            "query",
            f"--alertmanager.url=http://127.0.0.1:{am_port}",
            "--output=json",
            f"alertname={alertname}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    return [alert["labels"] for alert in json.loads(run.stdout)]


@pytest.mark.parametrize(
    ("replica_label", "alerts_held"),
    [("prometheus_replica", 1), ("", 2)],
    ids=["replica_label_dropped_from_alerts", "without_replica_label"],
)
async def test_ha_pair_answers_alike_and_alertmanager_holds_one_alert_only_with_the_replica_label(
    scenario, simulator, tmp_path, replica_label, alerts_held
):
    prometheus_bin = require_binary("prometheus")
    alertmanager_bin = require_binary("alertmanager")
    amtool = require_binary("amtool")
    add_rooms(scenario, 3, prefix="room-", identity="caller")
    scenario.add_room("empty-0")
    exporter_config = tmp_path / "exporter.yml"
    write_config(exporter_config, simulator, scenario, [EVENTS_TOKEN])

    am_port, store_port = free_port(), free_port()
    ports = {replica: free_port() for replica in REPLICAS}
    processes: list[subprocess.Popen] = []
    am_log = tmp_path / "alertmanager.log"
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(ALERTMANAGER_YML))
    async with Serve(exporter_config) as exporter:
        dirs = {
            replica: pair_member(
                tmp_path, replica, replica_label, exporter.base.removeprefix("http://"), am_port, store_port
            )
            for replica in REPLICAS
        }
        # What the generator wrote: the external labels; the alert relabelling only with replica_label;
        # remote_write relabels by __name__ alone, so the replica label reaches the store.
        generated = yaml.safe_load((dirs["a"] / "prometheus.yml").read_text())
        assert generated["global"]["external_labels"] == {**SHARED_LABELS, "prometheus_replica": "a"}
        relabel = generated["alerting"].get("alert_relabel_configs")
        assert relabel == ([{"action": "labeldrop", "regex": "prometheus_replica"}] if replica_label else None)
        assert [r["source_labels"] for r in generated["remote_write"][0]["write_relabel_configs"]] == [["__name__"]]
        try:
            processes.append(
                subprocess.Popen(
                    [
                        alertmanager_bin,
                        f"--config.file={tmp_path / 'alertmanager.yml'}",
                        f"--storage.path={tmp_path / 'am-data'}",
                        f"--web.listen-address=127.0.0.1:{am_port}",
                        "--cluster.listen-address=",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=am_log.open("w"),
                )
            )
            (tmp_path / "store.yml").write_text("global: {}\n")
            processes.append(
                start_prometheus(
                    prometheus_bin,
                    tmp_path / "store.yml",
                    tmp_path / "store-data",
                    store_port,
                    "--web.enable-remote-write-receiver",
                )
            )
            for replica in REPLICAS:
                processes.append(
                    start_prometheus(
                        prometheus_bin,
                        dirs[replica] / "prometheus.yml",
                        tmp_path / f"data-{replica}",
                        ports[replica],
                        "--rules.alert.resend-delay=1s",
                    )
                )
            async with aiohttp.ClientSession() as http:
                rooms = await pair_answers_alike(http, ports, api_up=1, rules=RULES)
                occupancy = {dict(labels)["occupancy"]: v for labels, v in rooms["occupancy:livekit_rooms:max"].items()}
                assert occupancy == {"occupied": 3, "empty": 1}  # the simulator's rooms, on both servers

                # The store holds both copies, told apart by the replica label only; a deduplicating read
                # (Thanos Query with --query.replica-label=prometheus_replica) answers as one server does.
                async def both_copies_stored() -> bool:
                    stored = readings(await query(http, store_port, "service:livekit_api_up:max"))
                    by_replica = {
                        r: {
                            labels - {("prometheus_replica", r)}
                            for labels in stored
                            if ("prometheus_replica", r) in labels
                        }
                        for r in REPLICAS
                    }
                    return (
                        len(stored) == 2 * len(SERVICES)
                        and by_replica["a"] == by_replica["b"]
                        and len(by_replica["a"]) == len(SERVICES)
                    )

                await eventually("both servers' recorded series in the store", both_copies_stored, timeout=60)
                deduplicated = readings(
                    await query(http, store_port, "max without (prometheus_replica) (service:livekit_api_up:max)")
                )
                local = readings(await query(http, ports["a"], "service:livekit_api_up:max"))
                metric_name = ("__name__", "service:livekit_api_up:max")
                assert deduplicated == {
                    labels - {metric_name} | set(SHARED_LABELS.items()): v for labels, v in local.items()
                }
                # Read as a union without deduplication, the dashboards' state query (a sum after
                # `max without (instance, pod)`) doubles; taking the replica label out too reads the truth.
                state = 'sum(max without (instance, pod{}) (livekit_rooms{{job="livekit-exporter"}}))'
                assert await scalar(http, ports["a"], state.format("")) == len(scenario.rooms) == 4

                async def union_doubles() -> bool:
                    return await scalar(http, store_port, state.format("")) == 2 * len(scenario.rooms)

                await eventually("both servers' livekit_rooms in the store", union_doubles, timeout=60)
                assert await scalar(http, store_port, state.format(", prometheus_replica")) == len(scenario.rooms)

                # Every LiveKit service down: both servers fire the alert and send it.
                for service in SERVICES:
                    scenario.set_fault(service, Fault("reset"))
                for replica in REPLICAS:
                    await eventually(f"{ALERT} firing on {replica}", lambda r=replica: firing(http, ports[r], ALERT))
                sent = {replica: await notifications_sent(http, ports[replica]) for replica in REPLICAS}

                async def each_sent_it_again() -> bool:
                    return all([await notifications_sent(http, ports[r]) >= sent[r] + 2 for r in REPLICAS])

                await eventually("both servers sending the firing alert", each_sent_it_again)
                expected = {
                    "alertname": ALERT,
                    "severity": "critical",
                    "component": "livekit",
                    "job": "livekit-exporter",
                    **SHARED_LABELS,
                }
                held = await asyncio.to_thread(held_in_alertmanager, amtool, am_port, ALERT)
                if replica_label:  # one alert, deduplicated: the pair sent identical label sets
                    assert held == [expected]
                else:  # one per server
                    assert sorted(held, key=lambda labels: labels["prometheus_replica"]) == [
                        {**expected, "prometheus_replica": replica} for replica in REPLICAS
                    ]
                assert len(held) == alerts_held
                # ...and the recording rules still answer alike on both, now every service down.
                await pair_answers_alike(http, ports, api_up=0, rules=RULES[:1])
        except AssertionError:
            print("alertmanager.log", am_log.read_text()[-3000:])
            raise
        finally:
            for process in processes:
                stop_process(process)


async def pair_answers_alike(
    http: aiohttp.ClientSession, ports: dict[str, int], *, api_up: float, rules: tuple[str, ...]
) -> dict[str, dict[frozenset, float | None]]:
    """Waits until both servers have evaluated the recording rules on a scrape where every service's
    service:livekit_api_up:max is api_up and each of `rules` has a result; then each rule gives the
    same labels and values on both, without the external labels (they never reach local queries).
    Each rule's readings."""

    async def ready() -> bool:
        for port in ports.values():
            api = readings(await query(http, port, "service:livekit_api_up:max"))
            if len(api) != len(SERVICES) or set(api.values()) != {api_up}:
                return False
            for rule in rules:
                if not readings(await query(http, port, rule)):
                    return False
        return True

    await eventually("the recording rules on both servers", ready, timeout=60)
    out = {}
    for rule in rules:
        on_a, on_b = [readings(await query(http, ports[replica], rule)) for replica in REPLICAS]
        assert on_a == on_b, rule
        assert not any(name in ("prometheus_replica", *SHARED_LABELS) for labels in on_a for name, _ in labels), rule
        out[rule] = on_a
    return out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"prometheus.replica_label": "prometheus_replica"},
            r"prometheus\.replica_label: 'prometheus_replica' is not a key of prometheus\.external_labels; give each "
            r"server of the pair its own value there, e\.g\. \{prometheus_replica: a\} and \{prometheus_replica: b\}",
        ),
        (
            {"prometheus.external_labels": {"0replica": "a"}, "prometheus.replica_label": "0replica"},
            r"prometheus\.external_labels: '0replica' is not a label name",
        ),
        (
            {"prometheus.external_labels": {"replica": "a"}, "prometheus.replica_label": "prometheus-replica"},
            r"prometheus\.replica_label: 'prometheus-replica' is not a label name \(letters, digits and _",
        ),
        (
            {"prometheus.external_labels": {"prometheus_replica": 1}},
            r"prometheus\.external_labels\.prometheus_replica: 1 is not a non-empty string \(quote numbers",
        ),
        (
            {"prometheus.external_labels": ["prometheus_replica"]},
            r"prometheus\.external_labels: expected a mapping of label names to values",
        ),
        ({"prometheus.replica_label": None}, r"prometheus\.replica_label: None is not a string"),
    ],
)
def test_a_bad_ha_setting_names_the_key_and_what_to_do(overrides, message):
    with pytest.raises(MixinError, match=message):
        generate(load(ROOT / DEFAULT_CONFIG, overrides))
