"""The events API contract: one msgspec Struct per event type, tagged by its `type` field.

These Structs are the single source of truth. The published JSON Schema
(schemas/events.schema.json) is generated from them, and the same Structs decode and validate every
request body on the hot path (about 100x faster than validating with the jsonschema package).
The push client builds them too, so a client and an exporter of the same version always agree.

    python -m livekit_exporter.events > exporter/livekit_exporter/schemas/events.schema.json

Units: every duration is in seconds (a float), every count an integer. Optional numbers may be
absent or null: both mean "not measured", and no observation is made.
"""

from __future__ import annotations

import inspect
import json
from typing import Annotated, Any, Literal, Union

import msgspec

SCHEMA_ID = "https://github.com/livekit-exporter/livekit-exporter/events.schema.json"

# Every number is finite, not negative, and below a bound no real call reaches (11.6 days): the
# schema rejects NaN, infinities and negative values outright. Turn-stage timings above
# events.max_latency pass the schema but are discarded and counted (see pipeline.py).
MAX_SECONDS = 1_000_000.0

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_SECONDS)]
Count = Annotated[int, msgspec.Meta(ge=0, le=10**12)]
Direction = Literal["inbound", "outbound", "web"]


# Field types carry their description (msgspec.Meta) into the generated events.schema.json.


AgentName = Annotated[
    Name, msgspec.Meta(description="The agent's name, a label of every voice_agent_* metric (cardinality-guarded).")
]
CallId = Annotated[
    Annotated[str, msgspec.Meta(min_length=1, max_length=256)],
    msgspec.Meta(
        description="Identifies one call across its events (never a label); the active-calls gauge follows it."
    ),
]
Campaign = Annotated[
    Annotated[str, msgspec.Meta(max_length=128)],
    msgspec.Meta(description="The outbound campaign the call belongs to; empty for none (cardinality-guarded label)."),
]
# Exemplars: OpenMetrics caps an exemplar's label names and values at 128 characters together;
# call_id (7) + trace_id (8) + 64 + 32 = 111.
# No control characters: Prometheus' OpenMetrics parser refuses a NUL in an exemplar and fails the
# whole scrape, so one such call_id would take every metric of the exporter down.
# `$(?!\n)`: the end of the string. Python's `$` (and msgspec's, which uses re.search) also
# matches before a final newline; the lookahead refuses that, and means nothing to ECMA-262 regexes.
EXEMPLAR_CALL_ID_PATTERN = "^[^\\x00-\\x1f\\x7f]{1,64}$(?!\\n)"
ExemplarCallId = Annotated[
    Annotated[str, msgspec.Meta(pattern=EXEMPLAR_CALL_ID_PATTERN)],
    msgspec.Meta(
        description="The call this turn belongs to, attached to its latency observations as an OpenMetrics exemplar "
        "(never a label), so a slow turn on a dashboard links to its call. 1 to 64 characters, no control "
        "characters."
    ),
]
TraceId = Annotated[
    Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{32}$(?!\\n)")],
    msgspec.Meta(
        description="The turn's OpenTelemetry trace id (32 lowercase hex digits), attached as an exemplar like call_id."
    ),
]
Provider = Annotated[
    Name, msgspec.Meta(description="The provider, e.g. openai, deepgram, elevenlabs (cardinality-guarded label).")
]
Model = Annotated[Name, msgspec.Meta(description="The model, e.g. gpt-4o-mini, nova-3 (cardinality-guarded label).")]


LATENCY_NOTE = " Seconds; above events.max_latency the value is discarded and counted."


class _Event(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True, gc=False, kw_only=True):
    pass


class _CallEvent(_Event, kw_only=True):
    """The fields that begin each event of one call's life (started, answered, ended)."""

    agent: AgentName
    call_id: CallId
    direction: Direction
    campaign: Campaign = ""


class _UsageEvent(_Event, kw_only=True):
    """The fields that begin each usage event (stt, llm, tts)."""

    agent: AgentName
    provider: Provider
    model: Model


class CallStarted(_CallEvent, tag="call_started", kw_only=True):
    """A call began: dialling (outbound), ringing in (inbound) or a web session opening.

    Counts voice_agent_calls_started_total and adds the call to voice_agent_calls_active until its
    call_ended arrives or events.call_ttl passes."""


class CallAnswered(_CallEvent, tag="call_answered", kw_only=True):
    """The callee picked up (for outbound calls), or the agent took the call.

    Counts voice_agent_calls_answered_total; setup_seconds (dial to answer) feeds
    voice_agent_call_setup_seconds."""

    answered_by: Annotated[
        Literal["human", "machine", "unknown"],
        msgspec.Meta(description="Who answered, as far as the agent could tell."),
    ] = "unknown"
    setup_seconds: Annotated[Seconds, msgspec.Meta(description="Seconds from dial to answer.")] | None = None


class CallEnded(_CallEvent, tag="call_ended", kw_only=True):
    """A call ended, with its outcome.

    Counts voice_agent_calls_ended_total, removes the call from voice_agent_calls_active, and
    observes duration_seconds in voice_agent_call_duration_seconds."""

    outcome: Annotated[
        Name,
        msgspec.Meta(
            description="User-defined, e.g. qualified, not_interested, no_answer, failed, transferred (cardinality-guarded label)."
        ),
    ]
    duration_seconds: (
        Annotated[Seconds, msgspec.Meta(description="Seconds from start (or answer) to hang-up.")] | None
    ) = None


class CallsQueued(_Event, tag="calls_queued", kw_only=True):
    """A dialer's queue depth: sets voice_agent_calls_queued{agent, campaign}.

    The series disappears when no report arrives for events.campaign_ttl: re-send it periodically."""

    agent: AgentName
    campaign: Campaign = ""
    queued: Annotated[Count, msgspec.Meta(description="Calls waiting to be dialled.")]


class CampaignStatus(_Event, tag="campaign_status", kw_only=True):
    """Whether a campaign is running: sets voice_agent_campaign_running{campaign} to 1 or 0.

    The series disappears when no report arrives for events.campaign_ttl: re-send it periodically
    while the campaign runs."""

    campaign: Annotated[Name, msgspec.Meta(description="The campaign (cardinality-guarded label).")]
    running: bool


class DependencyStatus(_Event, tag="dependency_status", kw_only=True):
    """An agent's view of one dependency: sets voice_agent_dependency_up{agent, dependency}.

    The series disappears when no report arrives for events.dependency_ttl."""

    agent: AgentName
    dependency: Annotated[
        Name, msgspec.Meta(description="e.g. deepgram, openai, elevenlabs, database (cardinality-guarded label).")
    ]
    up: bool


class Turn(_Event, tag="turn", kw_only=True):
    """One conversational turn: the user spoke, the agent answered (or was cut short).

    Counts voice_agent_turns_total{interrupted}; each stage latency present feeds its histogram;
    the stage providers and models label the stage histograms ("unknown" when absent)."""

    agent: AgentName
    interrupted: Annotated[bool, msgspec.Meta(description="The user cut the agent's reply short.")] = False
    interruptions: (
        Annotated[
            Count,
            msgspec.Meta(
                description="Times the user spoke over the agent during this turn, false interruptions (the agent "
                "resumed) included; when absent, 1 if interrupted else 0. At least 1 when interrupted is "
                "true (a turn the user cut short had an interruption): 0 there is refused."
            ),
        ]
        | None
    ) = None
    e2e_latency_seconds: (
        Annotated[
            Seconds,
            msgspec.Meta(
                description="Voice-to-voice: the user stopped speaking -> the agent's audio started." + LATENCY_NOTE
            ),
        ]
        | None
    ) = None
    end_of_utterance_delay_seconds: (
        Annotated[
            Seconds,
            msgspec.Meta(description="End of speech (VAD) -> the decision that the user's turn ended." + LATENCY_NOTE),
        ]
        | None
    ) = None
    transcription_delay_seconds: (
        Annotated[Seconds, msgspec.Meta(description="End of speech -> final transcript." + LATENCY_NOTE)] | None
    ) = None
    llm_ttft_seconds: (
        Annotated[Seconds, msgspec.Meta(description="LLM request -> first token." + LATENCY_NOTE)] | None
    ) = None
    tts_ttfb_seconds: (
        Annotated[Seconds, msgspec.Meta(description="First text sent to TTS -> first audio byte." + LATENCY_NOTE)]
        | None
    ) = None
    stt_provider: Provider | None = None
    stt_model: Model | None = None
    llm_provider: Provider | None = None
    llm_model: Model | None = None
    tts_provider: Provider | None = None
    tts_model: Model | None = None
    call_id: ExemplarCallId | None = None
    trace_id: TraceId | None = None


class STTUsage(_UsageEvent, tag="stt", kw_only=True):
    """Speech-to-text usage: audio_seconds feeds voice_agent_stt_audio_seconds_total and the cost."""

    audio_seconds: Annotated[Seconds, msgspec.Meta(description="Seconds of audio transcribed.")]


class LLMUsage(_UsageEvent, tag="llm", kw_only=True):
    """One LLM request (or a usage increment): tokens, its duration, and the cost.

    input_tokens counts every prompt token, cached ones included; cached_tokens is the part
    served from the provider's cache (priced at the cached rate)."""

    input_tokens: Count = 0
    output_tokens: Count = 0
    cached_tokens: Count = 0
    duration_seconds: (
        Annotated[
            Seconds, msgspec.Meta(description="Request -> last token, in seconds (not subject to events.max_latency).")
        ]
        | None
    ) = None


class TTSUsage(_UsageEvent, tag="tts", kw_only=True):
    """Text-to-speech usage: characters feed voice_agent_tts_characters_total and, with
    audio_seconds, the cost."""

    characters: Annotated[Count, msgspec.Meta(description="Characters synthesized.")] = 0
    audio_seconds: Annotated[
        Seconds, msgspec.Meta(description="Seconds of audio synthesized (used only for per-minute prices).")
    ] = 0.0


class ToolCall(_Event, tag="tool_call", kw_only=True):
    """One function-tool call: duration_seconds feeds voice_agent_tool_call_duration_seconds."""

    agent: AgentName
    tool: Annotated[Name, msgspec.Meta(description="The tool's name (cardinality-guarded label).")]
    duration_seconds: Annotated[
        Seconds,
        msgspec.Meta(
            description="Call -> result, in seconds (not subject to events.max_latency: a tool may legitimately wait minutes)."
        ),
    ]


class Error(_Event, tag="error", kw_only=True):
    """An error in one component of the pipeline: counts voice_agent_errors_total."""

    agent: AgentName
    component: Literal["stt", "llm", "tts", "tool", "transport", "other"]
    error_type: Annotated[
        Name,
        msgspec.Meta(
            description="A short, bounded error kind, e.g. timeout, rate_limited, APIConnectionError "
            "(cardinality-guarded label `type`)."
        ),
    ]
    recoverable: Annotated[
        bool,
        msgspec.Meta(
            description='The agent retried past it (or otherwise carried on): label recoverable="true". '
            "Default false: the error failed the request."
        ),
    ] = False


Event = Union[  # noqa: UP007 (msgspec takes the tagged union; EVENT_TYPES reads its __args__)
    CallStarted,
    CallAnswered,
    CallEnded,
    CallsQueued,
    CampaignStatus,
    DependencyStatus,
    Turn,
    STTUsage,
    LLMUsage,
    TTSUsage,
    ToolCall,
    Error,
]
EVENT_TYPES: tuple[type[_Event], ...] = Event.__args__  # type: ignore[attr-defined]
TYPE_NAMES: tuple[str, ...] = tuple(str(t.__struct_config__.tag) for t in EVENT_TYPES)


class Batch(msgspec.Struct, forbid_unknown_fields=True):
    """The body of POST /v1/events with Content-Type application/json."""

    events: list[Event]


def _clean_descriptions(node: Any) -> Any:
    """Docstrings -> one paragraph per blank-line-separated block, without source indentation."""
    if isinstance(node, dict):
        return {
            k: (" ".join(inspect.cleandoc(v).split()) if k == "description" else _clean_descriptions(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node


def schema() -> dict[str, Any]:
    """The published JSON Schema (draft 2020-12) of a batch, generated from the Structs above."""
    generated = _clean_descriptions(msgspec.json.schema(Batch))
    defs = generated["$defs"]
    batch = defs.pop("Batch")
    items = batch["properties"]["events"]["items"]
    defs["Event"] = {
        "description": "One event; its `type` selects the shape. In NDJSON, each line is one Event.",
        **items,
    }
    batch["properties"]["events"]["items"] = {"$ref": "#/$defs/Event"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "livekit-exporter voice-agent events",
        "description": (
            "Body of POST /v1/events (application/json). Generated from "
            "livekit_exporter/events/model.py; do not edit by hand."
        ),
        **{k: v for k, v in batch.items() if k not in ("title", "description")},
        "$defs": dict(sorted(defs.items())),
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2, sort_keys=False) + "\n"
