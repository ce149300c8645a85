"""Exemplars: a turn's call_id and trace_id ride on its latency observations (OpenMetrics only),
so a dot on a slow p99 leads to its call; never a label, so the series count does not change."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from conftest import AUTH, free_port, prometheus_api, require_binary, samples, start_prometheus
from livekit_exporter.server import build_app

OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def turn(**extra) -> dict:
    return {"type": "turn", "agent": "support-agent", "e2e_latency_seconds": 0.9, "llm_ttft_seconds": 0.42,
            "transcription_delay_seconds": 0.21, "tts_ttfb_seconds": 0.18, "end_of_utterance_delay_seconds": 0.3,
            "llm_provider": "openai", "llm_model": "gpt-4o-mini", **extra}


async def post(client, *events: dict):
    return await client.post("/v1/events", json={"events": list(events)}, headers=AUTH)


async def test_a_turns_call_and_trace_are_exemplars_on_the_buckets_its_latencies_fall_in(events_exporter):
    client = await events_exporter()
    r = await post(client, turn(call_id="call-0042", trace_id=TRACE))
    assert r.status == 200, await r.text()
    text = await (await client.get("/metrics", headers=OPENMETRICS)).text()
    exemplars = {}
    for fam in om_families(text):
        for s in fam.samples:
            if s.exemplar:
                exemplars[(s.name, s.labels.get("le"))] = (s.exemplar.labels, s.exemplar.value)
    want = {"call_id": "call-0042", "trace_id": TRACE}
    assert exemplars[("voice_agent_turn_latency_seconds_bucket", "1.0")] == (want, 0.9)  # 0.8 < 0.9 <= 1
    assert exemplars[("voice_agent_llm_time_to_first_token_seconds_bucket", "0.5")] == (want, 0.42)
    assert exemplars[("voice_agent_transcription_delay_seconds_bucket", "0.3")] == (want, 0.21)
    assert exemplars[("voice_agent_tts_time_to_first_byte_seconds_bucket", "0.2")] == (want, 0.18)
    assert exemplars[("voice_agent_end_of_utterance_delay_seconds_bucket", "0.3")] == (want, 0.3)
    assert {name for name, _ in exemplars} == {
        "voice_agent_turn_latency_seconds_bucket", "voice_agent_llm_time_to_first_token_seconds_bucket",
        "voice_agent_transcription_delay_seconds_bucket", "voice_agent_tts_time_to_first_byte_seconds_bucket",
        "voice_agent_end_of_utterance_delay_seconds_bucket"}


async def test_the_text_format_and_the_series_are_the_same_with_or_without_exemplars(events_exporter):
    plain, with_ids = await events_exporter(), await events_exporter()
    turns = [turn(e2e_latency_seconds=0.5 + i / 10) for i in range(5)]
    assert (await post(plain, *turns)).status == 200
    assert (await post(with_ids, *[{**t, "call_id": f"c{i}", "trace_id": TRACE} for i, t in enumerate(turns)])).status == 200

    def voice(text: str) -> dict:
        return {k: v for k, v in samples(text).items() if k[0].startswith("voice_agent_")}

    a = await (await plain.get("/metrics")).text()
    b = await (await with_ids.get("/metrics")).text()
    assert voice(a) == voice(b) and voice(a)
    assert "call_id" not in b and TRACE not in b  # the text format carries no exemplar
    om = await (await with_ids.get("/metrics", headers=OPENMETRICS)).text()
    assert 'call_id="c4"' in om
    series = lambda text: {(s.name, tuple(sorted(s.labels.items()))) for f in om_families(text) for s in f.samples}  # noqa: E731
    om_plain = await (await plain.get("/metrics", headers=OPENMETRICS)).text()
    assert {k for k in series(om) if k[0].startswith("voice_agent_")} == \
        {k for k in series(om_plain) if k[0].startswith("voice_agent_")}


async def test_an_exemplar_too_long_or_a_trace_id_that_is_not_one_is_refused_whole(events_exporter):
    client = await events_exporter()
    # a NUL would make Prometheus refuse the whole OpenMetrics scrape: control characters are refused
    for bad in ({"call_id": "x" * 65}, {"trace_id": "not-a-trace"}, {"trace_id": TRACE.upper()}, {"call_id": ""},
                {"call_id": "a\u0000b"}, {"call_id": "line\nbreak"}, {"call_id": "tab\there"}):
        r = await post(client, turn(), turn(**bad))
        assert r.status == 400, bad
        answer = await r.json()
        assert answer["problems"][0]["index"] == 1, answer
    text = await (await client.get("/metrics")).text()
    assert samples(text).get(("voice_agent_turns_total", frozenset({("agent", "support-agent"), ("interrupted", "false")}))) is None


async def test_prometheus_with_exemplar_storage_returns_them(events_config, tmp_path):
    prometheus_bin = require_binary("prometheus")
    runner = web.AppRunner(build_app(events_config()), access_log=None)
    await runner.setup()
    port, prom_port = free_port(), free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    (tmp_path / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        f"scrape_configs:\n  - job_name: livekit-exporter\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n")
    prom = start_prometheus(prometheus_bin, tmp_path / "prometheus.yml", tmp_path / "data", prom_port,
                            "--enable-feature=exemplar-storage")
    try:
        async with aiohttp.ClientSession() as http:
            r = await http.post(f"http://127.0.0.1:{port}/v1/events", headers=AUTH,
                                json={"events": [turn(call_id="call-slow", trace_id=TRACE, e2e_latency_seconds=4.5),
                                                 # odd but valid: quotes, a backslash, braces, non-ASCII
                                                 turn(call_id='q"\\} # x 1 ✓🎧', e2e_latency_seconds=1.9)]})
            assert r.status == 200
            found = []
            for _ in range(120):
                await asyncio.sleep(0.25)
                try:
                    found = (await prometheus_api(http, prom_port, "query_exemplars", start="0", end="9999999999",
                                                  query="voice_agent_turn_latency_seconds_bucket")).get("data") or []
                except aiohttp.ClientError:
                    continue
                if found:
                    break
            up = (await prometheus_api(http, prom_port, "query", query="up"))["data"]["result"]
        assert [u["value"][1] for u in up] == ["1"], up  # the scrape with the odd call_id is whole
        assert found, "no exemplar stored"
        found = [s for s in found if s["seriesLabels"]["le"] == "5.0"]
        (series,) = found
        assert series["seriesLabels"]["le"] == "5.0"  # 4 < 4.5 <= 5
        assert series["exemplars"][0]["labels"] == {"call_id": "call-slow", "trace_id": TRACE}
        assert float(series["exemplars"][0]["value"]) == 4.5
    finally:
        prom.terminate()
        prom.wait(10)
        await runner.cleanup()
