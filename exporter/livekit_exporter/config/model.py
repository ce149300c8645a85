"""The configuration's one source: typed dataclasses whose fields carry their YAML key, type,
constraints, default and description.

schemas/config.schema.json and docs/configuration.md are generated from these classes
(`python -m livekit_exporter.config`); load.py validates the YAML against that schema and converts
it into them with msgspec. A default is written here and nowhere else.

Durations are written in the YAML as Prometheus durations (`1m30s`) and held as seconds
(`Duration`, a float); secrets are held as `Secret`, which never shows itself.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from msgspec import Meta

# LiveKit signs every webhook with a token valid for 5 minutes. The exporter allows 1 minute of clock
# difference with LiveKit (livekit-api's TokenVerifier default) on `nbf` and `exp`, and refuses a token
# whose `exp` lies further ahead than 5 minutes plus that minute. So an accepted request can be
# replayed for at most 5 + 1 + 1 minutes: an event id must be remembered that long, or a replay
# would count twice.
WEBHOOK_TOKEN_TTL = 300.0
WEBHOOK_CLOCK_LEEWAY = 60.0
WEBHOOK_REPLAY_WINDOW = WEBHOOK_TOKEN_TTL + 2 * WEBHOOK_CLOCK_LEEWAY
# Bearer tokens of the events API, however given (inline, files, environment).
MIN_TOKEN_LENGTH = 16
# A project's name: the value of its `project` label and of the `project` URL parameter.
PROJECT_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

DURATION_PATTERN = "^([0-9]+(ms|s|m|h|d))+$"
URL_PATTERN = r"^(https?|wss?)://[^\s/]+(/\S*)?$"
_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """'1m30s' -> 90.0."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration (like 500ms, 10s, 1m30s, 2h)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def format_duration(seconds: float) -> str:
    """90.0 -> '1m30s': the shortest duration text whose parse_duration is `seconds`."""
    millis = round(seconds * 1000)
    parts = []
    for unit, size in _UNIT_SECONDS.items():
        n, millis = divmod(millis, round(size * 1000))
        if n:
            parts.append(f"{n}{unit}")
    return "".join(parts) or "0s"


_USERINFO = re.compile(r"//[^/@\s]*@")


def without_credentials(text: str) -> str:
    """A URL (or any text holding one) with its user:password@ blanked, for logs, pages and errors."""
    return _USERINFO.sub("//***@", text)


class Duration(float):
    """Seconds, written in YAML as a Prometheus duration (500ms, 10s, 1m30s, 2h, 1d)."""

    @classmethod
    def parse(cls, text: str) -> Duration:
        return cls(parse_duration(text))

    def __repr__(self) -> str:
        return format_duration(self)


class Secret:
    """A string that never shows itself in repr(), str(), logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


NO_SECRET = Secret("")

# Field types: the constraints the schema states and the YAML is validated against.
Positive = Annotated[int, Meta(ge=1)]
FilePath = Annotated[str, Meta(min_length=1)]
Buckets = Annotated[
    tuple[Annotated[float, Meta(gt=0)], ...], Meta(min_length=1, extra_json_schema={"uniqueItems": True})
]
UrlPath = Annotated[str, Meta(pattern="^/")]
SERVICES = ("room", "egress", "ingress", "sip")
Service = Annotated[str, Meta(extra_json_schema={"enum": list(SERVICES)})]
# A key pair names its secret once: inline or in a file.
ONE_SECRET = {"oneOf": [{"required": ["api_secret"]}, {"required": ["api_secret_file"]}]}
# Not read from the YAML: set by the loader.
RUNTIME = {"yaml": False}


def doc(
    text: str, *, pattern: str | None = None, min_length: int | None = None, extra_json_schema: dict | None = None
) -> Meta:
    """A field's description (and a string's or a list's constraints), as the schema and
    docs/configuration.md show it."""
    return Meta(
        description=" ".join(text.split()), pattern=pattern, min_length=min_length, extra_json_schema=extra_json_schema
    )


@dataclass(frozen=True)
class KeyPair:
    """A key pair that may sign webhooks: api_key and exactly one of api_secret or api_secret_file."""

    api_key: Annotated[str, doc("The API key LiveKit signs with (its webhook's api_key).", min_length=1)]
    api_secret: Annotated[Secret, doc("The API secret; or give api_secret_file.")] = NO_SECRET
    api_secret_file: Annotated[FilePath, doc("A file whose content (trailing newline stripped) is the API secret.")] = (
        ""
    )


@dataclass(frozen=True)
class LiveKitConfig:
    """The LiveKit server whose state is read on each scrape."""

    url: Annotated[
        str, doc("LiveKit server URL (http(s) or ws(s)); LIVEKIT_URL overrides it. Required.", pattern=URL_PATTERN)
    ] = ""
    api_key: Annotated[str, doc("The API key; LIVEKIT_API_KEY overrides it. Required.", min_length=1)] = ""
    api_secret: Annotated[
        Secret, doc("The API secret; LIVEKIT_API_SECRET overrides it. Required (or api_secret_file).")
    ] = NO_SECRET
    api_secret_file: Annotated[
        str, doc("A file whose content (trailing newline stripped) is the API secret.", min_length=1)
    ] = ""
    request_timeout: Annotated[
        Duration, doc("Upper bound of one API call; the scrape deadline may cut it shorter.")
    ] = Duration.parse("10s")
    tls_ca_file: Annotated[
        FilePath | None,
        doc(
            "PEM file of the CA that signed LiveKit's certificate, for a private CA (default: the system's trust "
            "store)."
        ),
    ] = None

    @property
    def shown_url(self) -> str:
        """The URL as a page, a log line or an error may show it: credentials blanked."""
        return without_credentials(self.url)


Token = Annotated[Secret, Meta(extra_json_schema={"minLength": MIN_TOKEN_LENGTH})]
SigningKey = Annotated[KeyPair, Meta(extra_json_schema=ONE_SECRET)]


@dataclass(frozen=True)
class ProjectConfig:
    """One of several LiveKit projects monitored by one exporter (production and staging, regions).
    Prometheus scrapes each as its own target, <telemetry path>?project=<name>, and labels it
    project="<name>" by relabelling; webhooks signed with one of its keys and events pushed with one of
    its tokens are counted under it."""

    name: Annotated[
        str,
        doc(
            "The project's name: its `project` URL parameter and label value (letters, digits, `_`, `.`, `-`).",
            pattern=PROJECT_NAME_PATTERN,
        ),
    ]
    livekit: Annotated[LiveKitConfig, doc("The project's LiveKit server: the keys of the livekit section.")] = field(
        default_factory=lambda: LiveKitConfig()
    )
    webhook_keys: Annotated[
        tuple[SigningKey, ...],
        doc("Key pairs that sign this project's webhooks (several for rotation); when empty, its livekit key pair."),
    ] = ()
    events_tokens: Annotated[
        tuple[Token, ...],
        doc(
            "Bearer tokens whose events belong to this project (events.tokens may push to any project, naming "
            "it with ?project=<name>)."
        ),
    ] = ()
    events_token_files: Annotated[
        tuple[FilePath, ...], doc("Files holding this project's events tokens, one per line.")
    ] = ()


@dataclass(frozen=True)
class RoomDetailConfig:
    """Opt-in per-room detail: ListParticipants and ListDispatch for each room."""

    enabled: Annotated[bool, doc("Read the participants (and agent jobs) of each room on every scrape.")] = False
    max_rooms: Annotated[Positive, doc("At most this many rooms (the fullest first) are read per scrape.")] = 100
    concurrency: Annotated[Positive, doc("Per-room calls in flight at once.")] = 8
    agent_dispatch: Annotated[bool, doc("Also call ListDispatch per room for agent jobs.")] = True


@dataclass(frozen=True)
class CollectConfig:
    """What is read from LiveKit on each scrape."""

    services: Annotated[
        tuple[Service, ...],
        doc(
            "Services read on every scrape (one call each, lists followed to the end).",
            min_length=1,
            extra_json_schema={"uniqueItems": True},
        ),
    ] = SERVICES
    default_scrape_timeout: Annotated[
        Duration, doc("Budget of a scrape that sends no X-Prometheus-Scrape-Timeout-Seconds.")
    ] = Duration.parse("10s")
    max_scrape_timeout: Annotated[
        Duration, doc("The longest X-Prometheus-Scrape-Timeout-Seconds honoured; longer ones are cut to it.")
    ] = Duration.parse("2m")
    timeout_margin: Annotated[Duration, doc("Kept free of the scrape timeout for rendering and the network.")] = (
        Duration.parse("500ms")
    )
    room_size_buckets: Annotated[
        Buckets, doc("Upper bounds of the room-size gauge histogram (finite; +Inf is always added).")
    ] = (1, 2, 5, 10, 20, 50, 100)
    room_detail: RoomDetailConfig = field(default_factory=RoomDetailConfig)


@dataclass(frozen=True)
class LabelsConfig:
    """The cardinality guard of the labels whose values users choose."""

    max_values: Annotated[
        Positive,
        doc("Distinct values kept per user-named label (agent, campaign, trunk, ...); the rest become __other__."),
    ] = 50
    max_series_per_metric: Annotated[
        Annotated[int, Meta(ge=100)],
        doc(
            "Series (as Prometheus counts them: a histogram's child is one per bucket, +Inf, _sum and _count) "
            "kept per metric with user-named labels; a new label combination past it is folded into __other__."
        ),
    ] = 10_000
    max_series: Annotated[
        Annotated[int, Meta(ge=1000)],
        doc(
            "Series kept in total by the long-lived metrics with user-named labels (voice_agent_*, webhook "
            "trunk and agent counters); a new label combination past it is folded into __other__."
        ),
    ] = 100_000


@dataclass(frozen=True)
class WebhooksConfig:
    """LiveKit webhooks received on POST <path>."""

    enabled: Annotated[bool, doc("Serve the webhook endpoint.")] = True
    path: Annotated[UrlPath, doc("Where LiveKit posts its webhooks.")] = "/webhook"
    max_body_bytes: Annotated[Positive, doc("Larger request bodies get 413.")] = 1 << 20
    keys: Annotated[
        tuple[SigningKey, ...],
        doc(
            "Key pairs that may sign webhooks (several for rotation); when empty, the livekit API key pair. "
            "With projects, each project names its own (projects[].webhook_keys)."
        ),
    ] = ()
    dedup_ttl: Annotated[
        Duration,
        doc(
            "How long an event id is remembered, so a retry or replay counts once; at least 7m (a token lives "
            "5 minutes, plus 1 minute of clock difference at either end)."
        ),
    ] = Duration.parse("10m")
    dedup_max_entries: Annotated[
        Positive,
        doc(
            "At most this many event ids are remembered (the oldest are forgotten first); keep it above the peak "
            "webhook rate times dedup_ttl."
        ),
    ] = 100_000
    rate_limit: Annotated[
        Annotated[float, Meta(ge=0)],
        doc(
            "Verified webhooks a second each API key may send (a token bucket per key), against a leaked key; "
            "past it a webhook gets 503 with Retry-After, which LiveKit retries with backoff (a 4xx it would "
            "drop), and is counted as rate_limited. Set it far above LiveKit's real peak. 0 (the default): no limit."
        ),
    ] = 0.0
    rate_limit_burst: Annotated[
        Positive, doc("Webhooks a key may send at once above rate_limit, after a quiet spell.")
    ] = 100


Dollars = Annotated[float, Meta(ge=0)]


@dataclass(frozen=True)
class Price:
    """Prices of one provider's model in US dollars; model "*" (the default) matches the provider's
    other models. An exact model entry wins over "*". Provider and model match case-insensitively.
    Each component reads its own fields (llm: the token prices; stt: usd_per_stt_audio_minute; tts:
    usd_per_million_characters and usd_per_tts_audio_minute); usage of a component none of whose
    fields is set counts as unpriced (livekit_exporter_unpriced_usage_events_total); 0 means free."""

    provider: Annotated[str, doc("The provider, as agents report it (openai, deepgram, ...).", min_length=1)]
    model: Annotated[str, doc('The model, as agents report it; "*" for any other model.', min_length=1)] = "*"
    usd_per_million_input_tokens: Annotated[Dollars | None, doc("LLM prompt tokens not served from cache.")] = None
    usd_per_million_output_tokens: Annotated[Dollars | None, doc("LLM output tokens.")] = None
    usd_per_million_cached_tokens: Annotated[
        Dollars | None, doc("LLM prompt tokens served from cache; when unset, the input price.")
    ] = None
    usd_per_million_characters: Annotated[Dollars | None, doc("TTS characters synthesized.")] = None
    usd_per_stt_audio_minute: Annotated[Dollars | None, doc("STT: minutes of audio transcribed.")] = None
    usd_per_tts_audio_minute: Annotated[
        Dollars | None,
        doc("TTS: minutes of audio synthesized (for providers that bill by audio rather than characters)."),
    ] = None


@dataclass(frozen=True)
class EventsConfig:
    """The voice-agent events API, POST <path>."""

    enabled: Annotated[bool, doc("Serve the events API.")] = True
    path: Annotated[UrlPath, doc("Where agents post their events.")] = "/v1/events"
    tokens: Annotated[
        tuple[Token, ...],
        doc(
            "Bearer tokens accepted by the events API (several for rotation). Also from token_files and "
            "LIVEKIT_EXPORTER_EVENTS_TOKENS (comma-separated). Without any token every request is refused. With "
            "projects, a request with one of these names its project (?project=<name>); a project's own "
            "tokens (projects[].events_tokens) need not."
        ),
    ] = ()
    token_files: Annotated[
        tuple[FilePath, ...],
        doc(
            f"Files holding tokens, one per line; each at least {MIN_TOKEN_LENGTH} characters, like the inline ones "
            "(and those in LIVEKIT_EXPORTER_EVENTS_TOKENS)."
        ),
    ] = ()
    max_body_bytes: Annotated[Positive, doc("Larger request bodies get 413.")] = 1 << 20
    max_events: Annotated[Positive, doc("Batches with more events get 413.")] = 1000
    call_ttl: Annotated[
        Duration,
        doc("A call whose call_ended never arrives leaves voice_agent_calls_active after this long. Longer than 0."),
    ] = Duration.parse("2h")
    dependency_ttl: Annotated[
        Duration, doc("A voice_agent_dependency_up series not reported for this long disappears. Longer than 0.")
    ] = Duration.parse("5m")
    campaign_ttl: Annotated[
        Duration,
        doc(
            "A voice_agent_campaign_running or voice_agent_calls_queued series not reported for this long "
            "disappears (dialers re-send campaign_status and calls_queued periodically). Longer than 0."
        ),
    ] = Duration.parse("15m")
    max_latency: Annotated[
        Duration,
        doc(
            "Turn-stage timings (e2e, end of utterance, transcription, LLM time to first token, TTS time to first "
            "byte) above this are discarded and counted in livekit_exporter_event_latencies_discarded_total "
            "(livekit-agents has shipped timestamp bugs reporting 60-200 s). Tool calls and LLM requests are not "
            "subject to it. Longer than 0."
        ),
    ] = Duration.parse("30s")
    idempotency_ttl: Annotated[
        Duration,
        doc(
            "How long the answer to a request with an Idempotency-Key is remembered: a retry with the same key "
            "within it gets the same answer and is not applied again. Longer than 0."
        ),
    ] = Duration.parse("10m")
    idempotency_max_entries: Annotated[
        Positive, doc("At most this many Idempotency-Keys are remembered (the oldest are forgotten first).")
    ] = 100_000
    idempotency_max_bytes: Annotated[
        Annotated[int, Meta(ge=1 << 16)],
        doc(
            "At most this many bytes of memory hold the remembered answers with their keys and body digests "
            "(the least recently used are forgotten first). One takes under 1 KB, 2 KB at most (a long answer "
            "is kept compressed): the default holds about 70,000, and at least 30,000."
        ),
    ] = 64 << 20
    max_listed_problems: Annotated[
        Positive,
        doc(
            "An answer lists at most this many problems (400) or discarded timings (200); the rest are counted "
            "by JSON path under `omitted`, so an answer stays small whatever the batch."
        ),
    ] = 100
    rate_limit: Annotated[
        Annotated[float, Meta(ge=0)],
        doc(
            "Requests a second each token may send (a token bucket per token: every agent process sharing one "
            "token shares its rate); past it a request gets 429 with Retry-After and is counted as rate_limited. "
            "0 (the default): no limit."
        ),
    ] = 0.0
    rate_limit_burst: Annotated[
        Positive, doc("Requests a token may send at once above rate_limit, after a quiet spell.")
    ] = 20
    buckets: Annotated[
        Mapping[str, Buckets],
        doc("Histogram bucket upper bounds (seconds) per voice_agent_* histogram, replacing its default."),
    ] = field(default_factory=dict)
    prices: Annotated[
        tuple[Price, ...], doc("Price table turning usage into voice_agent_estimated_cost_dollars_total.")
    ] = ()


@dataclass(frozen=True)
class ServerConfig:
    """The exporter's HTTP server: how long a client may take to send a request, and how many may be
    served at once. Every limit is re-read on a reload (SIGHUP, POST /-/reload); each refusal is
    counted in livekit_exporter_http_requests_rejected_total{reason}."""

    header_timeout: Annotated[
        Duration,
        doc(
            "Time a client may take to send a request's headers, from their first byte; a slower one gets 408 "
            "and its connection is closed (reason header_timeout). Longer than 0."
        ),
    ] = Duration.parse("10s")
    body_timeout: Annotated[
        Duration,
        doc(
            "Time a webhook or events request may take to send its body once its headers are in; a slower one "
            "gets 408 and its connection is closed (reason body_timeout). Longer than 0."
        ),
    ] = Duration.parse("10s")
    idle_timeout: Annotated[
        Duration,
        doc(
            "A connection that sends no request for this long (a new one, or a kept-alive one between "
            "requests) is closed. Read when a connection opens. Longer than 0."
        ),
    ] = Duration.parse("2m")
    max_connections: Annotated[
        Positive,
        doc(
            "Connections open at once; one more is answered 503 and closed (reason too_many_connections). Keep "
            "it below the process's file-descriptor limit (ulimit -n)."
        ),
    ] = 512
    max_in_flight: Annotated[
        Positive,
        doc(
            "Webhook and events requests being received or applied at once; one more gets 503 with Retry-After "
            "(reason too_many_in_flight). Each may hold up to its max_body_bytes in memory."
        ),
    ] = 64
    shutdown_grace: Annotated[
        Duration,
        doc(
            "On SIGTERM (or SIGINT) the exporter stops accepting connections and gives the requests in flight "
            "this long to finish; those still running are then cancelled, and it exits 0. Longer than 0."
        ),
    ] = Duration.parse("10s")


@dataclass(frozen=True)
class Config:
    """The YAML file given with --config.file. Every key is optional; LIVEKIT_URL, LIVEKIT_API_KEY and
    LIVEKIT_API_SECRET fill or override the livekit section."""

    livekit: LiveKitConfig = field(default_factory=LiveKitConfig)
    projects: Annotated[
        tuple[ProjectConfig, ...],
        doc(
            "Several LiveKit projects, each scraped as <telemetry path>?project=<name> (see docs/architecture.md, "
            "Several projects). Give either the livekit section (one project, served on the telemetry path) or "
            "projects, not both. collect, labels, webhooks, events and server apply to every project."
        ),
    ] = ()
    collect: CollectConfig = field(default_factory=CollectConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    source: Annotated[str, Meta(extra=RUNTIME)] = "<defaults>"
