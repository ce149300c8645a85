"""Configuration: YAML file + LiveKit environment variables + secret files -> one typed Config.

The JSON Schema in schemas/config.schema.json is the contract; this module loads, validates, fills
defaults and resolves secrets. Errors name the YAML path and line and never echo a secret.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import jsonschema
import yaml

SECRET_KEYS = frozenset({"api_secret", "tokens", "secret", "password", "token"})

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DEFAULT_SERVICES = ("room", "egress", "ingress", "sip")
DEFAULT_ROOM_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100)
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


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


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


def parse_duration(text: str) -> float:
    """'1m30s' -> 90.0. The schema has already checked the shape."""
    if not re.fullmatch(r"(?:[0-9]+(?:ms|s|m|h|d))+", text):
        raise ValueError(f"{text!r} is not a duration (like 500ms, 10s, 1m30s, 2h)")
    return sum(int(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


@dataclass(frozen=True)
class KeyPair:
    api_key: str
    api_secret: Secret


@dataclass(frozen=True)
class LiveKitConfig:
    url: str
    api_key: str
    api_secret: Secret
    request_timeout: float = 10.0
    tls_ca_file: str | None = None


@dataclass(frozen=True)
class RoomDetailConfig:
    enabled: bool = False
    max_rooms: int = 100
    concurrency: int = 8
    agent_dispatch: bool = True


@dataclass(frozen=True)
class CollectConfig:
    services: tuple[str, ...] = DEFAULT_SERVICES
    default_scrape_timeout: float = 10.0
    max_scrape_timeout: float = 120.0
    timeout_margin: float = 0.5
    room_size_buckets: tuple[float, ...] = DEFAULT_ROOM_SIZE_BUCKETS
    room_detail: RoomDetailConfig = field(default_factory=RoomDetailConfig)


@dataclass(frozen=True)
class WebhooksConfig:
    enabled: bool = True
    path: str = "/webhook"
    max_body_bytes: int = 1 << 20
    keys: tuple[KeyPair, ...] = ()
    dedup_ttl: float = 600.0
    dedup_max_entries: int = 100_000


@dataclass(frozen=True)
class Price:
    """Prices of one provider's model (model "*" matches any of its models), in US dollars.

    Each component reads its own fields: llm the token prices, stt usd_per_stt_audio_minute, tts
    usd_per_million_characters and usd_per_tts_audio_minute. None means "not priced" (the usage
    is counted as unpriced); 0 means free. Provider and model match case-insensitively."""

    provider: str
    model: str = "*"
    usd_per_million_input_tokens: float | None = None
    usd_per_million_output_tokens: float | None = None
    # None: cached tokens cost the input price.
    usd_per_million_cached_tokens: float | None = None
    usd_per_million_characters: float | None = None
    usd_per_stt_audio_minute: float | None = None
    usd_per_tts_audio_minute: float | None = None


@dataclass(frozen=True)
class EventsConfig:
    enabled: bool = True
    path: str = "/v1/events"
    tokens: tuple[Secret, ...] = ()
    max_body_bytes: int = 1 << 20
    max_events: int = 1000
    call_ttl: float = 7200.0
    dependency_ttl: float = 300.0
    campaign_ttl: float = 900.0
    max_latency: float = 30.0
    idempotency_ttl: float = 600.0
    idempotency_max_entries: int = 100_000
    buckets: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    prices: tuple[Price, ...] = ()


@dataclass(frozen=True)
class Config:
    livekit: LiveKitConfig
    collect: CollectConfig = field(default_factory=CollectConfig)
    label_max_values: int = 50
    webhooks: WebhooksConfig = field(default_factory=WebhooksConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    source: str = "<defaults>"


def schema() -> dict[str, Any]:
    text = resources.files("livekit_exporter").joinpath("schemas/config.schema.json").read_text()
    return json.loads(text)


_VALIDATOR = None


def _validator() -> jsonschema.protocols.Validator:
    global _VALIDATOR
    if _VALIDATOR is None:
        s = schema()
        cls = jsonschema.validators.validator_for(s)
        cls.check_schema(s)
        _VALIDATOR = cls(s)
    return _VALIDATOR


def _yaml_path(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _is_secret_path(path: list[Any]) -> bool:
    return any(isinstance(p, str) and p in SECRET_KEYS for p in path)


# Keys whose values an error may quote. Everything else (a secret, or a whole file that is not a
# mapping, such as a secret file given as --config.file by mistake) is never echoed.
_SHOWABLE = frozenset(
    {
        "url",
        "request_timeout",
        "default_scrape_timeout",
        "max_scrape_timeout",
        "timeout_margin",
        "services",
        "room_size_buckets",
        "enabled",
        "max_rooms",
        "concurrency",
        "agent_dispatch",
        "max_values",
        "path",
        "max_body_bytes",
        "dedup_ttl",
        "dedup_max_entries",
        "max_events",
        "call_ttl",
        "dependency_ttl",
        "max_latency",
        "campaign_ttl",
        "idempotency_ttl",
        "idempotency_max_entries",
    }
)


def _may_show(path: list[Any], value: Any) -> bool:
    names = [p for p in path if isinstance(p, str)]
    return (
        bool(names)
        and names[-1] in _SHOWABLE
        and not _is_secret_path(path)
        and not isinstance(value, (dict, list))
        and len(repr(value)) <= 80
    )


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (YAML keeps the last one silently)."""


def _no_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} is given twice (first on line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def _line_of(root: yaml.Node | None, path: list[Any]) -> int | None:
    """The 1-based line of the YAML node at `path` (or of its nearest existing parent)."""
    node = root
    line = node.start_mark.line + 1 if node is not None else None
    for part in path:
        nxt = None
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for k, v in node.value:
                if k.value == part:
                    nxt = v
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            nxt = node.value[part]
        if nxt is None:
            break
        node = nxt
        line = node.start_mark.line + 1
    return line


def _describe(error: jsonschema.ValidationError) -> str:
    """A message that says what is wrong and what to do, never echoing a secret value."""
    v, expected = error.validator, error.validator_value
    shown = f" (got {error.instance!r})" if _may_show(list(error.absolute_path), error.instance) else ""
    if v == "type":
        return f"must be of type {expected}{shown}"
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(extra)}; allowed keys: {allowed}"
    if v == "required":
        return error.message + " (add it)"
    if v == "pattern":
        if expected.startswith("^([0-9]+"):
            return f"must be a duration like 500ms, 10s, 1m30s or 2h{shown}"
        if expected.startswith("^(https?"):
            return f"must be an http(s):// or ws(s):// URL{shown}"
        return f"must match {expected}{shown}"
    if v == "enum":
        return f"must be one of {', '.join(map(str, expected))}{shown}"
    if v in ("minimum", "exclusiveMinimum"):
        op = ">=" if v == "minimum" else ">"
        return f"must be {op} {expected}{shown}"
    if v == "minLength":
        return "must not be empty" if expected == 1 else f"must be at least {expected} characters long"
    if v == "minItems":
        return f"must have at least {expected} item(s)"
    if v == "uniqueItems":
        return "must not repeat an item"
    if v == "oneOf" and "api_secret_file" in json.dumps(expected):
        return "give exactly one of api_secret or api_secret_file"
    return f"fails the schema rule {v!r}"


def _read_secret_file(path: str, where: str, problems: list[str]) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except OSError as e:
        problems.append(f"{where}: cannot read secret file {path!r}: {e.strerror}")
        return None
    if not value:
        problems.append(f"{where}: secret file {path!r} is empty")
        return None
    return value


def load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a configuration. Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    raw: Any = {}
    root: yaml.Node | None = None
    source = path or "<environment>"
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError([f"{path}: cannot read the configuration file: {e.strerror}"]) from None
        except UnicodeDecodeError:
            raise ConfigError([f"{path}: not UTF-8 text: is this the configuration file?"]) from None
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
            raw = yaml.load(text, Loader=_StrictLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else path
            # The problem text may quote the offending line, which could hold a secret.
            raise ConfigError([f"{where}: not valid YAML: {getattr(e, 'problem', 'parse error')}"]) from None
        if raw is None:
            raw = {}
    problems: list[str] = []
    errors = sorted(_validator().iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    for err in errors:
        yaml_path = list(err.absolute_path)
        located = yaml_path
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            # point at the first unknown key, not at the mapping that holds it
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            located = yaml_path + extra[:1]
        line = _line_of(root, located)
        loc = f"{source}:{line}" if line else source
        problems.append(f"{loc}: {_yaml_path(yaml_path)}: {_describe(err)}")
    if problems:
        raise ConfigError(problems)
    return _build(raw, env, source, problems)


def _prices(raw: list[dict[str, Any]], source: str, problems: list[str]) -> tuple[Price, ...]:
    prices: list[Price] = []
    seen: dict[tuple[str, str], int] = {}
    for i, entry in enumerate(raw):
        price = Price(**entry)
        key = (price.provider.lower(), price.model.lower())
        if key in seen:
            problems.append(
                f"{source}: events.prices[{i}]: provider {price.provider!r} model {price.model!r} "
                f"is already priced by events.prices[{seen[key]}]; keep one entry"
            )
        seen[key] = i
        prices.append(price)
    return tuple(prices)


def _token(token: str, where: str, problems: list[str]) -> str | None:
    """An events token from a file or the environment, held to the inline tokens' minimum length."""
    if len(token) < MIN_TOKEN_LENGTH:
        problems.append(
            f"{where}: an events token must be at least {MIN_TOKEN_LENGTH} characters long "
            f"(this one has {len(token)}); use a random one, e.g. `openssl rand -hex 24`"
        )
        return None
    return token


def _build(raw: dict[str, Any], env: Mapping[str, str], source: str, problems: list[str]) -> Config:
    lk = dict(raw.get("livekit") or {})
    url = env.get("LIVEKIT_URL") or lk.get("url")
    key = env.get("LIVEKIT_API_KEY") or lk.get("api_key")
    secret = env.get("LIVEKIT_API_SECRET") or lk.get("api_secret")
    if lk.get("api_secret") and lk.get("api_secret_file"):
        problems.append(f"{source}: livekit: give api_secret or api_secret_file, not both")
    if not secret and lk.get("api_secret_file"):
        secret = _read_secret_file(lk["api_secret_file"], f"{source}: livekit.api_secret_file", problems)
    if not url:
        problems.append(f"{source}: livekit.url: missing; set it in the file or in LIVEKIT_URL")
    elif not re.fullmatch(r"(https?|wss?)://[^\s/]+(/\S*)?", url):
        problems.append(f"{source}: LIVEKIT_URL: must be an http(s):// or ws(s):// URL (got {url!r})")
    ca = lk.get("tls_ca_file")
    if ca and not os.path.isfile(ca):
        problems.append(f"{source}: livekit.tls_ca_file: {ca!r} is not a readable file")
    if not key:
        problems.append(f"{source}: livekit.api_key: missing; set it in the file or in LIVEKIT_API_KEY")
    if not secret and not any("api_secret_file" in p for p in problems):
        problems.append(f"{source}: livekit.api_secret: missing; set api_secret_file in the file or LIVEKIT_API_SECRET")

    col = raw.get("collect") or {}
    det = col.get("room_detail") or {}
    collect = CollectConfig(
        services=tuple(col.get("services", DEFAULT_SERVICES)),
        default_scrape_timeout=parse_duration(col.get("default_scrape_timeout", "10s")),
        max_scrape_timeout=parse_duration(col.get("max_scrape_timeout", "2m")),
        timeout_margin=parse_duration(col.get("timeout_margin", "500ms")),
        room_size_buckets=tuple(sorted(col.get("room_size_buckets", DEFAULT_ROOM_SIZE_BUCKETS))),
        room_detail=RoomDetailConfig(
            enabled=det.get("enabled", False),
            max_rooms=det.get("max_rooms", 100),
            concurrency=det.get("concurrency", 8),
            agent_dispatch=det.get("agent_dispatch", True),
        ),
    )
    if not all(math.isfinite(b) for b in collect.room_size_buckets):
        problems.append(f"{source}: collect.room_size_buckets: must be finite numbers (+Inf is always added)")
    if collect.timeout_margin >= collect.default_scrape_timeout:
        problems.append(f"{source}: collect.timeout_margin: must be shorter than collect.default_scrape_timeout")

    wh = raw.get("webhooks") or {}
    keys = []
    for i, kp in enumerate(wh.get("keys", [])):
        s = kp.get("api_secret") or _read_secret_file(
            kp.get("api_secret_file", ""), f"{source}: webhooks.keys[{i}].api_secret_file", problems
        )
        if s:
            keys.append(KeyPair(kp["api_key"], Secret(s)))
    webhooks = WebhooksConfig(
        enabled=wh.get("enabled", True),
        path=wh.get("path", "/webhook"),
        max_body_bytes=wh.get("max_body_bytes", 1 << 20),
        keys=tuple(keys),
        dedup_ttl=parse_duration(wh.get("dedup_ttl", "10m")),
        dedup_max_entries=wh.get("dedup_max_entries", 100_000),
    )

    if webhooks.dedup_ttl < WEBHOOK_REPLAY_WINDOW:
        problems.append(
            f"{source}: webhooks.dedup_ttl: must be at least 7m: a LiveKit webhook token is valid for 5 minutes, "
            "plus 1 minute of clock difference on each end, and a delivery replayed after its id is forgotten "
            "would count twice"
        )

    ev = raw.get("events") or {}
    tokens = list(ev.get("tokens", []))  # the schema checked their length
    for i, tf in enumerate(ev.get("token_files", [])):
        t = _read_secret_file(tf, f"{source}: events.token_files[{i}]", problems)
        if t:
            for n, line in enumerate(t.splitlines(), 1):
                if line.strip():
                    tokens.append(
                        _token(line.strip(), f"{source}: events.token_files[{i}] ({tf!r}) line {n}", problems)
                    )
    for n, t in enumerate(env.get("LIVEKIT_EXPORTER_EVENTS_TOKENS", "").split(","), 1):
        if t.strip():
            tokens.append(_token(t.strip(), f"LIVEKIT_EXPORTER_EVENTS_TOKENS: token {n} (comma-separated)", problems))
    tokens = [t for t in tokens if t]
    durations = {}
    for name, default in (
        ("call_ttl", "2h"),
        ("dependency_ttl", "5m"),
        ("campaign_ttl", "15m"),
        ("max_latency", "30s"),
        ("idempotency_ttl", "10m"),
    ):
        durations[name] = parse_duration(ev.get(name, default))
        if durations[name] <= 0:
            problems.append(
                f"{source}: events.{name}: must be longer than 0 (got {ev[name]!r}); the default is {default}"
            )
    events = EventsConfig(
        enabled=ev.get("enabled", True),
        path=ev.get("path", "/v1/events"),
        tokens=tuple(Secret(t) for t in dict.fromkeys(tokens)),
        max_body_bytes=ev.get("max_body_bytes", 1 << 20),
        max_events=ev.get("max_events", 1000),
        **durations,
        idempotency_max_entries=ev.get("idempotency_max_entries", 100_000),
        buckets={k: tuple(sorted(v)) for k, v in (ev.get("buckets") or {}).items()},
        prices=_prices(ev.get("prices", ()), source, problems),
    )
    if webhooks.enabled and events.enabled and webhooks.path == events.path:
        problems.append(f"{source}: webhooks.path and events.path must differ")
    if problems:
        raise ConfigError(problems)
    assert url is not None and key is not None and secret is not None  # else a problem above names it

    return Config(
        livekit=LiveKitConfig(
            url=url,
            api_key=key,
            api_secret=Secret(secret),
            request_timeout=parse_duration(lk.get("request_timeout", "10s")),
            tls_ca_file=lk.get("tls_ca_file"),
        ),
        collect=collect,
        label_max_values=(raw.get("labels") or {}).get("max_values", 50),
        webhooks=webhooks,
        events=events,
        source=source,
    )
