"""Request body -> a list of typed events, or every problem found in it.

The hot path decodes and validates the whole body in one msgspec call. Only when that fails does
the slow path decode each event on its own, so that the answer lists every bad event with its
index, JSON path and reason rather than only the first.

A leading UTF-8 byte order mark is ignored (RFC 8259 lets a parser do so; some Windows tools write
one). NaN and Infinity literals are not JSON: the answer says so, and to send null instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec

from . import model as contract

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")

_batch = msgspec.json.Decoder(contract.Batch)
_event = msgspec.json.Decoder(contract.Event)


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


def _split(error: Exception) -> tuple[str, str]:
    match = _AT.match(str(error))
    assert match is not None  # the pattern matches any text
    reason, path = match["reason"], match["path"] or "$"
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
    text = str(err)
    at = _BYTE.search(text)
    if at:
        pos = int(at[1])
        rest = body[pos : pos + 8].lower()
        if rest.startswith((b"nan", b"inf")) or (rest.startswith(b"-") and rest[1:].startswith(b"inf")):
            return f"{NOT_A_NUMBER} (byte {pos})"
    return text


def _decode_each(
    items: Sequence[bytes | msgspec.Raw], path: Callable[[int], str], lines: list[int] | None
) -> list[contract.Event]:
    """Decodes and checks every event on its own; raises BadBatch listing every bad one."""
    events, problems = [], []
    for i, item in enumerate(items):
        line = lines[i] if lines else None
        try:
            e = _event.decode(item)
        except msgspec.DecodeError as err:  # ValidationError included
            reason, where = _split(err)
            if not isinstance(err, msgspec.ValidationError):
                reason = f"not valid JSON: {_malformed(err, item)}"
            problems.append(Problem(i, path(i) + where[1:], reason, line))
            continue
        bad = check(e)
        if bad:
            problems.append(Problem(i, f"{path(i)}.{bad[0]}", bad[1], line))
        events.append(e)
    if problems:
        raise BadBatch(400, "invalid", f"{len(problems)} invalid event(s); nothing was applied", problems)
    return events


def decode_json(body: bytes, max_events: int) -> tuple[list[contract.Event], None]:
    """`{"events": [...]}` -> (events, None). Raises BadBatch."""
    if body.startswith(BOM):
        body = body[3:]
    try:
        events = _batch.decode(body).events
    except msgspec.DecodeError:  # ValidationError included
        events = None
    if events is not None:
        if len(events) > max_events:
            raise _too_many(len(events), max_events)
        if not any(map(check, events)):
            return events, None
    try:
        raw = _raw_batch.decode(body).events
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
    return _decode_each(raw, lambda i: f"$.events[{i}]", None), None


def decode_ndjson(body: bytes, max_events: int) -> tuple[list[contract.Event], list[int]]:
    """One event per line (blank lines ignored) -> (events, their line numbers). Raises BadBatch."""
    if body.startswith(BOM):
        body = body[3:]
    lines = [(n, line) for n, line in enumerate(body.split(b"\n"), 1) if line.strip()]
    if len(lines) > max_events:
        raise _too_many(len(lines), max_events)
    numbers = [n for n, _ in lines]
    return _decode_each([line for _, line in lines], lambda i: "$", numbers), numbers
