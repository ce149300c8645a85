"""Request body -> a list of typed events, or every problem found in it.

The hot path decodes and validates the whole body in one msgspec call. Only when that fails does
the slow path decode each event on its own, so that the answer lists every bad event with its
index, JSON path and reason rather than only the first.

A leading UTF-8 byte order mark is ignored (RFC 8259 lets a parser do so; some Windows tools write
one). NaN and Infinity literals are not JSON: the answer says so, and to send null instead. A body
nested deeper than the parser's recursion limit is malformed (400), like any other bad JSON.

Repeated keys: an object that names a key twice ({"agent": "a", "agent": "b"}) is refused (400,
reason duplicate_key), as webhooks and the config file are: JSON parsers disagree on which one
counts, so the batch does not mean one thing. msgspec keeps the last silently, so the hot path
proves their absence without a second parse: the body is the events re-encoded, or has no more
quotes than they need (see _no_repeated_keys). Only a body it cannot prove clean (escaped
quotes, explicit nulls or default values) is parsed again, and only one it still cannot (escaped
quotes, or an actual repeat) by the json module, which names the key and the event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from . import model as contract

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

_batch = msgspec.json.Decoder(contract.Batch)
_event = msgspec.json.Decoder(contract.Event)
_encoder = msgspec.json.Encoder()
_untyped = msgspec.json.Decoder()


class _RawBatch(msgspec.Struct, forbid_unknown_fields=True):
    events: list[msgspec.Raw]


_raw_batch = msgspec.json.Decoder(_RawBatch)
# field -> the values it may take, for answers that say what is expected.
_ENUMS: dict[str, tuple[str, ...]] = {
    name: tuple(prop["enum"])
    for d in contract.schema()["$defs"].values()
    for name, prop in d.get("properties", {}).items()
    if "enum" in prop and name != "type"
}
_ENUMS["type"] = contract.TYPE_NAMES
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `(?P<path>[^`]*)`)?$", re.S)
_BYTE = re.compile(r"\(byte (\d+)\)")
BOM = b"\xef\xbb\xbf"
NOT_A_NUMBER = "NaN/Infinity are not JSON; send null for not measured"
TOO_DEEP = "nested too deeply (an event is one flat object)"
# A reason quotes what the client sent (an unknown field, a bad enum value): at most this much of it.
MAX_REASON = 200


@dataclass(frozen=True)
class Problem:
    """One bad event (index) or a bad body (index None), with the JSON path and the reason."""

    index: int | None
    path: str
    reason: str
    line: int | None = None

    def as_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"index": self.index, "path": self.path, "reason": self.reason}
        if self.line is not None:
            d["line"] = self.line
        return d


class BadBatch(Exception):
    """The batch cannot be applied; `status` is 400 (bad content) or 413 (too many events)."""

    def __init__(self, status: int, reason: str, message: str, problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.status, self.reason, self.message, self.problems = status, reason, message, list(problems)


def clip(text: str, limit: int = MAX_REASON) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _split(error: Exception) -> tuple[str, str]:
    match = _AT.match(str(error))
    assert match is not None  # the pattern matches any text
    reason, path = clip(match["reason"]), match["path"] or "$"
    allowed = _ENUMS.get(path.rpartition(".")[2])
    if allowed and reason.startswith(("Invalid enum value", "Invalid value")):
        reason += f"; expected one of {', '.join(allowed)}"
    return reason, path


def _too_many(n: int, limit: int) -> BadBatch:
    return BadBatch(
        413,
        "too_many_events",
        f"the batch holds {n} events, more than events.max_events ({limit}); split it into smaller batches",
    )


def check(event: contract.Event) -> tuple[str, str] | None:
    """(field, reason) when a decoded event is inconsistent in a way the schema cannot express."""
    if isinstance(event, contract.LLMUsage) and event.cached_tokens > event.input_tokens:
        return (
            "cached_tokens",
            f"cached_tokens ({event.cached_tokens}) exceeds input_tokens "
            f"({event.input_tokens}); input_tokens counts cached tokens too",
        )
    if isinstance(event, contract.Turn) and event.interrupted and event.interruptions == 0:
        return (
            "interruptions",
            "interruptions is 0 but interrupted is true; a turn the user cut short "
            "had at least 1 interruption (leave interruptions out to count 1)",
        )
    return None


def _malformed(err: Exception, body: bytes) -> str:
    """msgspec's "not valid JSON" reason, naming NaN and Infinity when that is what it tripped on."""
    if isinstance(err, RecursionError):
        return TOO_DEEP
    text = clip(str(err))
    at = _BYTE.search(text)
    if at:
        pos = int(at[1])
        rest = body[pos : pos + 8].lower()
        if rest.startswith((b"nan", b"inf")) or (rest.startswith(b"-") and rest[1:].startswith(b"inf")):
            return f"{NOT_A_NUMBER} (byte {pos})"
    return text


def _decode_each(
    items: Sequence[bytes | msgspec.Raw], path: Callable[[int], str], lines: list[int] | None
) -> tuple[list[contract.Event], list[Problem]]:
    """Decodes and checks every event on its own: (the events, a problem per bad one)."""
    events, problems = [], []
    for i, item in enumerate(items):
        line = lines[i] if lines else None
        try:
            e = _event.decode(item)
        except (msgspec.DecodeError, RecursionError) as err:  # ValidationError included
            reason, where = _split(err)
            if not isinstance(err, msgspec.ValidationError):
                reason, where = f"not valid JSON: {_malformed(err, bytes(item))}", "$"
            problems.append(Problem(i, path(i) + where[1:], reason, line))
            continue
        bad = check(e)
        if bad:
            problems.append(Problem(i, f"{path(i)}.{bad[0]}", bad[1], line))
        events.append(e)
    return events, problems


def _invalid(problems: list[Problem]) -> BadBatch:
    n = len({p.index for p in problems if p.index is not None})
    reason = "duplicate_key" if all(p.reason.startswith(REPEATED) for p in problems) else "invalid"
    message = f"{n} invalid event(s); nothing was applied" if n else "the batch is invalid; nothing was applied"
    return BadBatch(400, reason, message, sorted(problems, key=_order))


def _order(p: Problem) -> int:
    return -1 if p.index is None else p.index


# -- repeated keys ------------------------------------------------------------------------------

REPEATED = "the key appears more than once"


def _no_repeated_keys(body: bytes, events: list[contract.Event], batch: bool, parsed: Callable[[], Any]) -> bool:
    """True when no object in `body` (a valid batch, or NDJSON text when not `batch`, decoded into
    `events`) repeats a key; False when that cannot be shown cheaply (then ask _repeated_*).

    First, `events` re-encoded: a body written exactly so (by msgspec, as the push client writes
    it) names no key twice. Else by counting quotes. A quote in a JSON text opens or closes a key
    or a string value, or is escaped inside a string: quotes = 2 x (keys + string values) + escaped
    quotes. A repeat adds a key the decoded objects lack; so if the body has no more quotes than
    the decoded objects need, nothing is repeated. Counted in the re-encoded events (they omit
    fields at their default: exact for a client that omits them too), then in the body parsed into
    dicts (`parsed()`, the last of a repeated key kept) and re-encoded, which keeps explicit nulls
    and defaults. Either count is exact only without escapes (a backslash) in what it counts: a
    body with escaped quotes is left to the json module.
    """
    encoded = _encoder.encode(events)
    if batch and len(body) == len(encoded) + 11 and body == b'{"events":' + encoded + b"}":
        return True
    quotes = body.count(b'"')
    if b"\\" not in encoded and quotes == encoded.count(b'"') + (2 if batch else 0):  # 2: "events"
        return True
    encoded = _encoder.encode(parsed())
    return b"\\" not in encoded and quotes == encoded.count(b'"')


def _objects(lines: Sequence[bytes]) -> Any:
    """NDJSON lines -> their objects, parsed in one call (for _no_repeated_keys)."""
    return _untyped.decode(b"[" + b",".join(lines) + b"]")


class _Pairs(list[tuple[str, Any]]):
    """An object's (key, value) pairs as written, repeats included."""


_PAIRS = json.JSONDecoder(object_pairs_hook=_Pairs)


def _first_repeat(pairs: object) -> str | None:
    if not isinstance(pairs, _Pairs):
        return None
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            return key
        seen.add(key)
    return None


def _parse_pairs(text: bytes | msgspec.Raw) -> object:
    try:
        return _PAIRS.decode(bytes(text).decode("utf-8", "replace"))
    except (ValueError, RecursionError):  # msgspec refused it already, or will
        return None


def _repeat(index: int | None, at: str, key: str, line: int | None = None) -> Problem:
    return Problem(
        index,
        f"{at}.{clip(key, 64)}",
        f"{REPEATED} in this object (parsers disagree on which one counts); send each key once",
        line,
    )


def _repeated_in_batch(body: bytes) -> list[Problem]:
    """A problem per object of a JSON batch that repeats a key: the top level, then each event."""
    doc = _parse_pairs(body)
    if not isinstance(doc, _Pairs):
        return []
    problems = []
    if (key := _first_repeat(doc)) is not None:
        problems.append(_repeat(None, "$", key))
    events = [v for k, v in doc if k == "events"]
    if events and isinstance(events[-1], list):
        for i, event in enumerate(events[-1]):
            if (key := _first_repeat(event)) is not None:
                problems.append(_repeat(i, f"$.events[{i}]", key))
    return problems


def _repeated_in_lines(lines: Sequence[bytes], numbers: list[int]) -> list[Problem]:
    """A problem per NDJSON line whose event repeats a key."""
    return [
        _repeat(i, "$", key, numbers[i])
        for i, line in enumerate(lines)
        if (key := _first_repeat(_parse_pairs(line))) is not None
    ]


def decode_json(body: bytes, max_events: int) -> tuple[list[contract.Event], None]:
    """`{"events": [...]}` -> (events, None). Raises BadBatch."""
    if body.startswith(BOM):
        body = body[3:]
    try:
        events = _batch.decode(body).events
    except (msgspec.DecodeError, RecursionError):  # ValidationError included
        events = None
    if events is not None:
        if len(events) > max_events:
            raise _too_many(len(events), max_events)
        if not any(map(check, events)):
            if _no_repeated_keys(body, events, True, lambda: _untyped.decode(body)):
                return events, None
            if repeated := _repeated_in_batch(body):
                raise _invalid(repeated)
            return events, None
    try:
        raw = _raw_batch.decode(body).events
    except RecursionError:
        raise BadBatch(400, "malformed", f'the body is not valid JSON: {TOO_DEEP}; send {{"events": [...]}}') from None
    except msgspec.ValidationError as e:  # a subclass of DecodeError: first
        reason, path = _split(e)
        raise BadBatch(
            400,
            "invalid",
            f'the body is not an events batch: {reason} at {path}; send {{"events": [...]}}',
            [Problem(None, path, reason)],
        ) from None
    except msgspec.DecodeError as e:
        raise BadBatch(
            400, "malformed", f'the body is not valid JSON: {_malformed(e, body)}; send {{"events": [...]}}'
        ) from None
    if len(raw) > max_events:
        raise _too_many(len(raw), max_events)
    events, problems = _decode_each(raw, lambda i: f"$.events[{i}]", None)
    problems += _repeated_in_batch(body)  # a repeat may be why an event is wrong: named too
    if problems:
        raise _invalid(problems)
    return events, None  # the whole batch failed to decode, each of its events did not


def decode_ndjson(body: bytes, max_events: int) -> tuple[list[contract.Event], list[int]]:
    """One event per line (blank lines ignored) -> (events, their line numbers). Raises BadBatch."""
    if body.startswith(BOM):
        body = body[3:]
    lines = [(n, line) for n, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    if len(lines) > max_events:
        raise _too_many(len(lines), max_events)
    numbers = [n for n, _ in lines]
    items = [line for _, line in lines]
    events, problems = _decode_each(items, lambda i: "$", numbers)
    if problems:
        problems += _repeated_in_lines(items, numbers)
    elif not _no_repeated_keys(body, events, False, lambda: _objects(items)):
        problems = _repeated_in_lines(items, numbers)
    if problems:
        raise _invalid(problems)
    return events, numbers
