"""YAML file + LiveKit environment variables + secret files -> one Config (model.py).

Three steps: parse the YAML (a key given twice is an error), validate it against the generated
schema (every finding at once, each naming the file, line, YAML path and what to do), convert it
into the dataclasses with msgspec, then resolve what the file only points at: the environment's
overrides and the secret files. No literal default lives here: what a key is when it is not set is
model.py's. No error ever quotes a secret.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import replace
from functools import cache
from typing import Any

import jsonschema
import msgspec
import yaml

from .model import (
    DURATION_PATTERN,
    MIN_TOKEN_LENGTH,
    ONE_SECRET,
    URL_PATTERN,
    WEBHOOK_REPLAY_WINDOW,
    Config,
    Duration,
    EventsConfig,
    KeyPair,
    LiveKitConfig,
    Price,
    ProjectConfig,
    Secret,
    ServerConfig,
    format_duration,
    parse_duration,
    without_credentials,
)
from .schema import schema

# Keys whose values are secrets: never quoted in an error.
SECRET_KEYS = frozenset({"api_secret", "tokens", "secret", "password", "token"})
# The only values an error may quote: scalars under keys that are not secrets, short ones. Anything
# else (a whole file that is not a mapping, such as a secret file given as --config.file) is not echoed.
_MAX_SHOWN = 80
# What a configuration or secret file may be: the limits of what is read, whatever the file.
MAX_CONFIG_FILE_BYTES = 1 << 20
MAX_SECRET_FILE_BYTES = 64 << 10
MAX_YAML_VALUES = 100_000
MAX_YAML_DEPTH = 64


class ConfigError(Exception):
    """A configuration that cannot be used; `problems` lists every finding, one line each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@cache
def _validator() -> jsonschema.protocols.Validator:
    s = schema()
    cls = jsonschema.validators.validator_for(s)
    cls.check_schema(s)
    return cls(s)


def _yaml_path(path: list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _may_show(path: list[Any], value: Any) -> bool:
    names = [p for p in path if isinstance(p, str)]
    return (
        bool(names)
        and not any(n in SECRET_KEYS or n.endswith("_file") for n in names)
        and isinstance(value, (bool, int, float, str))
        and len(repr(value)) <= _MAX_SHOWN
    )


def _shown(value: Any) -> Any:
    """A value as an error may quote it: a URL's credentials (user:password@) blanked."""
    return without_credentials(value) if isinstance(value, str) else value


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


class _Located:
    """Where a YAML path stands in the file: `file:line: yaml.path` for error messages."""

    def __init__(self, source: str, root: yaml.Node | None):
        self.source, self.root = source, root

    def line(self, path: list[Any]) -> int | None:
        """The 1-based line of the node at `path` (or of its nearest existing parent)."""
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in path:
            nxt = None
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                nxt = next((v for k, v in node.value if k.value == part), None)
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                nxt = node.value[part]
            if nxt is None:
                break
            node = nxt
            line = node.start_mark.line + 1
        return line

    def where(self, path: list[Any], *, line_of: list[Any] | None = None) -> str:
        line = self.line(path if line_of is None else line_of)
        return f"{self.source}:{line}: {_yaml_path(path)}" if line else f"{self.source}: {_yaml_path(path)}"

    def __call__(self, path: list[Any], message: str, *, line_of: list[Any] | None = None) -> str:
        return f"{self.where(path, line_of=line_of)}: {message}"


def _describe(error: jsonschema.ValidationError) -> str:
    """A message that says what is wrong and what to do, never echoing a secret value."""
    v, expected = error.validator, error.validator_value
    shown = f" (got {_shown(error.instance)!r})" if _may_show(list(error.absolute_path), error.instance) else ""
    if v == "type":
        return f"must be of type {expected}{shown}"
    if v == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"unknown key(s) {', '.join(extra)}; allowed keys: {allowed}"
    if v == "required":
        return error.message + " (add it)"
    if v == "pattern":
        if expected == DURATION_PATTERN:
            return f"must be a duration like 500ms, 10s, 1m30s or 2h{shown}"
        if expected == URL_PATTERN:
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
    if v == "oneOf" and expected == ONE_SECRET["oneOf"]:
        return "give exactly one of api_secret or api_secret_file"
    return f"fails the schema rule {v!r}"


class UnreadableFile(Exception):
    """A file that cannot be used as text: missing, unreadable, too large or not UTF-8. The message
    never quotes the content."""


def read_text(path: str, max_bytes: int, kind: str) -> str:
    """The UTF-8 text of a file of at most `max_bytes` (a device such as /dev/zero is cut there)."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise UnreadableFile(f"cannot read {kind} {path!r}: {e.strerror}") from None
    if len(data) > max_bytes:
        raise UnreadableFile(f"{kind} {path!r} is larger than {max_bytes:,} bytes: is it the right file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnreadableFile(f"{kind} {path!r} is not UTF-8 text (byte {e.start}): is it the right file?") from None


def _read_secret_file(path: str, where: str, problems: list[str]) -> str | None:
    try:
        value = read_text(path, MAX_SECRET_FILE_BYTES, "secret file").strip()
    except UnreadableFile as e:
        problems.append(f"{where}: {e}")
        return None
    if not value:
        problems.append(f"{where}: secret file {path!r} is empty")
        return None
    return value


def _dec_hook(cls: type, value: Any) -> Any:
    """The YAML forms of model.py's own types (the schema has already checked them)."""
    if cls is Duration:
        return Duration.parse(value)
    if cls is Secret:
        return Secret(value)
    raise NotImplementedError(cls)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """What PyYAML found, without what it quotes (an alias name or a character may be part of a
    secret: `api_secret: *abc...` is read as an alias)."""
    problem = str(getattr(e, "problem", None) or "parse error")
    if problem.startswith("found undefined alias"):
        return "an alias (*name) that no anchor (&name) defines: quote a value that starts with *"
    if problem.startswith("key ") and "is given twice" in problem:  # ours (_no_duplicates): a key, not a value
        return problem
    if "anchor" in str(getattr(e, "context", "")):
        return "an anchor (&name) given twice: quote a value that starts with &"
    return _QUOTED.sub("…", problem)


_QUOTED = re.compile(r"'(?!<)[^']*'|\"[^\"]*\"")


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document holds once every alias is expanded (aliases share nodes, so
    a small file can stand for billions: "billion laughs"); stops counting past the limit."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node, depth: int) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(
                [
                    f"{node.start_mark.name}:{node.start_mark.line + 1}: nested deeper than "
                    f"{MAX_YAML_DEPTH} levels: is it the right file?"
                ]
            )
        sizes[id(node)] = MAX_YAML_VALUES + 1  # a node inside itself (a recursive alias) counts as too many
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = node.value
        total = 1
        for child in children:
            total = min(total + size(child, depth + 1), MAX_YAML_VALUES + 1)
        sizes[id(node)] = total
        return total

    return size(root, 0)


def _parse(path: str) -> tuple[Any, yaml.Node | None]:
    try:
        text = read_text(path, MAX_CONFIG_FILE_BYTES, "configuration file")
    except UnreadableFile as e:
        raise ConfigError([f"{path}: {e}"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        if root is not None and _expanded_size(root) > MAX_YAML_VALUES:
            line = root.start_mark.line + 1
            raise ConfigError(
                [
                    f"{path}:{line}: holds more than {MAX_YAML_VALUES:,} values once its aliases (*name) "
                    "are expanded: write the values out, or use fewer aliases"
                ]
            )
        raw = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise ConfigError([f"{where}: not valid YAML: {_yaml_problem(e)}"]) from None
    except RecursionError:  # PyYAML's composer recurses once per level of nesting
        raise ConfigError([f"{path}: nested too deeply to be a configuration file"]) from None
    return ({} if raw is None else raw), root


def load(path: str | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, validate and resolve a configuration. Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    raw, root = _parse(path) if path else ({}, None)
    at = _Located(path or "<environment>", root)
    problems = []
    for err in sorted(_validator().iter_errors(raw), key=lambda error: list(map(str, error.absolute_path))):
        yaml_path = list(err.absolute_path)
        located = yaml_path
        if err.validator == "additionalProperties" and isinstance(err.instance, dict):
            # point at the first unknown key, not at the mapping that holds it
            located = yaml_path + sorted(set(err.instance) - set(err.schema.get("properties", {})))[:1]
        problems.append(at(yaml_path, _describe(err), line_of=located))
    if problems:
        raise ConfigError(problems)
    try:
        typed = msgspec.convert(raw, Config, dec_hook=_dec_hook)
    except msgspec.ValidationError as e:  # the schema and the classes disagree: a bug of ours, said plainly
        raise ConfigError([f"{at.source}: {e} (the schema accepted it: please report this)"]) from None
    resolved = _resolve(typed, env, at, problems)
    if problems:
        raise ConfigError(problems)
    return resolved


def _resolve(cfg: Config, env: Mapping[str, str], at: _Located, problems: list[str]) -> Config:
    """The environment's overrides and the secret files, and the rules one key cannot state alone."""
    if cfg.projects:
        projects = _projects(cfg, env, at, problems)
        livekit = cfg.livekit
    else:
        projects, livekit = (), _livekit(cfg.livekit, env, at, problems)
    collect = replace(cfg.collect, room_size_buckets=tuple(sorted(cfg.collect.room_size_buckets)))
    if not all(math.isfinite(b) for b in collect.room_size_buckets):
        problems.append(at(["collect", "room_size_buckets"], "must be finite numbers (+Inf is always added)"))
    if collect.timeout_margin >= collect.default_scrape_timeout:
        problems.append(at(["collect", "timeout_margin"], "must be shorter than collect.default_scrape_timeout"))

    webhooks = replace(cfg.webhooks, keys=_key_pairs(cfg.webhooks.keys, at, problems, ("webhooks", "keys")))
    if webhooks.dedup_ttl < WEBHOOK_REPLAY_WINDOW:
        problems.append(
            at(
                ["webhooks", "dedup_ttl"],
                f"must be at least {format_duration(WEBHOOK_REPLAY_WINDOW)}: a LiveKit webhook token is valid for "
                "5 minutes, plus 1 minute of clock difference on each end, and a delivery replayed after its id "
                "is forgotten would count twice",
            )
        )
    events = _events(cfg.events, env, at, problems)
    if webhooks.enabled and events.enabled and webhooks.path == events.path:
        problems.append(at(["events", "path"], "webhooks.path and events.path must differ"))
    for name in ("header_timeout", "body_timeout", "idle_timeout", "shutdown_grace"):
        if getattr(cfg.server, name) <= 0:
            default = format_duration(getattr(ServerConfig, name))
            problems.append(at(["server", name], f"must be longer than 0; the default is {default}"))
    return replace(
        cfg, livekit=livekit, projects=projects, collect=collect, webhooks=webhooks, events=events, source=at.source
    )


def _livekit(
    lk: LiveKitConfig, env: Mapping[str, str], at: _Located, problems: list[str], path: tuple[Any, ...] = ("livekit",)
) -> LiveKitConfig:
    """A livekit section with its secret read; `env` (LIVEKIT_*) overrides the top-level one only."""
    name = _yaml_path(list(path))
    via = " or in LIVEKIT_{}" if path == ("livekit",) else ""
    url = env.get("LIVEKIT_URL") or lk.url
    key = env.get("LIVEKIT_API_KEY") or lk.api_key
    secret: str | None = env.get("LIVEKIT_API_SECRET") or lk.api_secret.reveal()
    if lk.api_secret and lk.api_secret_file:
        problems.append(at(list(path), "give api_secret or api_secret_file, not both"))
    elif not secret and lk.api_secret_file:
        secret = _read_secret_file(lk.api_secret_file, at.where([*path, "api_secret_file"]), problems)
    if not url:
        problems.append(f"{at.source}: {name}.url: missing; set it in the file{via.format('URL')}")
    elif env.get("LIVEKIT_URL") and not re.fullmatch(URL_PATTERN, url):
        problems.append(f"LIVEKIT_URL: must be an http(s):// or ws(s):// URL (got {_shown(url)!r})")
    if lk.tls_ca_file and not os.path.isfile(lk.tls_ca_file):
        problems.append(at([*path, "tls_ca_file"], f"{lk.tls_ca_file!r} is not a readable file"))
    if not key:
        problems.append(f"{at.source}: {name}.api_key: missing; set it in the file{via.format('API_KEY')}")
    if not secret and not lk.api_secret_file:
        problems.append(
            f"{at.source}: {name}.api_secret: missing; set api_secret_file in the file{via.format('API_SECRET')}"
        )
    return replace(lk, url=url, api_key=key, api_secret=Secret(secret or ""))


def _key_pairs(
    pairs: tuple[KeyPair, ...], at: _Located, problems: list[str], path: tuple[Any, ...]
) -> tuple[KeyPair, ...]:
    """Webhook key pairs with their secrets read from their files."""
    keys = []
    for i, kp in enumerate(pairs):
        secret = kp.api_secret.reveal() or _read_secret_file(  # the schema let one of them through
            kp.api_secret_file, at.where([*path, i, "api_secret_file"]), problems
        )
        if secret:
            keys.append(KeyPair(kp.api_key, Secret(secret)))
    return tuple(keys)


_LIVEKIT_ENV = ("LIVEKIT_URL", "LIVEKIT_API_KEY", "LIVEKIT_API_SECRET")


def _projects(cfg: Config, env: Mapping[str, str], at: _Located, problems: list[str]) -> tuple[ProjectConfig, ...]:
    """Each project's livekit section, webhook keys and events tokens resolved; the rules across them:
    unique names, and no key or token that would attribute a request to two projects."""
    if cfg.livekit != LiveKitConfig() or any(env.get(name) for name in _LIVEKIT_ENV):
        problems.append(
            at(
                ["projects"],
                "give either the livekit section (and LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET) or "
                "projects, not both: with projects, each project names its own livekit section",
            )
        )
    if cfg.webhooks.keys:
        problems.append(
            at(["webhooks", "keys"], "with projects, give each project's key pairs in projects[].webhook_keys")
        )
    projects = []
    names: dict[str, int] = {}
    signers: dict[str, str] = {}
    owners: dict[str, str] = {t.reveal(): "events.tokens" for t in cfg.events.tokens}
    for i, project in enumerate(cfg.projects):
        where = ("projects", i)
        if project.name in names:
            problems.append(
                at([*where, "name"], f"{project.name!r} is already the name of projects[{names[project.name]}]")
            )
        names[project.name] = i
        livekit = _livekit(project.livekit, {}, at, problems, (*where, "livekit"))
        keys = _key_pairs(project.webhook_keys, at, problems, (*where, "webhook_keys")) or (
            KeyPair(livekit.api_key, livekit.api_secret),
        )
        for key in keys:
            if key.api_key and signers.setdefault(key.api_key, project.name) != project.name:
                problems.append(
                    at(
                        [*where, "webhook_keys" if project.webhook_keys else "livekit"],
                        f"API key {key.api_key[:40]!r} also signs the webhooks of project {signers[key.api_key]!r}: "
                        "a webhook could not be attributed to one project; give each project its own key pair",
                    )
                )
        tokens: list[str | None] = [t.reveal() for t in project.events_tokens]
        tokens += _token_file_lines(
            project.events_token_files, f"{at.source}: projects[{i}].events_token_files", problems
        )
        for token in dict.fromkeys(t for t in tokens if t):
            owner = owners.setdefault(token, f"projects[{i}]")
            if owner != f"projects[{i}]":
                problems.append(
                    at(
                        [*where, "events_tokens"],
                        f"an events token of this project is also one of {owner}: a token names one project "
                        "(or, in events.tokens, none)",
                    )
                )
        projects.append(
            replace(
                project,
                livekit=livekit,
                webhook_keys=keys,
                events_tokens=tuple(Secret(t) for t in dict.fromkeys(tokens) if t),
                events_token_files=(),
            )
        )
    return tuple(projects)


def _token(token: str, where: str, problems: list[str]) -> str | None:
    """An events token from a file or the environment, held to the inline tokens' minimum length."""
    if len(token) < MIN_TOKEN_LENGTH:
        problems.append(
            f"{where}: an events token must be at least {MIN_TOKEN_LENGTH} characters long "
            f"(this one has {len(token)}); use a random one, e.g. `openssl rand -hex 24`"
        )
        return None
    return token


def _token_file_lines(files: tuple[str, ...], key: str, problems: list[str]) -> list[str | None]:
    """The tokens of token files, one per non-blank line."""
    tokens: list[str | None] = []
    for i, name in enumerate(files):
        where = f"{key}[{i}] ({name!r})"  # the line that follows is the token file's
        text = _read_secret_file(name, where, problems)
        for n, line in enumerate((text or "").splitlines(), 1):
            if line.strip():
                tokens.append(_token(line.strip(), f"{where} line {n}", problems))
    return tokens


def _events(ev: EventsConfig, env: Mapping[str, str], at: _Located, problems: list[str]) -> EventsConfig:
    tokens: list[str | None] = [t.reveal() for t in ev.tokens]  # the schema checked their length
    tokens += _token_file_lines(ev.token_files, f"{at.source}: events.token_files", problems)
    for n, t in enumerate(env.get("LIVEKIT_EXPORTER_EVENTS_TOKENS", "").split(","), 1):
        if t.strip():
            tokens.append(_token(t.strip(), f"LIVEKIT_EXPORTER_EVENTS_TOKENS: token {n} (comma-separated)", problems))
    for name in ("call_ttl", "dependency_ttl", "campaign_ttl", "max_latency", "idempotency_ttl"):
        if getattr(ev, name) <= 0:
            default = format_duration(getattr(EventsConfig, name))
            got = format_duration(getattr(ev, name))
            problems.append(at(["events", name], f"must be longer than 0 (got {got!r}); the default is {default}"))
    return replace(
        ev,
        tokens=tuple(Secret(t) for t in dict.fromkeys(tokens) if t),
        buckets={name: tuple(sorted(bounds)) for name, bounds in ev.buckets.items()},
        prices=_prices(ev.prices, at, problems),
    )


def _prices(prices: tuple[Price, ...], at: _Located, problems: list[str]) -> tuple[Price, ...]:
    seen: dict[tuple[str, str], int] = {}
    for i, price in enumerate(prices):
        key = (price.provider.lower(), price.model.lower())
        if key in seen:
            problems.append(
                at(
                    ["events", "prices", i],
                    f"provider {price.provider!r} model {price.model!r} is already priced by "
                    f"events.prices[{seen[key]}]; keep one entry",
                )
            )
        seen[key] = i
    return prices


__all__ = ["SECRET_KEYS", "ConfigError", "load", "parse_duration"]
