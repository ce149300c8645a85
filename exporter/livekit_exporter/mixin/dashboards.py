"""The Grafana dashboards, generated with grafana-foundation-sdk from the same configuration as the rules.

Every panel is a `P`: its question (the description), its unit and its queries. The queries use the
recording rules of rules.py by name (one source of every window and threshold), `$__rate_interval`
for their own rates, the `$job` (and `$agent`, `$campaign`) variables, and the high-availability
aggregation of docs/alerts.md: event counters are summed over replicas, LiveKit-state and report
gauges are taken with `max` first. `fault=True` marks a panel that by design shows data only while
something goes wrong (errors, rejections); the data test drives the faults for those.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .config import seconds
from .rules import Mixin, qname

GRAFANA_VERSION = "11.6.0"  # the grafana-foundation-sdk build pinned in pyproject.toml
DS = "${datasource}"
RI = "$__rate_interval"


@dataclass
class P:
    title: str
    description: str
    unit: str
    targets: list[tuple[str, str]]  # (expr, legend)
    kind: str = "timeseries"  # timeseries, stat, heatmap, table
    w: int = 12
    h: int = 8
    stack: bool = False
    fault: bool = False
    max: float | None = None
    exemplars: bool = False  # the turn-latency histograms carry call_id / trace_id exemplars
    threshold: float | None = None  # a dashed red line (a timeseries' limit: a threshold of the alerts)
    yunit: str = ""  # a heatmap's y axis (its buckets); `unit` formats its cells
    anchor: str = ""  # how an alert's dashboard_url names this panel (rules.ALERT_PANELS)


def layout(m: Mixin):
    """(board, row title, panels with their ids): ids in the order render() gives them."""
    for board in boards(m):
        pid = 0
        rows = []
        for row, panels in board.rows:
            pid += 1
            row_id, placed = pid, []
            for p in panels:
                if p.targets:
                    pid += 1
                    placed.append((pid, p))
            rows.append((row, row_id, placed))
        yield board, rows


def panel_ids(m: Mixin) -> dict[tuple[str, str], int]:
    """(dashboard key, panel anchor) -> the panel's id in the generated JSON."""
    return {
        (board.key, p.anchor): pid
        for board, rows in layout(m)
        for _, _, placed in rows
        for pid, p in placed
        if p.anchor
    }


@dataclass
class Board:
    key: str  # links.dashboards key
    title: str
    description: str
    variables: tuple[str, ...]
    rows: list[tuple[str, list[P]]] = field(default_factory=list)

    def row(self, title: str, *panels: P) -> None:
        self.rows.append((title, list(panels)))


def boards(m: Mixin) -> list[Board]:
    """Every dashboard, as data."""
    lat = m.cfg["voice_agents"]["latency"]
    lw = lat.window()
    quantiles = sorted({*[float(x) for x in m.cfg["voice_agents"]["latency_quantiles"]], lat.number("quantile")})
    st = m.cfg["voice_agents"]["stages"]
    sq, sw = qname(st.number("quantile")), st.window()
    api = m.cfg["livekit_api"]
    api_p = f"service:livekit_api_request_duration_seconds:{qname(api['latency'].number('quantile'))}_{api['latency'].window()}"
    api_ratio = f"service:livekit_api_errors:ratio_rate{api['error_ratio'].window()}"
    egress_w = m.cfg["media"]["egress_failure_ratio"].window()
    ingress_w = m.cfg["media"]["ingress_failure_ratio"].window()
    sip_w = m.cfg["telephony"]["sip_answer_ratio"].window()
    calls_w = m.cfg["voice_agents"]["call_success"].window()
    err_w = m.cfg["voice_agents"]["error_ratio"].window()
    camp_w = m.cfg["campaigns"].window()
    slo = m.cfg["slos"]
    period = slo.window("period")
    burn_windows = sorted({b["long"] for b in slo["burn_rates"]} | {b["short"] for b in slo["burn_rates"]}, key=seconds)
    J = f'job=~"$job",{PROJECT}'
    timeout = m.cfg["prometheus"].duration("scrape_timeout")
    A = f'{J},agent=~"$agent"'
    AP = f'{A},provider=~"$provider",model=~"$model"'
    C = f'{J},campaign=~"$campaign",campaign!=""'
    JI = f'{J},instance=~"$instance"'  # the exporter board: one replica or all

    def state(metric: str, by: str, sel: str = J, op: str = "sum") -> str:
        """A LiveKit-state or report gauge: one replica's reading (max across replicas), then summed by `by`."""
        return f"{op} by ({by}) (max without (instance, pod) ({metric}{{{sel}}}))"

    def rate(metric: str, by: str, sel: str = J) -> str:
        return f"sum by ({by}) (rate({metric}{{{sel}}}[{RI}]))"

    def quantile(q: float, metric: str, by: str, sel: str = J) -> str:
        return f"histogram_quantile({q:g}, sum by (le, {by}) (rate({metric}_bucket{{{sel}}}[{RI}])))"

    def mean(metric: str, by: str, sel: str) -> str:
        return f"{rate(metric + '_sum', by, sel)} / {rate(metric + '_count', by, sel)}"

    def gauge(op: str, by: str, metric: str, sel: str = J) -> str:
        """`op` by `by` of a gauge over all its series: the sum of per-target counts, or the max of a reading."""
        return f"{op} by ({by}) ({metric}{{{sel}}})"

    def highest(metric: str, by: str, sel: str = J) -> str:
        """The highest reading of a gauge by `by` (each node's, worker's or replica's own)."""
        return gauge("max", by, metric, sel)

    def over_range(metric: str, by: str, sel: str) -> str:
        """How much a counter went up over the dashboard's time range."""
        return f"sum by ({by}) (increase({metric}{{{sel}}}[$__range]))"

    def share(part: str, whole: str) -> str:
        """part / whole of two counter selectors, each rate summed over every series."""
        return f"sum(rate({part}[{RI}])) / sum(rate({whole}[{RI}]))"

    def legend(by: str) -> str:
        """The legend of a series for each value of the `by` labels: "{{type}} {{status}}"."""
        return " ".join(f"{{{{{label}}}}}" for label in by.split(", "))

    def series(
        title: str,
        question: str,
        unit: str,
        query: Callable[[str, str, str], str],
        metric: str,
        by: str,
        sel: str = J,
        **layout: Any,
    ) -> P:
        """A panel of one query, `query`(metric, by, sel) (rate, state, highest or over_range), with a
        series for each value of the `by` labels: its legend names them."""
        return P(title, question, unit, [(query(metric, by, sel), legend(by))], **layout)

    def named(
        prefix: str, query: Callable[[str, str, str], str], metric: str, by: str, sel: str = J
    ) -> tuple[str, str]:
        """One query of a panel of several: `query`(metric, by, sel), its legend `prefix` and the `by` labels."""
        return query(metric, by, sel), f"{prefix} {legend(by)}"

    def started_ended(title: str, question: str, started: tuple[str, str], ended: tuple[str, str], anchor: str) -> P:
        """How many start and end per second: (counter, by labels) of each."""
        return P(
            title,
            question,
            "ops",
            [named("started", rate, *started), named("ended", rate, *ended)],
            w=8,
            anchor=anchor,
        )

    def recorded_ratio(title: str, question: str, record: str, by: str, **layout: Any) -> P:
        """A ratio (0 to 1) recorded by rules.py, one series for each value of its `by` label."""
        return P(title, question, "percentunit", [(f"{record}{{{J}}}", legend(by))], max=1, **layout)

    def egress_success(**layout: Any) -> P:
        return recorded_ratio(
            "Egress success ratio",
            f"Which share of ended egress did not fail, over {egress_w}?",
            f"type:livekit_egress_success:ratio_rate{egress_w}",
            "type",
            **layout,
        )

    overview = Board(
        "overview",
        "LiveKit overview",
        "Every LiveKit API's health and latency, rooms and participants, egress and ingress at a glance, webhooks.",
        ("job", "project"),
    )
    overview.row(
        "LiveKit API",
        P(
            "API services up",
            "Does each LiveKit API service answer the exporter right now (1 up, 0 down)?",
            "none",
            [(state("livekit_api_up", "job, service", op="min"), "{{job}} {{service}}")],
            kind="stat",
            w=6,
            anchor="api-up",
        ),
        P(
            f"API latency p{qname(api['latency'].number('quantile'))[1:]} by service",
            "How long do the exporter's calls to each LiveKit service take (failed calls included)?",
            "s",
            [(f"{api_p}{{{J}}}", "{{service}}")],
            w=9,
            anchor="api-latency",
        ),
        P(
            "API error ratio by service",
            "Which share of the calls to each LiveKit service fails?",
            "percentunit",
            [(f"{api_ratio}{{{J}}}", "{{service}}")],
            w=9,
            anchor="api-error-ratio",
        ),
        series(
            "API errors by code",
            "Which errors does LiveKit answer (Twirp code, timeout, connection)?",
            "reqps",
            rate,
            "livekit_api_errors_total",
            "service, code",
            fault=True,
            anchor="api-errors",
        ),
        series(
            "API calls per second",
            "How many LiveKit API calls does the exporter make, by service and method?",
            "reqps",
            rate,
            "livekit_api_request_duration_seconds_count",
            "service, method",
        ),
    )
    overview.row(
        "Rooms and participants",
        P(
            "Rooms",
            "How many rooms are open, occupied, empty or full?",
            "short",
            [(state("livekit_rooms", "occupancy"), "{{occupancy}}"), (state("livekit_rooms_full", ""), "full")],
            w=8,
        ),
        P(
            "Participants",
            "How many participants are in LiveKit's rooms (agents and egress excluded), and by kind "
            "where per-room detail is on?",
            "short",
            [(state("livekit_room_participants", ""), "in rooms"), (state("livekit_participants", "kind"), "{{kind}}")],
            w=8,
        ),
        P(
            "Recordings and publishers",
            "How many rooms record, and how many participants publish media?",
            "short",
            [
                (state("livekit_rooms_recording", ""), "recording rooms"),
                (state("livekit_room_publishers", ""), "publishers"),
            ],
            w=8,
        ),
        P(
            "Room sizes",
            "How are open rooms distributed by number of participants (rooms at or under each size)?",
            "short",
            [named("<=", state, "livekit_room_size_bucket", "le")],
            w=24,
            h=7,
        ),
    )
    overview.row(
        "Egress and ingress",
        series(
            "Egress active",
            "How many egress jobs (recordings, streams) run now, by type?",
            "short",
            state,
            "livekit_egress_active",
            "type",
            w=8,
        ),
        series(
            "Ingress publishing",
            "How many ingress endpoints publish now, by input type?",
            "short",
            state,
            "livekit_ingress",
            "input_type",
            f'{J},status="publishing"',
            w=8,
        ),
        egress_success(w=8),
    )
    overview.row(
        "Webhooks",
        series(
            "Webhook events",
            "Which lifecycle events does LiveKit deliver, per second?",
            "reqps",
            rate,
            "livekit_webhook_events_total",
            "event",
            w=8,
            anchor="webhook-events",
        ),
        series(
            "Webhook rejections",
            "Which webhook requests are refused, and why (a wrong key, forged or replayed)?",
            "reqps",
            rate,
            "livekit_webhook_rejected_total",
            "reason",
            w=8,
            fault=True,
            anchor="webhook-rejections",
        ),
        P(
            "Webhook delivery delay",
            "How late do LiveKit's webhooks arrive (created_at to arrival)?",
            "s",
            [
                (quantile(0.5, "livekit_webhook_delivery_delay_seconds", "job"), "p50"),
                (quantile(0.99, "livekit_webhook_delivery_delay_seconds", "job"), "p99"),
            ],
            w=8,
            anchor="webhook-delay",
        ),
    )

    media = Board(
        "media",
        "LiveKit media and telephony",
        "Egress, ingress and SIP: what runs, what started and ended and how, success and answer ratios.",
        ("job", "project"),
    )
    media.row(
        "Egress",
        series(
            "Egress active by type and status",
            "Which egress jobs run now?",
            "short",
            state,
            "livekit_egress_active",
            "type, status",
            w=8,
        ),
        started_ended(
            "Egress started and ended",
            "How many egress jobs start, and end by status, per second?",
            ("livekit_egress_started_total", "type"),
            ("livekit_egress_ended_total", "type, status"),
            anchor="egress-ended",
        ),
        series(
            "Egress output",
            "How many bytes do ended egress jobs write per second?",
            "Bps",
            rate,
            "livekit_egress_output_bytes_total",
            "type",
            w=8,
        ),
        P(
            "Egress duration",
            "How long do egress jobs run (p50 and p90)?",
            "s",
            [
                (quantile(0.5, "livekit_egress_duration_seconds", "type"), "p50 {{type}}"),
                (quantile(0.9, "livekit_egress_duration_seconds", "type"), "p90 {{type}}"),
            ],
        ),
        egress_success(anchor="egress-success"),
    )
    media.row(
        "Ingress",
        series(
            "Ingress by input type and status",
            "Which ingress endpoints exist, and in which state?",
            "short",
            state,
            "livekit_ingress",
            "input_type, status",
            w=8,
        ),
        series(
            "Ingress input rate",
            "How many bytes per second do publishing ingress receive (x 8 for bits)?",
            "Bps",
            state,
            "livekit_ingress_input_bytes_per_second",
            "input_type, media",
            w=8,
        ),
        started_ended(
            "Ingress started and ended",
            "How many ingress start publishing, and end by status, per second?",
            ("livekit_ingress_started_total", "input_type"),
            ("livekit_ingress_ended_total", "input_type, status"),
            anchor="ingress-ended",
        ),
        recorded_ratio(
            "Ingress failure ratio",
            f"Which share of ingress ends are errors, over {ingress_w}?",
            f"input_type:livekit_ingress_failure:ratio_rate{ingress_w}",
            "input_type",
            anchor="ingress-failure",
        ),
    )
    media.row(
        "SIP",
        P(
            "SIP trunks and dispatch rules",
            "How many trunks (by direction) and dispatch rules are configured?",
            "short",
            [
                (state("livekit_sip_trunks", "direction"), "{{direction}} trunks"),
                (state("livekit_sip_dispatch_rules", ""), "dispatch rules"),
            ],
            w=8,
        ),
        started_ended(
            "SIP calls started and ended",
            "How many SIP calls start, per trunk, and end, by reason, per second?",
            ("livekit_sip_calls_started_total", "trunk"),
            ("livekit_sip_calls_ended_total", "reason"),
            anchor="sip-calls",
        ),
        recorded_ratio(
            "SIP answer ratio",
            f"Which share of SIP calls was answered (not unavailable or rejected), over {sip_w}?",
            f"trunk:livekit_sip_calls_answer:ratio_rate{sip_w}",
            "trunk",
            w=8,
            anchor="sip-answer",
        ),
        series(
            "SIP calls in progress",
            "How many SIP calls are in the rooms read for detail, by call status?",
            "short",
            state,
            "livekit_sip_calls",
            "status",
        ),
    )

    agents = Board(
        "voice_agents",
        "LiveKit voice agents",
        "Calls and their outcomes, voice-to-voice latency and the stage that ate the budget, tools, errors, "
        "usage and estimated cost.",
        ("job", "project", "agent", "provider", "model"),
    )
    agents.row(
        "Calls",
        P(
            "Calls started, answered and ended",
            "How many calls start, get answered, and end, per second?",
            "ops",
            [
                named("started", rate, "voice_agent_calls_started_total", "agent", A),
                named("answered", rate, "voice_agent_calls_answered_total", "agent", A),
                named("ended", rate, "voice_agent_calls_ended_total", "agent", A),
            ],
            w=8,
        ),
        series(
            "Calls ended by outcome",
            "How do calls end (the agents' own outcomes)?",
            "ops",
            rate,
            "voice_agent_calls_ended_total",
            "outcome",
            A,
            w=8,
            stack=True,
        ),
        P(
            "Active and queued calls",
            "How many calls are in progress, and how many wait to be dialled?",
            "short",
            [
                (gauge("sum", "agent", "voice_agent_calls_active", A), "active {{agent}}"),
                named("queued", state, "voice_agent_calls_queued", "agent", A),
            ],
            w=8,
            anchor="active-calls",
        ),
        P(
            "Answer and success ratio",
            f"Which share of started calls is answered, and which share of ended calls does not fail ({calls_w})?",
            "percentunit",
            [
                (
                    f"{rate('voice_agent_calls_answered_total', 'agent', A)} / {rate('voice_agent_calls_started_total', 'agent', A)}",
                    "answered {{agent}}",
                ),
                (f"agent:voice_agent_calls_success:ratio_rate{calls_w}{{{A}}}", "succeeded {{agent}}"),
            ],
            max=1,
            anchor="call-ratios",
        ),
        P(
            "Call and setup duration",
            "How long do calls last, and take from dial to answer (p50)?",
            "s",
            [
                (quantile(0.5, "voice_agent_call_duration_seconds", "agent", A), "call {{agent}}"),
                (quantile(0.5, "voice_agent_call_setup_seconds", "agent", A), "setup {{agent}}"),
            ],
        ),
    )
    agents.row(
        "Voice-to-voice latency",
        P(
            "Voice-to-voice latency",
            "How long do users wait from the end of their speech to the agent's first audio "
            f"(p{', p'.join(qname(x)[1:] for x in quantiles)} over {lw})?",
            "s",
            [
                (f"agent:voice_agent_turn_latency_seconds:{qname(x)}_{lw}{{{A}}}", f"{qname(x)} {{{{agent}}}}")
                for x in quantiles
            ],
            anchor="v2v-latency",
        ),
        series(
            "Voice-to-voice latency distribution",
            "Where do turns fall between the latency buckets (turns per "
            "second in each; each dot an exemplar: one turn, with its call and trace)?",
            "ops",
            rate,
            "voice_agent_turn_latency_seconds_bucket",
            "le",
            A,
            kind="heatmap",
            exemplars=True,
            yunit="s",
        ),
        P(
            "Which stage eats the budget",
            "What does each stage of a turn take on average, stacked as LiveKit adds "
            "them up (end of utterance, which includes transcription, then LLM time to first token and TTS time to "
            "first byte)?",
            "s",
            [
                (mean("voice_agent_end_of_utterance_delay_seconds", "agent", A), "end of utterance {{agent}}"),
                (mean("voice_agent_llm_time_to_first_token_seconds", "agent", A), "LLM TTFT {{agent}}"),
                (mean("voice_agent_tts_time_to_first_byte_seconds", "agent", A), "TTS TTFB {{agent}}"),
            ],
            stack=True,
            w=24,
        ),
        P(
            f"Stage p{sq[1:]} by provider and model",
            f"Which provider or model is slow, per stage ({sw})?",
            "s",
            [
                (f"agent_provider_model:{metric}:{sq}_{sw}{{{AP}}}", stage + " {{provider}} {{model}}")
                for stage, metric in (
                    ("STT", "voice_agent_transcription_delay_seconds"),
                    ("LLM", "voice_agent_llm_time_to_first_token_seconds"),
                    ("TTS", "voice_agent_tts_time_to_first_byte_seconds"),
                )
            ]
            + [(f"agent:voice_agent_end_of_utterance_delay_seconds:{sq}_{sw}{{{A}}}", "EOU {{agent}}")],
            w=24,
            anchor="stage-p95",
        ),
    )
    agents.row(
        "Turns, tools and errors",
        P(
            "Turns and interruptions",
            "How many turns per second, and how often do users speak over the agent?",
            "ops",
            [
                named("turns", rate, "voice_agent_turns_total", "agent", A),
                named("interruptions", rate, "voice_agent_interruptions_total", "agent", A),
            ],
            w=8,
        ),
        P(
            "Tool calls",
            "Which tools do agents call, how often, and how long do the slowest take (p95)?",
            "ops",
            [
                (rate("voice_agent_tool_call_duration_seconds_count", "tool", A), "{{tool}}"),
                (quantile(0.95, "voice_agent_tool_call_duration_seconds", "tool", A), "p95 s {{tool}}"),
            ],
            w=8,
        ),
        P(
            "Errors by component",
            "Which pipeline component fails, retried past or not?",
            "ops",
            [
                (
                    rate("voice_agent_errors_total", "component, recoverable", A),
                    "{{component}} recoverable={{recoverable}}",
                )
            ],
            w=8,
        ),
        P(
            "Error ratio",
            f"How many non-recoverable errors per turn ({err_w})?",
            "percentunit",
            [(f"agent:voice_agent_errors:ratio_rate{err_w}{{{A}}}", "{{agent}}")],
            anchor="error-ratio",
        ),
        series(
            "Dependencies",
            "Does each agent report its dependencies up (1) or down (0)?",
            "none",
            highest,
            "voice_agent_dependency_up",
            "agent, dependency",
            A,
            kind="stat",
            anchor="dependencies",
        ),
    )
    agents.row(
        "Usage and cost",
        series(
            "LLM tokens",
            "How many tokens per second, by model and type?",
            "short",
            rate,
            "voice_agent_llm_tokens_total",
            "model, type",
            AP,
            w=8,
        ),
        P(
            "TTS characters and STT audio",
            "How many characters are synthesized and audio seconds transcribed, per second?",
            "short",
            [
                named("characters", rate, "voice_agent_tts_characters_total", "provider", AP),
                named("audio s", rate, "voice_agent_stt_audio_seconds_total", "provider", AP),
            ],
            w=8,
        ),
        P(
            "Estimated cost per day",
            "What would a day cost at the current rate, by component and provider (usage x events.prices)?",
            "currencyUSD",
            [
                (
                    rate("voice_agent_estimated_cost_dollars_total", "component, provider", AP) + " * 86400",
                    "{{component}} {{provider}}",
                )
            ],
            w=8,
            stack=True,
            anchor="cost-per-day",
        ),
        P(
            "Estimated cost per call",
            "What does one ended call cost on average, over the dashboard's range?",
            "currencyUSD",
            [
                (
                    over_range("voice_agent_estimated_cost_dollars_total", "agent", A)
                    + " / "
                    + over_range("voice_agent_calls_ended_total", "agent", A),
                    "{{agent}}",
                )
            ],
            kind="stat",
        ),
    )
    long_w = max(m.cfg["long_term"]["windows"], key=seconds)  # livekit-long-term.rules (what remote_write keeps)
    agents.row(
        "Long ranges",
        P(
            f"Voice-to-voice latency over {long_w}",
            f"How long have users waited, week after week (p{', p'.join(qname(x)[1:] for x in quantiles)} over "
            f"{long_w}, recorded: what long-term storage keeps)?",
            "s",
            [
                (f"agent:voice_agent_turn_latency_seconds:{qname(x)}_{long_w}{{{A}}}", f"{qname(x)} {{{{agent}}}}")
                for x in sorted({float(x) for x in m.cfg["voice_agents"]["latency_quantiles"]})
            ],
        ),
        P(
            "Calls ended per hour, by outcome",
            f"How many calls end per hour, by outcome, over days and weeks (the {long_w} rate, recorded)?",
            "short",
            [(f"sum by (outcome) (agent_outcome:voice_agent_calls_ended:rate{long_w}{{{A}}}) * 3600", "{{outcome}}")],
            stack=True,
        ),
    )

    campaigns = Board(
        "campaigns",
        "LiveKit campaigns",
        "Outbound campaigns: running or not, calls placed and queued, answer, qualification and conversion "
        "rates, outcomes.",
        ("job", "project", "campaign"),
    )
    campaigns.row(
        "Campaigns",
        series(
            "Running",
            "Does each campaign run (1) or not (0), as its dialer reports?",
            "none",
            highest,
            "voice_agent_campaign_running",
            "campaign",
            C,
            kind="stat",
            w=6,
            anchor="campaign-running",
        ),
        series(
            "Calls placed in the range",
            "How many calls did each campaign start over the dashboard's range?",
            "short",
            over_range,
            "voice_agent_calls_started_total",
            "campaign",
            C,
            kind="stat",
            w=6,
        ),
        series(
            "Queued",
            "How many calls wait to be dialled, per campaign?",
            "short",
            state,
            "voice_agent_calls_queued",
            "campaign",
            C,
            kind="stat",
            w=6,
        ),
        P(
            "In progress",
            "How many calls started in the range have not ended yet, per campaign?",
            "short",
            [
                (
                    f"clamp_min({over_range('voice_agent_calls_started_total', 'campaign', C)} - "
                    f"{over_range('voice_agent_calls_ended_total', 'campaign', C)}, 0)",
                    "{{campaign}}",
                )
            ],
            kind="stat",
            w=6,
        ),
        P(
            "Answer, qualification and conversion",
            f"Which share of calls is answered (of started), qualified (of "
            f"answered) and converted (of started), over {camp_w}?",
            "percentunit",
            [
                (f"campaign:voice_agent_calls_{ratio}:ratio_rate{camp_w}{{{C}}}", ratio + " {{campaign}}")
                for ratio in ("answer", "qualification", "conversion")
            ],
            w=24,
            max=1,
        ),
        series(
            "Outcomes",
            "How do the campaign's calls end, over the dashboard's range?",
            "short",
            over_range,
            "voice_agent_calls_ended_total",
            "campaign, outcome",
            C,
            kind="stat",
        ),
        P(
            "Outbound call duration",
            "How long do outbound calls last, by outcome (p50)?",
            "s",
            [
                (
                    quantile(0.5, "voice_agent_call_duration_seconds", "outcome", f'{J},direction="outbound"'),
                    "{{outcome}}",
                )
            ],
        ),
    )

    slo_board = Board(
        "slo",
        "LiveKit voice-agent SLOs",
        "The two objectives of prometheus/mixin.yml (turns within the latency bound, calls that do not "
        "fail): SLI over each burn-rate window, the error budget left, and the burn rate.",
        ("job", "project", "agent"),
    )
    slo_board.row(
        "Objectives",
        P(
            "Error budget remaining",
            f"How much of the {period} error budget is left (1 = untouched, below 0 = spent)?",
            "percentunit",
            [(f"slo:error_budget_remaining:ratio{{{A}}}", "{{slo}} {{agent}}")],
            kind="stat",
            w=24,
        ),
        P(
            "SLI by window",
            "Which share of events was good over each burn-rate window?",
            "percentunit",
            [(f"1 - slo:sli_error:ratio_rate{w}{{{A}}}", f"{{{{slo}}}} {{{{agent}}}} {w}") for w in burn_windows],
            w=24,
            max=1,
        ),
        P(
            "Burn rate (1 h)",
            "How fast is the error budget burning (1 = exactly on budget; pages at 14.4 over 1 h)?",
            "none",
            [
                (
                    f"slo:sli_error:ratio_rate1h{{{A}}} / on (slo) group_left () max by (slo) (1 - slo:objective:ratio)",
                    "{{slo}} {{agent}}",
                )
            ]
            if "1h" in burn_windows
            else [],
            w=24,
            anchor="burn-rate",
        ),
    )

    exporter = Board(
        "exporter",
        "livekit-exporter",
        "The exporter itself: scrapes against their timeout, LiveKit API calls and errors, events and "
        "webhooks accepted and refused, the cardinality guard, process resources.",
        ("job", "project", "instance"),
    )
    exporter.row(
        "Scrapes",
        P(
            "Scrape duration",
            f"How long do scrapes take, against the {timeout} scrape timeout (the red line)?",
            "s",
            [
                named("scrape", highest, "scrape_duration_seconds", "instance", JI),
                named("LiveKit API part", highest, "livekit_exporter_scrape_duration_seconds", "instance", JI),
            ],
            w=8,
            threshold=seconds(timeout),
            anchor="scrape-duration",
        ),
        series(
            "Scrapes per second",
            "How often is the exporter scraped, and do scrapes share one collection?",
            "reqps",
            rate,
            "livekit_exporter_scrapes_total",
            "instance, collection",
            JI,
            w=8,
        ),
        series(
            "Label overflow",
            "Which label values does the cardinality guard fold into __other__?",
            "ops",
            rate,
            "livekit_exporter_label_overflow_total",
            "metric, label",
            JI,
            w=8,
            fault=True,
            anchor="label-overflow",
        ),
    )
    exporter.row(
        "LiveKit API",
        series(
            "API calls per second",
            "How many LiveKit API calls does each replica make, by service?",
            "reqps",
            rate,
            "livekit_api_request_duration_seconds_count",
            "instance, service",
            JI,
            w=12,
        ),
        series(
            "API errors by code",
            "Which errors do each replica's LiveKit calls get (Twirp code, timeout, connection)?",
            "reqps",
            rate,
            "livekit_api_errors_total",
            "instance, service, code",
            JI,
            w=12,
            fault=True,
        ),
    )
    exporter.row(
        "Inputs",
        series(
            "Events accepted",
            "Which voice-agent events does the events API accept, per second?",
            "ops",
            rate,
            "livekit_exporter_events_total",
            "type",
            JI,
            w=8,
        ),
        series(
            "Event requests refused",
            "Which requests to the events API are refused whole, and why?",
            "reqps",
            rate,
            "livekit_exporter_event_requests_rejected_total",
            "reason",
            JI,
            w=8,
            fault=True,
            anchor="events-refused",
        ),
        P(
            "Webhooks accepted and refused",
            "How many webhooks are accepted, deduplicated and refused?",
            "reqps",
            [
                named("accepted", rate, "livekit_webhook_events_total", "instance", JI),
                named("duplicates", rate, "livekit_webhook_duplicates_total", "instance", JI),
                named("refused", rate, "livekit_webhook_rejected_total", "instance", JI),
            ],
            w=8,
        ),
    )
    exporter.row(
        "Process",
        series(
            "Memory",
            "How much memory does each replica hold?",
            "bytes",
            highest,
            "process_resident_memory_bytes",
            "instance",
            JI,
            w=12,
        ),
        series(
            "CPU",
            "How much CPU does each replica use (cores)?",
            "none",
            rate,
            "process_cpu_seconds_total",
            "instance",
            JI,
            w=12,
        ),
    )
    S = f'job="{m.q.jobs["livekit_server"]}",instance=~"$node"'
    W = f'job="{m.q.jobs["agent_workers"]}"'
    SIP = f'job="{m.q.jobs["livekit_sip"]}"'

    def worst_streams(anchor: str, title: str, question: str, unit: str, histogram: str) -> P:
        """The p95 of one of LiveKit's per-stream histograms, by direction."""
        return P(
            title, question, unit, [(quantile(0.95, histogram, "direction", S), "{{direction}}")], w=8, anchor=anchor
        )

    nodes = Board(
        "nodes",
        "LiveKit server nodes",
        "For users who also scrape LiveKit server's own /metrics (names and units are LiveKit's: "
        "pkg/telemetry/prometheus): load, connection quality against the 4.0 and 3.5 marks, loss, jitter, "
        "RTT, NACK and PLI, joins.",
        ("node",),
    )
    nodes.row(
        "Load",
        series(
            "Rooms per node",
            "How many rooms does each LiveKit node host?",
            "short",
            highest,
            "livekit_room_total",
            "instance",
            S,
            w=8,
        ),
        series(
            "Participants per node",
            "How many participants does each node serve?",
            "short",
            highest,
            "livekit_participant_total",
            "instance",
            S,
            w=8,
        ),
        P(
            "Tracks per node",
            "How many tracks are published, and subscribed, on each node?",
            "short",
            [
                (highest("livekit_track_published_total", "instance, kind", S), "published {{kind}} {{instance}}"),
                (
                    highest("livekit_track_subscribed_total", "instance, kind", S),
                    "subscribed {{kind}} {{instance}}",
                ),
            ],
            w=8,
        ),
    )
    nodes.row(
        "Connection quality",
        series(
            "Connection quality score",
            "How are participants' connection scores distributed (LiveKit's MOS, 1 to 4.5, "
            "one per participant every 5 s)?",
            "ops",
            rate,
            "livekit_quality_score_bucket",
            "le",
            S,
            kind="heatmap",
            yunit="short",
        ),
        P(
            "Scores below 4.0 and 3.5",
            "Which share of connection scores falls at or under the 4.0 (warning) and 3.5 (critical) marks?",
            "percentunit",
            [
                (
                    share(
                        f'livekit_quality_score_bucket{{{S},le=~"4(\\\\.0)?"}}', f"livekit_quality_score_count{{{S}}}"
                    ),
                    "at or under 4.0",
                ),
                (
                    share(f'livekit_quality_score_bucket{{{S},le="3.5"}}', f"livekit_quality_score_count{{{S}}}"),
                    "at or under 3.5",
                ),
            ],
            max=1,
            anchor="quality-marks",
        ),
    )
    nodes.row(
        "Media",
        worst_streams(
            "packet-loss",
            "Packet loss p95",
            "How much loss do the worst streams see, by direction (percent)?",
            "percent",
            "livekit_packet_loss_percent",
        ),
        worst_streams(
            "jitter",
            "Jitter p95",
            "How much jitter do the worst streams see, by direction (LiveKit measures microseconds)?",
            "µs",
            "livekit_jitter_us",
        ),
        worst_streams(
            "rtt",
            "RTT p95",
            "How long is the round trip for the worst streams (LiveKit measures milliseconds)?",
            "ms",
            "livekit_rtt_ms",
        ),
        P(
            "Packets lost",
            "Which share of packets is lost, by direction?",
            "percentunit",
            [
                (
                    f"{rate('livekit_packet_loss_total', 'direction', S)} / {rate('livekit_packet_total', 'direction', S)}",
                    "{{direction}}",
                )
            ],
        ),
        P(
            "NACK and PLI",
            "How often do receivers ask for retransmissions (NACK) and key frames (PLI)?",
            "ops",
            [
                named("NACK", rate, "livekit_nack_total", "direction", S),
                named("PLI", rate, "livekit_pli_total", "direction", S),
            ],
        ),
    )
    nodes.row(
        "SIP service (livekit/sip's own /metrics, when Prometheus scrapes them)",
        P(
            "SIP INVITEs",
            "How many INVITEs does the SIP service receive and accept, by direction?",
            "ops",
            [
                named("received", rate, "livekit_sip_invite_requests", "dir", SIP),
                named("accepted", rate, "livekit_sip_invite_accepted", "dir", SIP),
            ],
            w=8,
        ),
        P(
            "SIP calls active",
            "How many calls does the SIP service carry, by direction (summed over its nodes)?",
            "short",
            [(gauge("sum", "dir", "livekit_sip_calls_active", SIP), "{{dir}}")],
            w=8,
        ),
        series(
            "SIP calls terminated",
            "How do SIP calls end, by result?",
            "ops",
            rate,
            "livekit_sip_calls_terminated",
            "dir, result",
            SIP,
            w=8,
        ),
    )
    nodes.row(
        "Agent workers (their own /metrics, when Prometheus scrapes them)",
        series(
            "Worker load",
            f"How loaded is each livekit-agents worker (it refuses new jobs at its load_threshold, "
            f"{m.cfg['agent_workers'].ratio('load_threshold'):g} in production)?",
            "percentunit",
            highest,
            "lk_agents_worker_load",
            "agent, instance",
            W,
            w=8,
            max=1,
            anchor="worker-load",
        ),
        series(
            "Active jobs",
            "How many jobs (calls) does each worker run?",
            "short",
            highest,
            "lk_agents_active_job_count",
            "agent, instance",
            W,
            w=8,
            anchor="worker-jobs",
        ),
        series(
            "Child processes",
            "How many job processes does each worker keep (running and warm)?",
            "short",
            highest,
            "lk_agents_child_process_count",
            "agent, instance",
            W,
            w=8,
        ),
    )
    nodes.row(
        "Joins",
        P(
            "Participant join success",
            "Which share of signal connections becomes a working media connection?",
            "percentunit",
            [
                (
                    share(
                        f'livekit_participant_join_total{{{S},state="rtc_success"}}',
                        f'livekit_participant_join_total{{{S},state="signal_connected"}}',
                    ),
                    "join success",
                )
            ],
            w=24,
            max=1,
        ),
    )
    return [overview, media, agents, campaigns, slo_board, nodes, exporter]


LISTED = ("job", "instance", "node")
# The LiveKit project of a multi-project exporter (a target label, prometheus.projects): "All" is `.*`,
# which also matches the series of a single-project exporter, which have no project label.
PROJECT = 'project=~"$project"'

# The provider and model variables list every STT, LLM and TTS provider and model: the stage histograms
# carry all three components.
STAGE_SERIES = (
    '__name__=~"voice_agent_(transcription_delay|llm_time_to_first_token|tts_time_to_first_byte)_seconds_count", '
    f'job=~"$job", {PROJECT}, agent=~"$agent"'
)

VARIABLES = {
    "node": ("Node", "label_values(livekit_room_total, instance)"),
    "job": ("Job", "label_values(livekit_exporter_build_info, job)"),
    "project": ("Project", 'label_values(up{job=~"$job"}, project)'),
    "instance": ("Instance", 'label_values(livekit_exporter_build_info{job=~"$job"}, instance)'),
    "agent": ("Agent", f'label_values(voice_agent_turns_total{{job=~"$job", {PROJECT}}}, agent)'),
    "campaign": (
        "Campaign",
        f'label_values(voice_agent_calls_started_total{{job=~"$job", {PROJECT}, campaign!=""}}, campaign)',
    ),
    "provider": ("Provider", f"label_values({{{STAGE_SERIES}}}, provider)"),
    "model": ("Model", f'label_values({{{STAGE_SERIES}, provider=~"$provider"}}, model)'),
}


PROVISIONING_HEADER = "# Generated by `make rules` from prometheus/mixin.yml: do not edit.\napiVersion: 1\n"


def render(m: Mixin) -> dict[str, str]:
    """grafana/dashboards/<uid>.json and the provisioning files."""
    from grafana_foundation_sdk.builders import dashboard as d
    from grafana_foundation_sdk.builders import heatmap, prometheus, stat, table, timeseries
    from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, StackingConfig
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import common
    from grafana_foundation_sdk.models import dashboard as dm
    from grafana_foundation_sdk.models import prometheus as pm

    ds = dm.DataSourceRef(type_val="prometheus", uid=DS)
    kinds: dict[str, Callable[[], Any]] = {
        "timeseries": timeseries.Panel,
        "stat": stat.Panel,
        "heatmap": heatmap.Panel,
        "table": table.Panel,
    }
    files = {}
    for board, rows in layout(m):
        uid = m.dashboards[board.key]
        b = (
            d.Dashboard(board.title)
            .uid(uid)
            .description(board.description)
            .tags(["livekit"])
            .refresh("30s")
            .time("now-3h", "now")
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .link(
                d.DashboardLink("LiveKit dashboards")
                .type(dm.DashboardLinkType.DASHBOARDS)
                .tags(["livekit"])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
            .with_variable(d.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        )
        for name in board.variables:
            label, query = VARIABLES[name]
            var = (
                d.QueryVariable(name)
                .label(label)
                .datasource(ds)
                .query({"query": query, "refId": name})
                .multi(True)
                .include_all(True)
                .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
                .sort(dm.VariableSort.ALPHABETICAL_ASC)
            )
            if name not in LISTED:  # job and instance: "All" is the listed values, never every job Prometheus scrapes
                var = var.all_value(".*")
            b = b.with_variable(var)
        for row, row_id, placed in rows:
            b = b.with_row(d.Row(row).id(row_id))
            for pid, p in placed:
                panel = (
                    kinds[p.kind]()
                    .id(pid)
                    .title(p.title)
                    .description(p.description)
                    .unit(p.unit)
                    .datasource(ds)
                    .span(p.w)
                    .height(p.h)
                )
                if p.yunit:
                    panel = panel.y_axis(heatmap.YAxisConfig().unit(p.yunit))
                if p.max is not None:
                    panel = panel.min(0).max(p.max)
                if p.threshold is not None:
                    panel = panel.thresholds(
                        d.ThresholdsConfig()
                        .mode(dm.ThresholdsMode.ABSOLUTE)
                        .steps([dm.Threshold(value=None, color="green"), dm.Threshold(value=p.threshold, color="red")])
                    ).thresholds_style(GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED))
                if p.stack and p.kind == "timeseries":
                    panel = panel.stacking(StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
                for i, (expr, legend) in enumerate(p.targets):
                    t = prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(chr(65 + i)).datasource(ds)
                    if p.kind in ("stat", "table"):
                        t = t.instant()
                    if p.kind == "heatmap":
                        t = t.format(pm.PromQueryFormat.HEATMAP)
                    if p.exemplars:
                        t = t.exemplar(True)
                    panel = panel.with_target(t)
                b = b.with_panel(panel)
        files[f"grafana/dashboards/{uid}.json"] = (
            json.dumps(b.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"
        )
    files["docs/dashboards.md"] = docs_md(m)
    g = m.cfg["grafana"]
    files["grafana/provisioning/datasources/prometheus.yml"] = (
        f"{PROVISIONING_HEADER}"
        "datasources:\n"
        "  - name: Prometheus\n"
        "    type: prometheus\n"
        f"    uid: {g['datasource_uid']}\n"
        "    access: proxy\n"
        f"    url: {g['prometheus_url']}\n"
        "    isDefault: true\n"
        "    jsonData:\n"
        f"      timeInterval: {m.cfg['prometheus'].duration('scrape_interval')}   # $__rate_interval is at least 4 x this\n"
        "      httpMethod: POST\n"
        "      # The turn-latency exemplars: trace_id opens the trace, call_id the call (Prometheus needs\n"
        "      # --enable-feature=exemplar-storage).\n"
        "      exemplarTraceIdDestinations:\n"
        "        - name: trace_id\n"
        f"          datasourceUid: {g['tracing_datasource_uid']}\n"
        "        - name: call_id\n"
        # Grafana expands $VAR in provisioning files: $$ keeps ${__value.raw} for the link
        f"          url: '{g['call_url'].replace('$', '$$')}'\n"
        "          urlDisplayLabel: Open the call\n"
    )
    files["grafana/provisioning/dashboards/livekit.yml"] = (
        f"{PROVISIONING_HEADER}"
        "providers:\n"
        "  - name: livekit\n"
        f"    folder: {g['folder']}\n"
        "    type: file\n"
        "    disableDeletion: true\n"
        "    allowUiUpdates: false\n"
        "    options:\n"
        "      path: /var/lib/grafana/dashboards/livekit   # where grafana/dashboards/ is mounted\n"
    )
    return files


DOCS_INTRO = f"""# Dashboards

Generated by `make rules` with [grafana-foundation-sdk](https://github.com/grafana/grafana-foundation-sdk)
(the build for Grafana {GRAFANA_VERSION}) from `exporter/livekit_exporter/mixin/dashboards.py` and
`prometheus/mixin.yml`, which also gives the uids the alerts' `dashboard_url` point at. The JSON is in
`grafana/dashboards/`; a test checks it is current, lints it (one `datasource` variable used by every
panel and query, a title, a question and a unit on every panel, `$__rate_interval` in every rate,
counters only inside `rate()`/`increase()`, quantiles aggregated `by (le, ...)`, LiveKit-state
gauges taken with `max` across exporter replicas) and runs every panel query against a real
Prometheus fed by the exporter and the simulator: each must return data.

Panels reuse the recording rules of [alerts.md](alerts.md#recording-rules) (per-agent latency
quantiles, stage p95s, ratios, SLIs), so a dashboard and an alert never disagree on a number.

## Importing them

- **Provisioning** (what the docker-compose stack does): mount `grafana/provisioning/` at
  `/etc/grafana/provisioning/` and `grafana/dashboards/` at `/var/lib/grafana/dashboards/livekit/`.
  The datasource gets a fixed uid (`grafana.datasource_uid` in `mixin.yml`) and the dashboards land
  in a "LiveKit" folder.
- **kube-prometheus-stack**: its Grafana sidecar loads ConfigMaps labelled `grafana_dashboard: "1"`;
  put each JSON file in one (the Helm chart of this repository does it).
- **By hand**: Dashboards > New > Import, and upload a JSON file. There is no `__inputs` section:
  every panel uses the `datasource` variable, so pick the Prometheus datasource in the variable.

Variables: `datasource`, `job` (the exporter's job), and where they apply `instance`, `agent`,
`campaign` and `node`; each is multi-value with "All".

## Exemplars

The voice-to-voice latency distribution shows exemplars: each dot is one turn, carrying its `call_id` and
`trace_id` (the agent's OpenTelemetry trace). Prometheus stores them with
`--enable-feature=exemplar-storage`; the provisioned datasource links `trace_id` to the tracing
datasource `grafana.tracing_datasource_uid` and `call_id` to the URL `grafana.call_url` of
`prometheus/mixin.yml`.
"""


def docs_md(m: Mixin) -> str:
    out = [DOCS_INTRO]
    for board in boards(m):
        uid = m.dashboards[board.key]
        out.append(f"\n## {board.title} (`{uid}`)\n\n{board.description}\n")
        for row, panels in board.rows:
            out.append(f"\n### {row}\n\n| panel | the question it answers | unit |\n|---|---|---|\n")
            for p in panels:
                if p.targets:
                    out.append(f"| {p.title} | {p.description} | `{p.unit}` |\n")
    return "".join(out)
