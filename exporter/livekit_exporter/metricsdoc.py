"""Generates docs/metrics.md from what a running exporter really serves.

The metric names, types, labels and HELP texts come from the code (an exporter pointed at a fully
populated simulator); this module adds only where each number comes from and an example query.
tests/test_docs.py fails when docs/metrics.md is not what this prints.

    python -m livekit_exporter.metricsdoc > docs/metrics.md
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from prometheus_client.openmetrics.parser import text_string_to_metric_families

SECTIONS = {
    "state": "1. LiveKit API state (`livekit_*`, read on each scrape)",
    "webhooks": "2. LiveKit webhooks (`livekit_*`, event-driven)",
    "events": "3. Voice-agent call pipeline (`voice_agent_*`, pushed by agents)",
    "exporter": "4. The exporter itself (`livekit_exporter_*`)",
}

# One table a section: metric -> (where the number comes from, example PromQL).
STATE_METRICS: dict[str, tuple[str, str]] = {
    "livekit_up": ("every enabled service answered", "min_over_time(livekit_up[5m]) == 0"),
    "livekit_api_up": ("the service's calls this scrape", 'livekit_api_up{service="egress"} == 0'),
    "livekit_api_request_duration_seconds": (
        "the exporter's own API calls",
        "histogram_quantile(0.99, sum by (service, method, le) (rate(livekit_api_request_duration_seconds_bucket[5m])))",
    ),
    "livekit_api_errors_total": ("failed API calls", "sum by (service, code) (rate(livekit_api_errors_total[5m]))"),
    "livekit_rooms": ("ListRooms", 'sum(livekit_rooms)  # open rooms; livekit_rooms{occupancy="empty"} idle ones'),
    "livekit_rooms_full": ("ListRooms: num_participants >= max_participants > 0", "livekit_rooms_full > 0"),
    "livekit_room_participants": (
        "ListRooms: sum of Room.num_participants",
        'livekit_room_participants / clamp_min(livekit_rooms{occupancy="occupied"}, 1)',
    ),
    "livekit_room_publishers": ("ListRooms: sum of Room.num_publishers", "livekit_room_publishers"),
    "livekit_rooms_recording": ("ListRooms: Room.active_recording", "livekit_rooms_recording"),
    "livekit_room_size": (
        "ListRooms: Room.num_participants, as a gauge histogram",
        'livekit_room_size_bucket{le="+Inf"} - ignoring(le) livekit_room_size_bucket{le="10.0"}  # rooms above 10',
    ),
    "livekit_egress_active": ("ListEgress(active=true), pages followed", "sum by (type) (livekit_egress_active)"),
    "livekit_ingress": ("ListIngress, pages followed", 'sum by (input_type) (livekit_ingress{status="publishing"})'),
    "livekit_ingress_input_bytes_per_second": (
        "ListIngress: IngressState audio/video average_bitrate of publishing ingress",
        "sum(livekit_ingress_input_bytes_per_second) * 8  # bits per second",
    ),
    "livekit_sip_trunks": ("ListSIPInboundTrunk, ListSIPOutboundTrunk", "livekit_sip_trunks"),
    "livekit_sip_dispatch_rules": ("ListSIPDispatchRule", "livekit_sip_dispatch_rules"),
    "livekit_participants": (
        "ListParticipants per room (opt-in: collect.room_detail)",
        'sum by (kind) (livekit_participants{state="active"})',
    ),
    "livekit_published_tracks": (
        "ListParticipants per room (opt-in)",
        'sum by (source) (livekit_published_tracks{type="video"})',
    ),
    "livekit_sip_calls": (
        "SIP participants' sip.callStatus / sip.trunkID attributes (opt-in)",
        'sum by (trunk) (livekit_sip_calls{status="active"})',
    ),
    "livekit_agent_jobs": (
        "ListDispatch per room (opt-in)",
        'sum by (agent_name) (livekit_agent_jobs{status="running"})',
    ),
}

WEBHOOK_METRICS: dict[str, tuple[str, str]] = {
    "livekit_webhook_events_total": (
        "every accepted webhook (first delivery of its id)",
        "sum by (event) (rate(livekit_webhook_events_total[5m]))",
    ),
    "livekit_webhook_rejected_total": (
        "webhook requests answered 4xx",
        "sum by (reason) (increase(livekit_webhook_rejected_total[15m])) > 0",
    ),
    "livekit_webhook_duplicates_total": (
        "deliveries of an event id already counted (LiveKit retries)",
        "rate(livekit_webhook_duplicates_total[5m])",
    ),
    "livekit_webhook_delivery_delay_seconds": (
        "arrival time minus WebhookEvent.created_at",
        "histogram_quantile(0.99, sum by (le) (rate(livekit_webhook_delivery_delay_seconds_bucket[5m])))",
    ),
    "livekit_room_sessions_started_total": ("room_started", "increase(livekit_room_sessions_started_total[1h])"),
    "livekit_room_sessions_ended_total": (
        "room_finished: room_end_reason (unknown when LiveKit sends none)",
        "sum by (end_reason) (increase(livekit_room_sessions_ended_total[1h]))",
    ),
    "livekit_room_session_duration_seconds": (
        "room_finished: created_at - Room.creation_time",
        "histogram_quantile(0.5, sum by (le) (rate(livekit_room_session_duration_seconds_bucket[1h])))",
    ),
    "livekit_participant_sessions_started_total": (
        "participant_joined: ParticipantInfo.kind",
        "sum by (kind) (rate(livekit_participant_sessions_started_total[5m]))",
    ),
    "livekit_participant_sessions_ended_total": (
        "participant_left: kind, disconnect_reason",
        'sum by (reason) (increase(livekit_participant_sessions_ended_total{kind="standard"}[1h]))',
    ),
    "livekit_participant_connections_aborted_total": (
        "participant_connection_aborted: kind",
        "sum(rate(livekit_participant_connections_aborted_total[1h])) / sum(rate(livekit_participant_sessions_started_total[1h]))",
    ),
    "livekit_participant_session_duration_seconds": (
        "participant_left: created_at - ParticipantInfo.joined_at",
        "histogram_quantile(0.9, sum by (kind, le) (rate(livekit_participant_session_duration_seconds_bucket[1h])))",
    ),
    "livekit_track_publications_total": (
        "track_published: TrackInfo.type, source",
        "sum by (source) (rate(livekit_track_publications_total[5m]))",
    ),
    "livekit_egress_started_total": (
        "egress_started: the EgressInfo request type",
        "sum by (type) (increase(livekit_egress_started_total[1h]))",
    ),
    "livekit_egress_ended_total": (
        "egress_ended: type, EgressInfo.status",
        'sum by (type) (increase(livekit_egress_ended_total{status=~"failed|aborted"}[1h])) > 0',
    ),
    "livekit_egress_duration_seconds": (
        "egress_ended: ended_at - started_at (nanoseconds in the proto)",
        "histogram_quantile(0.9, sum by (type, le) (rate(livekit_egress_duration_seconds_bucket[1d])))",
    ),
    "livekit_egress_output_bytes_total": (
        "egress_ended: file_results / segment_results sizes",
        "sum by (type) (increase(livekit_egress_output_bytes_total[1d]))",
    ),
    "livekit_ingress_started_total": (
        "ingress_started: IngressInfo.input_type",
        "sum by (input_type) (increase(livekit_ingress_started_total[1h]))",
    ),
    "livekit_ingress_ended_total": (
        "ingress_ended: input_type, IngressState.status",
        'increase(livekit_ingress_ended_total{status="error"}[1h]) > 0',
    ),
    "livekit_sip_calls_started_total": (
        "participant_joined of kind sip: the sip.trunkID attribute (outbound: every dial attempt)",
        "sum by (trunk) (rate(livekit_sip_calls_started_total[5m]))",
    ),
    "livekit_sip_calls_ended_total": (
        "participant_left of kind sip: sip.trunkID, disconnect_reason",
        'clamp_min(1 - sum(increase(livekit_sip_calls_ended_total{reason=~"user_unavailable|user_rejected"}[1h])) / sum(increase(livekit_sip_calls_started_total[1h])), 0)  # answer ratio (approximate)',
    ),
    "livekit_agent_jobs_started_total": (
        "agent_job_started: Job.agent_name (LiveKit Cloud)",
        "sum by (agent_name) (rate(livekit_agent_jobs_started_total[5m]))",
    ),
    "livekit_agent_jobs_ended_total": (
        "agent_job_ended: agent_name, JobState.status (LiveKit Cloud)",
        'sum by (agent_name) (increase(livekit_agent_jobs_ended_total{status="failed"}[1h]))',
    ),
}

EVENT_METRICS: dict[str, tuple[str, str]] = {
    "voice_agent_calls_started_total": (
        "call_started",
        "sum by (agent, direction) (rate(voice_agent_calls_started_total[5m]))",
    ),
    "voice_agent_calls_answered_total": (
        "call_answered",
        'sum by (agent) (rate(voice_agent_calls_answered_total{answered_by="human"}[1h])) / sum by (agent) (rate(voice_agent_calls_started_total{direction="outbound"}[1h]))  # human answer rate',
    ),
    "voice_agent_calls_ended_total": (
        "call_ended",
        "sum by (agent, outcome) (increase(voice_agent_calls_ended_total[1h]))",
    ),
    "voice_agent_calls_expired_total": (
        "calls whose call_ended did not arrive within events.call_ttl",
        "sum by (agent) (increase(voice_agent_calls_expired_total[1h])) > 0",
    ),
    "voice_agent_calls_active": (
        "call_started - call_ended, with the events.call_ttl expiry",
        "sum by (agent) (voice_agent_calls_active)",
    ),
    "voice_agent_calls_queued": ("calls_queued (dialers)", "sum by (campaign) (voice_agent_calls_queued)"),
    "voice_agent_campaign_running": ("campaign_status (dialers)", "voice_agent_campaign_running == 0"),
    "voice_agent_dependency_up": (
        "dependency_status; gone after events.dependency_ttl without a report",
        "min by (dependency) (voice_agent_dependency_up) == 0",
    ),
    "voice_agent_call_duration_seconds": (
        "call_ended.duration_seconds",
        "histogram_quantile(0.5, sum by (agent, le) (rate(voice_agent_call_duration_seconds_bucket[1h])))",
    ),
    "voice_agent_call_setup_seconds": (
        "call_answered.setup_seconds",
        "histogram_quantile(0.9, sum by (direction, le) (rate(voice_agent_call_setup_seconds_bucket[1h])))",
    ),
    "voice_agent_turns_total": (
        "turn",
        'sum by (agent) (rate(voice_agent_turns_total{interrupted="true"}[15m])) / sum by (agent) (rate(voice_agent_turns_total[15m]))',
    ),
    "voice_agent_interruptions_total": (
        "turn.interruptions (default: 1 if interrupted)",
        "sum by (agent) (rate(voice_agent_interruptions_total[15m]))",
    ),
    "voice_agent_turn_latency_seconds": (
        "turn.e2e_latency_seconds",
        "histogram_quantile(0.95, sum by (agent, le) (rate(voice_agent_turn_latency_seconds_bucket[5m])))",
    ),
    "voice_agent_end_of_utterance_delay_seconds": (
        "turn.end_of_utterance_delay_seconds",
        "histogram_quantile(0.95, sum by (agent, le) (rate(voice_agent_end_of_utterance_delay_seconds_bucket[5m])))",
    ),
    "voice_agent_transcription_delay_seconds": (
        "turn.transcription_delay_seconds, labelled by turn.stt_provider / stt_model",
        "histogram_quantile(0.95, sum by (provider, le) (rate(voice_agent_transcription_delay_seconds_bucket[5m])))",
    ),
    "voice_agent_llm_time_to_first_token_seconds": (
        "turn.llm_ttft_seconds, labelled by turn.llm_provider / llm_model",
        "histogram_quantile(0.95, sum by (provider, model, le) (rate(voice_agent_llm_time_to_first_token_seconds_bucket[5m])))",
    ),
    "voice_agent_llm_request_duration_seconds": (
        "llm.duration_seconds",
        "histogram_quantile(0.95, sum by (model, le) (rate(voice_agent_llm_request_duration_seconds_bucket[5m])))",
    ),
    "voice_agent_tts_time_to_first_byte_seconds": (
        "turn.tts_ttfb_seconds, labelled by turn.tts_provider / tts_model",
        "histogram_quantile(0.95, sum by (provider, le) (rate(voice_agent_tts_time_to_first_byte_seconds_bucket[5m])))",
    ),
    "voice_agent_tool_call_duration_seconds": (
        "tool_call.duration_seconds",
        "histogram_quantile(0.95, sum by (tool, le) (rate(voice_agent_tool_call_duration_seconds_bucket[5m])))",
    ),
    "voice_agent_llm_tokens_total": ("llm", "sum by (model, type) (rate(voice_agent_llm_tokens_total[1h]))"),
    "voice_agent_tts_characters_total": (
        "tts.characters",
        "sum by (provider) (rate(voice_agent_tts_characters_total[1h]))",
    ),
    "voice_agent_stt_audio_seconds_total": (
        "stt.audio_seconds",
        "sum by (provider) (rate(voice_agent_stt_audio_seconds_total[1h])) * 60  # audio minutes per minute",
    ),
    "voice_agent_errors_total": (
        "error (recoverable: error.recoverable)",
        'sum by (agent, component) (rate(voice_agent_errors_total{recoverable="false"}[5m]))',
    ),
    "voice_agent_estimated_cost_dollars_total": (
        "llm / stt / tts usage x events.prices",
        "sum by (agent) (increase(voice_agent_estimated_cost_dollars_total[1d])) / sum by (agent) (increase(voice_agent_calls_ended_total[1d]))  # per call",
    ),
}

EXPORTER_METRICS: dict[str, tuple[str, str]] = {
    "livekit_exporter_events_total": (
        "events accepted by the events API",
        "sum by (type) (rate(livekit_exporter_events_total[5m]))",
    ),
    "livekit_exporter_event_requests_rejected_total": (
        "events API requests refused whole (400, 401, 413, 415, 422, 429)",
        "sum by (reason) (rate(livekit_exporter_event_requests_rejected_total[5m])) > 0",
    ),
    "livekit_exporter_event_latencies_discarded_total": (
        "turn-stage timings above events.max_latency (not observed)",
        "sum by (type, field) (increase(livekit_exporter_event_latencies_discarded_total[1h])) > 0",
    ),
    "livekit_exporter_unpriced_usage_events_total": (
        "stt / llm / tts usage events.prices does not price",
        "sum by (component, provider, model) (increase(livekit_exporter_unpriced_usage_events_total[1h])) > 0",
    ),
    "livekit_exporter_scrape_duration_seconds": (
        "time the last scrape spent on the LiveKit API",
        "max_over_time(livekit_exporter_scrape_duration_seconds[10m])",
    ),
    "livekit_exporter_room_detail_rooms": (
        "rooms read / skipped by collect.room_detail.max_rooms",
        'livekit_exporter_room_detail_rooms{result="skipped"} > 0',
    ),
    "livekit_exporter_scrapes_total": (
        "scrapes, by new or joined (shared in-flight) collection",
        "rate(livekit_exporter_scrapes_total[5m])",
    ),
    "livekit_exporter_basic_auth_rejected_total": (
        "requests basic auth (--web.config.file basic_auth_users) answered with 401",
        "sum by (reason) (rate(livekit_exporter_basic_auth_rejected_total[5m])) > 0",
    ),
    "livekit_exporter_build_info": ("constant", "livekit_exporter_build_info"),
    "livekit_exporter_http_requests_rejected_total": (
        "the HTTP server's own refusals: bad header bytes, slow or too many clients (server.*)",
        "sum by (reason) (rate(livekit_exporter_http_requests_rejected_total[5m])) > 0",
    ),
    "livekit_exporter_config_last_reload_successful": (
        "the last reload (SIGHUP, POST /-/reload); 0: the previous configuration still runs",
        "livekit_exporter_config_last_reload_successful == 0",
    ),
    "livekit_exporter_config_last_reload_success_timestamp_seconds": (
        "when the running configuration was loaded",
        "time() - livekit_exporter_config_last_reload_success_timestamp_seconds",
    ),
    "livekit_exporter_http_internal_errors_total": (
        "requests answered 500: a bug, with its traceback in the log",
        "increase(livekit_exporter_http_internal_errors_total[1h]) > 0",
    ),
    "livekit_exporter_label_overflow_total": (
        "the cardinality guard",
        "sum by (metric, label) (rate(livekit_exporter_label_overflow_total[1h])) > 0",
    ),
    "livekit_exporter_scrape_render_timeouts_total": (
        "scrapes whose rendering outlived the scrape budget (answered 503)",
        "increase(livekit_exporter_scrape_render_timeouts_total[1h]) > 0",
    ),
}

DOCS: dict[str, tuple[str, str, str]] = {  # metric -> (section, where the number comes from, example PromQL)
    metric: (section, source, query)
    for section, table in (
        ("state", STATE_METRICS),
        ("webhooks", WEBHOOK_METRICS),
        ("events", EVENT_METRICS),
        ("exporter", EXPORTER_METRICS),
    )
    for metric, (source, query) in table.items()
}

# Standard collectors of prometheus-client, documented by reference only.
STANDARD_PREFIXES = ("process_", "python_")

INTRO = """# Metrics

Generated by `python -m livekit_exporter.metricsdoc` from what the exporter serves; a test fails when
this file is stale. Names follow the Prometheus naming rules and pass `promtool check metrics`.

Label rules: every label has a bounded set of values. Room names, identities, call ids and phone
numbers are never labels. User-named labels (agent, campaign, outcome, provider, model, trunk, tool,
agent_name) pass a cardinality guard: at most `labels.max_values` (default 50) distinct values per
label and metric; the rest become `__other__` and are counted in `livekit_exporter_label_overflow_total`.
Values within that cap still multiply, so each such metric also keeps at most
`labels.max_series_per_metric` series (default 10,000; a histogram's child counts its buckets, `_sum`
and `_count`) and all of them together at most `labels.max_series` (default 100,000): a new label
combination past a budget is folded into `__other__` (its last user-named labels first, then every
label), so a sum over all series is still what was sent, and each folded label is counted in the same
counter.
Gauges rebuilt on every scrape (`livekit_sip_calls`, `livekit_agent_jobs`) keep the label's busiest
values of that scrape and sum the rest into `__other__`, counting each folded value once per scrape,
and keep their busiest `labels.max_series_per_metric` series the same way.
The `voice_agent_*` metrics (and `livekit_exporter_unpriced_usage_events_total`) share one admitted
set per label, so an agent is itself in all of them or `__other__` in all; their gauges set from
reports drop an overflowing report rather than set `__other__`.

Several LiveKit projects (`projects:` in the configuration): each project is a scrape target of its own,
`/metrics?project=<name>`, serving the families below for that project alone (the process and
`livekit_exporter_build_info`, HTTP-server and reload families only on `/metrics`, the exporter's own);
the `project` label is Prometheus's, set by relabelling (docs/architecture.md, "Several projects"). The
exporter itself never writes it.

Enum labels are the protobuf enum names, lower-cased, with the enum's prefix dropped
(`EGRESS_ACTIVE` -> `active`, `RTMP_INPUT` -> `rtmp`, `JS_RUNNING` -> `running`). Section-1 gauges with
enum labels export every combination (zero included) once the service answered, so `absent()` means
"not read", never "none". A family whose service failed this scrape is left out; `livekit_api_up`
says which.

Differences from the starting catalogue, and why:
- `livekit_ingress_input_bytes_per_second` (was "ingress input bitrate"): Prometheus' base unit is
  bytes, and `promtool check metrics` flags `bits`; multiply by 8 for a bitrate.
- `livekit_room_size` is a gauge histogram (OpenMetrics `gaugehistogram`; `histogram` in the text
  format, with `_gcount` / `_gsum`): rooms by `Room.num_participants`, bounds from `collect.room_size_buckets`.
- `livekit_rooms_full` is added: rooms whose `max_participants` limit is reached.
- `livekit_exporter_room_detail_rooms` is added: how much of the opt-in per-room detail the cap let through.
- `livekit_agent_jobs_started_total` is added, so job starts and ends can be compared.
- `livekit_webhook_rejected_total` has three more reasons than the catalogue: `invalid_token`,
  `not_yet_valid` and `unsupported_media_type`. Every reason and its status is in the table
  "Webhook rejections" below; a rejected request changes no other metric.
- `livekit_sip_calls_ended_total` counts `participant_left` of kind sip only, not
  `participant_connection_aborted` (the catalogue had both): an aborted participant never sent
  `participant_joined`, so it was never a call started, and counting it as ended would let ended
  run ahead of started and the answer ratio go below zero. Aborted SIP participants stay visible in
  `livekit_participant_connections_aborted_total{kind="sip"}`. An outbound call's participant joins
  before it dials, so `livekit_sip_calls_started_total` counts dial attempts for outbound calls.
  LiveKit ends a call with `user_unavailable` when the callee did not respond in time and
  `user_rejected` when the callee rejected it (busy); an unanswered call can carry another reason,
  so the answer ratio below is an estimate.
- `livekit_room_sessions_ended_total{end_reason}` reads `room_end_reason`, which only LiveKit
  versions that set the field send (it is in livekit-protocol, but the open-source server may not
  set it); `end_reason="unknown"` means LiveKit sent none (or one newer than this version).
- `livekit_ingress_ended_total` counts every change of an ingress into error, inactive or complete
  (LiveKit sends ingress_ended on each, published or not); `livekit_egress_ended_total` includes
  auto-egress that never started, so it can exceed `livekit_egress_started_total`.
- Webhook durations come from each event's own timestamps (`created_at` against the room's
  `creation_time`, the participant's `joined_at`, the egress `started_at`), so retries and
  out-of-order delivery do not change them; `created_at` is whole seconds, so delivery delays and
  room and participant durations are too.
- `voice_agent_estimated_cost_dollars_total` is the catalogue's "estimated cost counter": the unit
  (US dollars, the currency of `events.prices`) is in the name, as Prometheus naming asks.
- `livekit_exporter_event_requests_rejected_total{reason}` (was `livekit_exporter_events_rejected_total`):
  a refused request applies none of its events, and on 401, 413 or 415 they are not even parsed, so
  it counts requests; the reasons are unauthorized, unsupported_media_type, too_large,
  too_many_events, malformed (not JSON, or nested too deeply), invalid (an event breaks the schema,
  or a malformed Idempotency-Key), duplicate_key (an object names a key twice), idempotency_conflict
  (a key reused for another body), rate_limited (over events.rate_limit, 429), unknown_project and
  forbidden_project (with several projects: a ?project= that names none, or another than the token's).
- `livekit_exporter_event_latencies_discarded_total{type,field}` is added: the sanity rule's count
  of turn-stage timings above `events.max_latency` (see docs/events-api.md).
- `livekit_exporter_unpriced_usage_events_total{component,provider,model}` is added: usage the
  price table does not price adds no cost, and this says so (a cost counter silently at zero
  otherwise looks like a free provider).
- `voice_agent_errors_total` has a `recoverable` label: errors the agent retried past are
  `"true"`, so alerts on failures are not set off by retries that succeeded.
- `voice_agent_calls_expired_total` is added: calls the `events.call_ttl` took out of
  `voice_agent_calls_active` because their `call_ended` never arrived.
- `voice_agent_interruptions_total` counts every time a user spoke over the agent (the turn's
  `interruptions`, false interruptions included); `voice_agent_turns_total{interrupted="true"}`
  counts turns whose reply was cut short.
"""


FOREIGN_SECTION = """
## Not served by this exporter: what the bundle reads from LiveKit's own /metrics

The optional alerts and the "LiveKit server nodes" dashboard read these when Prometheus also
scrapes them (`jobs` and `prometheus.targets` of `prometheus/mixin.yml`). Their names and units are
LiveKit's; the simulator serves the same names for the tests (`simulator/server_metrics.py`,
`sip_metrics.py`, `worker_metrics.py`).

| source | metrics |
|---|---|
| livekit-server (`prometheus: port:`), pkg/telemetry/prometheus, labels node_id, node_type | `livekit_room_total`, `livekit_participant_total`, `livekit_track_published_total{kind}`, `livekit_track_subscribed_total{kind}` (gauges despite the suffix); `livekit_quality_score` (histogram, MOS 1 to 4.5); `livekit_packet_loss_percent`, `livekit_jitter_us`, `livekit_rtt_ms` (histograms by direction, source, type, country); `livekit_packet_total`, `livekit_packet_loss_total`, `livekit_nack_total`, `livekit_pli_total`, `livekit_participant_join_total{state,warp}` (counters) |
| LiveKit SIP (`prometheus_port`), livekit/sip pkg/stats, label node_id | `livekit_sip_invite_requests{dir}`, `livekit_sip_invite_requests_raw`, `livekit_sip_invite_accepted{dir,to}`, `livekit_sip_calls_terminated{dir,to,result,reason}` (counters without `_total`), `livekit_sip_calls_active{dir,to}`, `livekit_sip_available` (gauges) |
| livekit-agents workers (`prometheus_port`), label nodename (and `agent` from the scrape config) | `lk_agents_worker_load` (0 to 1), `lk_agents_active_job_count`, `lk_agents_child_process_count` (gauges), `lk_agents_proc_initialize_duration_seconds` (histogram) |
"""


async def _collect() -> tuple[str, dict[str, tuple[str, ...]]]:
    import random

    from aiohttp.test_utils import TestClient, TestServer

    from .demo import demo_config
    from .server import EXPORTER, build_app
    from .simulator import Scenario, Simulator
    from .simulator.lively import populate

    scenario = Scenario()
    populate(scenario, random.Random(1))
    async with Simulator(scenario) as sim:
        app = build_app(demo_config(sim.url, scenario, EXERCISE_TOKEN))
        async with TestClient(TestServer(app)) as client:
            await exercise(client, scenario)
            resp = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
            text = await resp.text()
    # Label names of long-lived metrics that may have no sample yet (a counter never incremented).
    registry = app[EXPORTER].telemetry.registry
    labelnames = {name: tuple(getattr(c, "_labelnames", ())) for name, c in registry._names_to_collectors.items()}
    return text, labelnames


EXERCISE_TOKEN = "metricsdoc-events-token-0123456789"


async def exercise(client: Any, scenario: Any) -> None:
    """Drives every source once, so that its families have samples to show."""
    from .simulator import Fault

    scenario.set_fault("ingress", Fault("error", "unavailable"))
    await client.get("/metrics")
    scenario.set_fault("ingress", None)
    await _webhooks(client, scenario)
    await _events(client)


async def _webhooks(client: Any, scenario: Any) -> None:
    """One life of each kind, delivered as LiveKit delivers webhooks."""
    from livekit.protocol import agent, egress, ingress, models

    from .server import EXPORTER
    from .simulator import WebhookSender
    from .simulator.scenario import State

    path = client.server.app[EXPORTER].config.webhooks.path
    async with WebhookSender(scenario, str(client.make_url(path))) as sender:
        scenario.add_room("docs")
        scenario.add_participant("docs", "alice", tracks=[(models.AUDIO, models.MICROPHONE)])
        scenario.add_participant("docs", "never-connected", state=State.JOINED)
        scenario.add_sip_call("docs", next(iter(scenario.inbound_trunks), "ST_docs"))
        eg = scenario.add_egress("docs", "room_composite")
        scenario.set_egress_status(eg.egress_id, egress.EGRESS_COMPLETE, output_bytes=1 << 20)
        ing = scenario.add_ingress(ingress.WHIP_INPUT, ingress.IngressState.ENDPOINT_PUBLISHING, room="docs")
        scenario.set_ingress_status(ing.ingress_id, ingress.IngressState.ENDPOINT_COMPLETE)
        d = scenario.add_dispatch("docs", "support-agent", [agent.JS_PENDING])
        scenario.set_job_status("docs", d.id, 0, agent.JS_RUNNING)
        scenario.set_job_status("docs", d.id, 0, agent.JS_SUCCESS)
        scenario.remove_room("docs")
        await sender.flush()


async def _events(client: Any) -> None:
    """Simulated voice agents through the push client, a refused request, a discarded timing and
    a call that outlives its TTL."""
    from .client import EventsClient
    from .events import PIPELINE
    from .events import model as m
    from .simulator.voice_agents import VoiceAgentFleet

    async with EventsClient(str(client.make_url("/")), EXERCISE_TOKEN) as events:
        fleet = VoiceAgentFleet(events, seed=5)
        fleet.simulate(calls=12, leave_open=1)
        events.emit(m.Turn(agent="support-agent", transcription_delay_seconds=120.0))  # a timestamp bug
        await events.flush()
    await client.post("/v1/events", data=b"{}", headers={"Content-Type": "application/json"})
    pipeline = client.app[PIPELINE]
    now = pipeline.clock()
    pipeline.clock = lambda: now + pipeline.config.call_ttl + 1  # the open call outlives its TTL
    pipeline.sweep()


def _rejections() -> str:
    from .webhooks import REJECTIONS

    rows = "".join(f"| `{reason}` | {status} | {when} |\n" for reason, (status, when) in REJECTIONS.items())
    return (
        "\n## Webhook rejections\n\nEvery request `POST /webhook` refuses gets a 4xx (LiveKit retries 5xx, never "
        "4xx) and counts once in `livekit_webhook_rejected_total{reason}`:\n\n"
        "| reason | status | when |\n|---|---|---|\n" + rows
    )


def render(text: str, labelnames: dict[str, tuple[str, ...]]) -> str:
    fams: dict[str, list[tuple[str, str, str, str, str, str]]] = {k: [] for k in SECTIONS}
    seen: set[str] = set()
    missing = []
    for fam in text_string_to_metric_families(text):
        if fam.name.startswith(STANDARD_PREFIXES) or fam.name in seen:
            continue
        seen.add(fam.name)
        name = fam.name + {"counter": "_total", "info": "_info"}.get(fam.type, "")
        key = fam.name if fam.name in DOCS else name
        if key not in DOCS:
            missing.append(name)
            continue
        section, source, query = DOCS[key]
        labels = sorted(({k for s in fam.samples for k in s.labels} | set(labelnames.get(name, ()))) - {"le"})
        fams[section].append((name, fam.type, ", ".join(labels) or "—", fam.documentation, source, query))
    if missing:
        raise UndocumentedMetric(
            f"no DOCS entry for {', '.join(missing)}: add one to its section's table in metricsdoc.py (source, example query)"
        )
    undocumented_in_output = sorted(set(DOCS) - set(seen) - {f + "_total" for f in seen})
    out = [INTRO, _rejections()]
    for key, title in SECTIONS.items():
        if not fams[key]:
            continue
        out.append(f"\n## {title}\n\n| metric | type | labels | help | from | example |\n|---|---|---|---|---|---|\n")
        for name, mtype, label_list, doc, source, query in sorted(fams[key]):
            q = query.replace("|", "\\|")
            out.append(f"| `{name}` | {mtype} | {label_list} | {doc} | {source} | `{q}` |\n")
    out.append(
        "\n## Standard process metrics\n\n`process_*` (CPU, memory, file descriptors, start time) and "
        "`python_*` (GC, interpreter info) from prometheus-client's default collectors.\n"
    )
    out.append(FOREIGN_SECTION)
    if undocumented_in_output:
        out.append(
            "\n## Not in the sample output\n\nThese exist but had no sample when this page was generated: "
            + ", ".join(f"`{m}`" for m in undocumented_in_output)
            + ".\n"
        )
    return "".join(out)


class UndocumentedMetric(Exception):
    """The exporter serves a metric that metricsdoc.DOCS does not describe."""


def main() -> int:
    logging.disable(logging.CRITICAL)
    try:
        sys.stdout.write(render(*asyncio.run(_collect())))
    except UndocumentedMetric as e:
        print(f"metricsdoc: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
