"""Property tests of the event-to-metric mapping (hypothesis): any valid batch applies exactly what
it says, any batch with one broken event changes nothing and names that event.

The events are generated from the contract itself (events/model.py's msgspec Structs, read with
msgspec.inspect): every field of every type, with its bounds, optional fields present or absent,
so a field added to the contract is generated too. Label values come from small pools (the
cardinality guard stays out of the way; quotes, backslashes, newlines and non-ASCII included, so
the exposition's escaping is exercised), as do call ids (so starts and ends of the same call meet).

An independent model of the documented mapping (docs/events-api.md; `Model` below) says what
every voice_agent_* sample must read; it is compared with everything the exporter exposes.

    1. Pipeline directly: a fresh pipeline per example, 1 to 3 batches, every sample compared.
    2. Over HTTP (build_app on loopback): valid batches (JSON or NDJSON) answered 200 with their
       discarded timings, the model kept across examples; the OpenMetrics scrape (exemplars) parses.
    3. Over HTTP: a valid batch with one event broken (a wrong type, a missing required field, an
       unknown field, a negative number) gets 400, every problem names that event's index (and
       line), and no sample but the rejection counter changes.

Deterministic (derandomize=True, no example database) and bounded (max_examples).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import defaultdict
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from conftest import AUTH, EVENTS_TOKEN, require_module, samples
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as om_families

from livekit_exporter.config import EventsConfig, Price
from livekit_exporter.events import decode
from livekit_exporter.events import model as contract
from livekit_exporter.events.pipeline import HISTOGRAMS, Pipeline
from livekit_exporter.telemetry import Telemetry

SETTINGS = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": [HealthCheck.too_slow]}

MAX_LATENCY = 30.0  # events.max_latency's default

PRICES = (
    Price("openai", "gpt-4o-mini", usd_per_million_input_tokens=0.15, usd_per_million_output_tokens=0.6,
          usd_per_million_cached_tokens=0.075),
    Price("openai", usd_per_million_input_tokens=2.5, usd_per_million_output_tokens=10.0),  # any other model
    Price("deepgram", usd_per_stt_audio_minute=0.0077),
    Price("elevenlabs", usd_per_million_characters=50.0, usd_per_tts_audio_minute=0.01),
    Price("free", usd_per_million_input_tokens=0, usd_per_stt_audio_minute=0, usd_per_million_characters=0),
)  # "unpriced" has no entry; "OpenAI" matches openai's (case-insensitively)

# Pools of label values: few (the guard admits labels.max_values = 50 per label), awkward ones included.
WEIRD = 'q"uo\\te\nnew-line ünï'
POOLS: dict[str, list[str]] = {
    "agent": ["support", "sales", WEIRD],
    "campaign": ["", "spring", WEIRD],
    "outcome": ["qualified", "no_answer", WEIRD],
    "dependency": ["deepgram", "db"],
    "tool": ["lookup_order", WEIRD],
    "error_type": ["timeout", "rate_limited"],
    "provider": ["openai", "OpenAI", "deepgram", "elevenlabs", "free", "unpriced"],
    "model": ["gpt-4o-mini", "nova-3", "flash", "other"],
    "call_id": ["c1", "c2", "c3", "ü-call"],  # call_started/answered/ended: the same calls meet
}
for stage in ("stt", "llm", "tts"):
    POOLS[f"{stage}_provider"] = POOLS["provider"]
    POOLS[f"{stage}_model"] = POOLS["model"]


# -- events, generated from the contract -----------------------------------------------------------


def _unwrap(t: Any) -> Any:
    while isinstance(t, mi.Metadata):
        t = t.type
    return t


def _value(name: str, t: Any) -> st.SearchStrategy[Any]:
    """A strategy for a JSON value of field `name` of type `t` (msgspec.inspect), within its bounds."""
    t = _unwrap(t)
    if isinstance(t, mi.UnionType):
        return st.one_of(*(_value(name, u) for u in t.types))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.LiteralType):
        return st.sampled_from(t.values)
    if isinstance(t, mi.IntType):
        return st.one_of(st.integers(t.ge, min(t.le, 2000)), st.integers(t.ge, t.le))
    if isinstance(t, mi.FloatType):
        # Mostly plausible timings, around events.max_latency too; now and then anything in bounds.
        return st.one_of(st.floats(t.ge, 2 * MAX_LATENCY), st.sampled_from([0.0, MAX_LATENCY, 31.0]),
                         st.floats(t.ge, t.le))
    if isinstance(t, mi.StrType):
        if t.pattern:
            return st.from_regex(t.pattern, fullmatch=True)
        if name in POOLS:
            return st.sampled_from([v for v in POOLS[name] if (t.min_length or 0) <= len(v) <= (t.max_length or 10**6)])
        return st.text(min_size=t.min_length or 0, max_size=min(t.max_length or 64, 64))
    raise AssertionError(f"no strategy for {name}: {t!r} (a new kind of field in events/model.py?)")


def _fix(event: dict[str, Any]) -> dict[str, Any]:
    """The two rules the schema cannot express (decode.check): cached <= input tokens, and an
    interrupted turn has at least one interruption."""
    if event["type"] == "llm" and event.get("cached_tokens", 0) > event.get("input_tokens", 0):
        event["cached_tokens"] = event.get("input_tokens", 0)
    if event["type"] == "turn" and event.get("interrupted") and event.get("interruptions") == 0:
        event["interruptions"] = 1
    return event


def _event_strategy(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    info = mi.type_info(cls)
    required = {f.name: _value(f.name, f.type) for f in info.fields if f.required}
    optional = {f.name: _value(f.name, f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries({info.tag_field: st.just(info.tag), **required}, optional=optional).map(_fix)


EVENT = st.one_of(*(_event_strategy(cls) for cls in contract.EVENT_TYPES))
BATCH = st.lists(EVENT, min_size=1, max_size=20)


def fields_of(event: dict[str, Any]) -> list[mi.Field]:
    cls = next(c for c in contract.EVENT_TYPES if c.__struct_config__.tag == event["type"])
    return list(mi.type_info(cls).fields)


def typed(events: list[dict[str, Any]]) -> list[contract.Event]:
    """JSON events -> the contract's Structs; the generator only makes valid ones (this checks it)."""
    out = msgspec.convert(events, list[contract.Event])
    assert not any(map(decode.check, out))
    return out


# -- the model: what the documented mapping says each sample reads ---------------------------------

Key = tuple[str, frozenset]


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


class Model:
    """The voice_agent_* samples (and the events API's own counters) after the batches applied so far."""

    def __init__(self, prices: tuple[Price, ...] = PRICES, max_latency: float = MAX_LATENCY):
        self.max_latency = max_latency
        self.prices = prices
        self.s: dict[Key, float] = defaultdict(float)
        self.active: dict[str, tuple[str, str]] = {}  # call_id -> (agent, direction) of its start
        self.active_series: set[tuple[str, str]] = set()
        self.gauges: dict[Key, float] = {}

    def add(self, name: str, amount: float, **labels: str) -> None:
        self.s[key(name, **labels)] += amount

    def observe(self, name: str, v: float, **labels: str) -> None:
        bounds = (*_bounds(name), math.inf)
        for b in bounds:
            le = "+Inf" if b == math.inf else str(float(b))
            self.add(name + "_bucket", 1.0 if v <= b else 0.0, **labels, le=le)
        self.add(name + "_count", 1, **labels)
        self.add(name + "_sum", v, **labels)

    def price(self, provider: str, model: str) -> Price | None:
        exact = [p for p in self.prices if p.provider.lower() == provider.lower() and p.model.lower() == model.lower()]
        wildcard = [p for p in self.prices if p.provider.lower() == provider.lower() and p.model == "*"]
        return (exact or wildcard or [None])[0]

    def cost(self, component: str, e: dict[str, Any]) -> None:
        p = self.price(e["provider"], e["model"])
        amount = None
        if p is not None and component == "llm":
            if p.usd_per_million_input_tokens is not None or p.usd_per_million_output_tokens is not None:
                inp, out = p.usd_per_million_input_tokens or 0, p.usd_per_million_output_tokens or 0
                cached = inp if p.usd_per_million_cached_tokens is None else p.usd_per_million_cached_tokens
                n_in, n_cached = e.get("input_tokens", 0), e.get("cached_tokens", 0)
                amount = ((n_in - n_cached) * inp + n_cached * cached + e.get("output_tokens", 0) * out) / 1e6
        elif p is not None and component == "stt":
            if p.usd_per_stt_audio_minute is not None:
                amount = e["audio_seconds"] / 60 * p.usd_per_stt_audio_minute
        elif p is not None and (p.usd_per_million_characters is not None or p.usd_per_tts_audio_minute is not None):
            amount = (e.get("characters", 0) / 1e6 * (p.usd_per_million_characters or 0)
                      + e.get("audio_seconds", 0.0) / 60 * (p.usd_per_tts_audio_minute or 0))
        if amount is None:
            self.add("livekit_exporter_unpriced_usage_events_total", 1, component=component, provider=e["provider"],
                     model=e["model"])
        else:
            self.add("voice_agent_estimated_cost_dollars_total", amount, agent=e["agent"], component=component,
                     provider=e["provider"], model=e["model"])

    def apply(self, events: list[dict[str, Any]]) -> list[tuple[int, str]]:
        """Applies a batch; returns the discarded timings (index, field), in the answer's order."""
        discarded = []
        for i, e in enumerate(events):
            t, agent = e["type"], e.get("agent")
            self.add("livekit_exporter_events_total", 1, type=t)
            call = {"agent": agent, "direction": e.get("direction"), "campaign": e.get("campaign", "")}
            if t == "call_started":
                self.add("voice_agent_calls_started_total", 1, **call)
                if e["call_id"] not in self.active:
                    self.active[e["call_id"]] = (agent, e["direction"])
                    self.active_series.add((agent, e["direction"]))
            elif t == "call_answered":
                self.add("voice_agent_calls_answered_total", 1, **call, answered_by=e.get("answered_by", "unknown"))
                if e.get("setup_seconds") is not None:
                    self.observe("voice_agent_call_setup_seconds", e["setup_seconds"], agent=agent,
                                 direction=e["direction"])
            elif t == "call_ended":
                self.add("voice_agent_calls_ended_total", 1, **call, outcome=e["outcome"])
                if e.get("duration_seconds") is not None:
                    self.observe("voice_agent_call_duration_seconds", e["duration_seconds"], agent=agent,
                                 direction=e["direction"], outcome=e["outcome"])
                self.active.pop(e["call_id"], None)  # the gauge of the call's *start* goes down
            elif t == "calls_queued":
                self.gauges[key("voice_agent_calls_queued", agent=agent, campaign=e.get("campaign", ""))] = e["queued"]
            elif t == "campaign_status":
                self.gauges[key("voice_agent_campaign_running", campaign=e["campaign"])] = float(e["running"])
            elif t == "dependency_status":
                self.gauges[key("voice_agent_dependency_up", agent=agent, dependency=e["dependency"])] = float(e["up"])
            elif t == "turn":
                interrupted = bool(e.get("interrupted", False))
                self.add("voice_agent_turns_total", 1, agent=agent, interrupted=str(interrupted).lower())
                n = e.get("interruptions")
                self.add("voice_agent_interruptions_total", int(interrupted) if n is None else n, agent=agent)
                for field, metric, stage in (
                    ("e2e_latency_seconds", "voice_agent_turn_latency_seconds", None),
                    ("end_of_utterance_delay_seconds", "voice_agent_end_of_utterance_delay_seconds", None),
                    ("transcription_delay_seconds", "voice_agent_transcription_delay_seconds", "stt"),
                    ("llm_ttft_seconds", "voice_agent_llm_time_to_first_token_seconds", "llm"),
                    ("tts_ttfb_seconds", "voice_agent_tts_time_to_first_byte_seconds", "tts"),
                ):
                    v = e.get(field)
                    if v is None:
                        continue
                    if v > self.max_latency:
                        discarded.append((i, field))
                        continue
                    labels = {"agent": agent}
                    if stage:
                        labels |= {"provider": e.get(f"{stage}_provider") or "unknown",
                                   "model": e.get(f"{stage}_model") or "unknown"}
                    self.observe(metric, v, **labels)
            elif t == "stt":
                self.add("voice_agent_stt_audio_seconds_total", e["audio_seconds"], agent=agent,
                         provider=e["provider"], model=e["model"])
                self.cost("stt", e)
            elif t == "llm":
                for kind in ("input", "output", "cached"):
                    self.add("voice_agent_llm_tokens_total", e.get(f"{kind}_tokens", 0), agent=agent,
                             provider=e["provider"], model=e["model"], type=kind)
                if e.get("duration_seconds") is not None:
                    self.observe("voice_agent_llm_request_duration_seconds", e["duration_seconds"], agent=agent,
                                 provider=e["provider"], model=e["model"])
                self.cost("llm", e)
            elif t == "tts":
                self.add("voice_agent_tts_characters_total", e.get("characters", 0), agent=agent,
                         provider=e["provider"], model=e["model"])
                self.cost("tts", e)
            elif t == "tool_call":
                self.observe("voice_agent_tool_call_duration_seconds", e["duration_seconds"], agent=agent,
                             tool=e["tool"])
            elif t == "error":
                self.add("voice_agent_errors_total", 1, agent=agent, component=e["component"], type=e["error_type"],
                         recoverable=str(e.get("recoverable", False)).lower())
            else:
                raise AssertionError(f"the model does not know event type {t!r}")
        discarded.sort()  # the pipeline lists them by event, then in its stage order
        for _, field in discarded:
            self.add("livekit_exporter_event_latencies_discarded_total", 1, type="turn", field=field)
        return discarded

    def expected(self) -> dict[Key, float]:
        out = dict(self.s)
        counts: dict[tuple[str, str], int] = defaultdict(int)
        for labels in self.active.values():
            counts[labels] += 1
        for agent, direction in self.active_series:
            out[key("voice_agent_calls_active", agent=agent, direction=direction)] = counts[agent, direction]
        out.update(self.gauges)
        return out


def _bounds(name: str) -> tuple[float, ...]:
    return HISTOGRAMS[name][2]


STAGE_ORDER = ["e2e_latency_seconds", "end_of_utterance_delay_seconds", "transcription_delay_seconds",
               "llm_ttft_seconds", "tts_ttfb_seconds"]


def _ordered(discarded: list[tuple[int, str]]) -> list[tuple[int, str]]:
    return sorted(discarded, key=lambda d: (d[0], STAGE_ORDER.index(d[1])))


# What the comparison covers: the mapping's metrics and the events API's counters (not process_*,
# scrape timings and the like, which move on their own).
COMPARED = ("voice_agent_", "livekit_exporter_events_total", "livekit_exporter_event_latencies_discarded_total",
            "livekit_exporter_unpriced_usage_events_total")


def compared(s: dict[Key, float]) -> dict[Key, float]:
    return {k: v for k, v in s.items() if k[0].startswith(COMPARED) and not k[0].endswith("_created")}


def assert_matches(actual: dict[Key, float], expected: dict[Key, float]) -> None:
    """Every sample as the model says (a sample the exporter leaves out must be 0 in the model)."""
    actual = compared(actual)
    wrong = {k: (actual.get(k), expected.get(k, 0.0)) for k in actual.keys() | expected.keys()
             if not math.isclose(actual.get(k, 0.0), expected.get(k, 0.0), rel_tol=1e-9, abs_tol=1e-12)}
    assert not wrong, f"samples (exporter, model) that differ: {sorted(wrong.items(), key=str)[:10]}"


# -- 1. the pipeline itself ---------------------------------------------------------------------------


@settings(max_examples=200, **SETTINGS)
@given(st.lists(BATCH, min_size=1, max_size=3))
def test_any_valid_batches_apply_exactly_what_they_say(batches):
    telemetry = Telemetry()
    pipeline = Pipeline(EventsConfig(prices=PRICES), telemetry)
    model = Model()
    for batch in batches:
        discarded = pipeline.apply(typed(batch))
        assert _ordered(model.apply(batch)) == [(d.index, d.field) for d in discarded]
    s = samples(generate_latest(telemetry.registry).decode())
    assert_matches(s, model.expected())
    assert not [k for k, v in s.items() if k[0] == "livekit_exporter_label_overflow_total" and v]


# -- 2. and 3. over HTTP -------------------------------------------------------------------------------


def _body(events: list[dict[str, Any]], ndjson: bool) -> tuple[str, str]:
    if ndjson:
        return "\n".join(json.dumps(e) for e in events) + "\n", "application/x-ndjson"
    return json.dumps({"events": events}), "application/json"


class Remote:
    """The aiohttp test client, driven from hypothesis' (synchronous) test in a worker thread."""

    def __init__(self, client: Any, loop: asyncio.AbstractEventLoop):
        self.client, self.loop = client, loop

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def post(self, events: list[dict[str, Any]], ndjson: bool = False) -> tuple[int, Any]:
        body, ctype = _body(events, ndjson)

        async def go() -> tuple[int, Any]:
            resp = await self.client.post("/v1/events", data=body, headers={"Content-Type": ctype, **AUTH})
            return resp.status, await resp.json()

        return self.run(go())

    def scrape(self, openmetrics: bool = False) -> str:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else {}

        async def go() -> str:
            resp = await self.client.get("/metrics", headers=headers)
            assert resp.status == 200
            return await resp.text()

        return self.run(go())


async def _remote(events_exporter) -> Remote:
    return Remote(await events_exporter(prices=PRICES), asyncio.get_running_loop())


async def test_valid_batches_over_http_apply_exactly_what_they_say(events_exporter):
    remote = await _remote(events_exporter)
    model = Model()  # across examples: the exporter keeps its state, and so does the model

    @settings(max_examples=100, **SETTINGS)
    @given(BATCH, st.booleans())
    def check(batch, ndjson):
        status, answer = remote.post(batch, ndjson)
        assert status == 200, answer
        discarded = _ordered(model.apply(batch))
        assert answer["accepted"] == len(batch)
        assert [(d["index"], d["path"]) for d in answer["discarded"]] == [
            (i, f"$.{f}" if ndjson else f"$.events[{i}].{f}") for i, f in discarded]
        if ndjson:
            assert [d["line"] for d in answer["discarded"]] == [i + 1 for i, _ in discarded]
        assert_matches(samples(remote.scrape()), model.expected())
        list(om_families(remote.scrape(openmetrics=True)))  # exemplars and all: the scrape parses

    await asyncio.to_thread(check)


# One event broken. Each returns the broken event, or None when the mutation does not apply to it.
def _wrong_type(event: dict[str, Any], data: st.DataObject) -> dict[str, Any] | None:
    field = data.draw(st.sampled_from(fields_of(event)), label="field")
    t = _unwrap(field.type)
    if isinstance(t, mi.UnionType):  # optional: null is fine there, the wrong type is that of the value
        t = _unwrap(next(u for u in t.types if not isinstance(u, mi.NoneType)))
    wrong: list[Any] = [[], {"x": 1}]
    if isinstance(t, mi.StrType | mi.LiteralType):
        wrong += [5, True]
    elif isinstance(t, mi.IntType):
        wrong += ["7", 1.5, True]
    elif isinstance(t, mi.FloatType):
        wrong += ["0.5", True]
    elif isinstance(t, mi.BoolType):
        wrong += ["true", 1, 0]
    if field.required:
        wrong.append(None)
    return {**event, field.name: data.draw(st.sampled_from(wrong), label="value")}


def _missing(event: dict[str, Any], data: st.DataObject) -> dict[str, Any] | None:
    required = [f.name for f in fields_of(event) if f.required] + ["type"]
    name = data.draw(st.sampled_from(required), label="removed")
    return {k: v for k, v in event.items() if k != name}


def _unknown(event: dict[str, Any], data: st.DataObject) -> dict[str, Any] | None:
    names = {f.name for f in fields_of(event)} | {"type"}
    name = data.draw(st.text(min_size=1, max_size=20).filter(lambda n: n not in names), label="unknown field")
    return {**event, name: data.draw(st.sampled_from([1, "x", None, True]), label="value")}


def _negative(event: dict[str, Any], data: st.DataObject) -> dict[str, Any] | None:
    numeric = [f for f in fields_of(event)
               if isinstance(t := _unwrap(f.type), mi.IntType | mi.FloatType)
               or (isinstance(t, mi.UnionType) and any(isinstance(_unwrap(u), mi.IntType | mi.FloatType)
                                                         for u in t.types))]
    if not numeric:
        return None
    field = data.draw(st.sampled_from(numeric), label="field")
    is_int = "Int" in repr(field.type)
    value = data.draw(st.integers(-(10**12), -1) if is_int else st.floats(max_value=-1e-9, min_value=-1e9), label="value")
    return {**event, field.name: value}


MUTATIONS = {"wrong type": _wrong_type, "missing field": _missing, "unknown field": _unknown, "negative": _negative}


async def test_a_batch_with_one_broken_event_changes_nothing(events_exporter):
    remote = await _remote(events_exporter)
    model = Model()
    # Some state first, so that "nothing changes" is about something.
    seed = [{"type": "call_started", "agent": "support", "call_id": "c1", "direction": "inbound"},
            {"type": "calls_queued", "agent": "sales", "campaign": "spring", "queued": 3},
            {"type": "llm", "agent": "support", "provider": "openai", "model": "gpt-4o-mini", "input_tokens": 10}]
    assert (await asyncio.to_thread(remote.post, seed))[0] == 200
    model.apply(seed)
    rejected = key("livekit_exporter_event_requests_rejected_total", reason="invalid")

    @settings(max_examples=150, **SETTINGS)
    @given(BATCH, st.sampled_from(sorted(MUTATIONS)), st.booleans(), st.data())
    def check(batch, mutation, ndjson, data):
        index = data.draw(st.integers(0, len(batch) - 1), label="index")
        broken = MUTATIONS[mutation](batch[index], data)
        if broken is None:
            return
        batch = [*batch[:index], broken, *batch[index + 1:]]
        before = samples(remote.scrape())
        status, answer = remote.post(batch, ndjson)
        after = samples(remote.scrape())
        assert status == 400, answer
        assert "nothing was applied" in answer["error"]
        assert answer["problems"], answer
        assert {p["index"] for p in answer["problems"]} == {index}, answer
        if ndjson:
            assert {p["line"] for p in answer["problems"]} == {index + 1}
        else:
            assert all(p["path"].startswith(f"$.events[{index}]") for p in answer["problems"]), answer
        assert after[rejected] == before.get(rejected, 0) + 1
        assert_matches(after, model.expected())
        assert compared(after) == compared(before)

    await asyncio.to_thread(check)


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_each_mutation_breaks_the_contract(mutation):
    """The mutations do what they say: each broken event is refused by the contract's decoder."""

    @settings(max_examples=50, **SETTINGS)
    @given(EVENT, st.data())
    def check(event, data):
        broken = MUTATIONS[mutation](event, data)
        if broken is not None:
            with pytest.raises(msgspec.ValidationError):
                msgspec.convert(broken, contract.Event)

    check()


# -- the contract's patterns mean what they say -------------------------------------------------------

TRACE_ID = re.compile(r"[0-9a-f]{32}")


def _accepts(**fields: Any) -> bool:
    body = msgspec.json.encode({"events": [{"type": "turn", "agent": "a", **fields}]})
    try:
        decode.decode_json(body, 10)
    except decode.BadBatch:
        return False
    return True


@settings(max_examples=100, **SETTINGS)
@given(st.one_of(st.text(max_size=40), st.from_regex(TRACE_ID, fullmatch=True).map(lambda s: s + "\n")))
@example("0" * 32 + "\n")  # a trailing newline: `$` matches before it in Python's (and msgspec's) re.search
def test_a_trace_id_is_accepted_exactly_when_it_is_32_lowercase_hex_digits(trace_id):
    assert _accepts(trace_id=trace_id) == bool(TRACE_ID.fullmatch(trace_id)), repr(trace_id)


@settings(max_examples=100, **SETTINGS)
@given(st.one_of(st.text(max_size=70), st.text(min_size=1, max_size=64).map(lambda s: s + "\n")))
@example("c-1\n")
@example("a" * 64 + "\n")  # 65 characters, one a control character
def test_an_exemplar_call_id_is_accepted_exactly_when_1_to_64_characters_without_control_characters(call_id):
    documented = 1 <= len(call_id) <= 64 and not any(ord(c) < 0x20 or ord(c) == 0x7F for c in call_id)
    assert _accepts(call_id=call_id) == documented, repr(call_id)


# -- the OpenAPI document against the running exporter (schemathesis) ---------------------------------


@pytest.fixture(scope="module")
def exporter_url():
    """An exporter with the events API (and the simulator it reads) on loopback, in a thread of its own:
    schemathesis calls it with blocking requests."""
    import threading

    from aiohttp import web

    from livekit_exporter.config import Config, LiveKitConfig, Secret
    from livekit_exporter.server import build_app
    from livekit_exporter.simulator import Scenario, Simulator

    ready, stop, where = threading.Event(), None, {}

    async def serve() -> None:
        nonlocal stop
        stop = asyncio.Event()
        scenario = Scenario(api_key="APItestkey", api_secret="test-secret-" + "s" * 32)
        async with Simulator(scenario) as sim:
            config = Config(
                livekit=LiveKitConfig(url=sim.url, api_key=scenario.api_key, api_secret=Secret(scenario.api_secret)),
                events=EventsConfig(tokens=(Secret(EVENTS_TOKEN),), prices=PRICES, max_events=50),
                source="<test>",
            )
            runner = web.AppRunner(build_app(config), access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            where["url"], where["loop"] = f"http://127.0.0.1:{runner.addresses[0][1]}", asyncio.get_running_loop()
            ready.set()
            await stop.wait()
            await runner.cleanup()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(30), "the exporter did not start"
    yield where["url"]
    where["loop"].call_soon_threadsafe(stop.set)
    thread.join(30)


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_every_answer_matches_the_openapi_document(exporter_url, mode):
    """schemathesis generates requests from schemas/openapi.yaml (bodies from events.schema.json, the
    Idempotency-Key header; "negative": requests that break the document); every answer must be one
    the document describes (status, content type, body schema, headers) and none a 5xx."""
    from importlib.resources import files

    require_module("schemathesis")
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_headers_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    document = files("livekit_exporter").joinpath("schemas/openapi.yaml")
    operation = schemathesis.openapi.from_path(str(document))["/v1/events"]["POST"]
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
              response_headers_conformance]
    statuses: set[int] = set()

    @settings(max_examples=150, **{**SETTINGS, "suppress_health_check": list(HealthCheck)})
    @given(operation.as_strategy(GenerationMode(mode)))
    def check(case):
        case.headers = {**(case.headers or {}), **AUTH}
        response = case.call(base_url=exporter_url, timeout=30)
        statuses.add(response.status_code)
        case.validate_response(response, checks=checks)

    check()
    assert 200 in statuses and 400 in statuses, statuses  # both accepted and refused batches were tried
