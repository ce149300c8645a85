"""schemas/config.schema.json and docs/configuration.md, generated from the dataclasses of model.py.

The schema is written from msgspec's view of the classes (msgspec.inspect), so that the YAML form
of a field (a duration as `10s`, a secret as a string) and its default are stated the way a user
writes them. `python -m livekit_exporter.config` writes both files; `--check` fails when either is
stale (tests/test_config.py runs it).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any, cast

import msgspec
import msgspec.inspect as mi

from .model import DURATION_PATTERN, Config, Duration, Secret, format_duration

SCHEMA_ID = "https://github.com/livekit-exporter/livekit-exporter/config.schema.json"
_CUSTOM: dict[type, dict[str, Any]] = {
    Duration: {"type": "string", "pattern": DURATION_PATTERN},
    Secret: {"type": "string", "minLength": 1},
}
_SCALARS = {mi.BoolType: "boolean", mi.IntType: "integer", mi.FloatType: "number", mi.StrType: "string"}
# msgspec's constraint attributes -> JSON Schema keywords, per kind of type
_NUMBER_KEYS = {"ge": "minimum", "gt": "exclusiveMinimum", "le": "maximum", "lt": "exclusiveMaximum"}
_LENGTH_KEYS = {"min_length": "minLength", "max_length": "maxLength", "pattern": "pattern"}
_ITEMS_KEYS = {"min_length": "minItems", "max_length": "maxItems"}


def _constraints(t: mi.Type, keys: dict[str, str]) -> dict[str, Any]:
    return {keyword: getattr(t, attr) for attr, keyword in keys.items() if getattr(t, attr, None) is not None}


def _type_schema(t: mi.Type) -> dict[str, Any]:
    """The JSON Schema of one msgspec type: constraints and descriptions included, null never allowed
    (an optional key is left out, not set to null)."""
    if isinstance(t, mi.Metadata):
        return {**_type_schema(t.type), **(t.extra_json_schema or {})}
    if isinstance(t, mi.UnionType):
        (only,) = [member for member in t.types if not isinstance(member, mi.NoneType)]
        return _type_schema(only)
    if isinstance(t, mi.CustomType):
        return dict(_CUSTOM[t.cls])
    if isinstance(t, (mi.BoolType, mi.IntType, mi.FloatType, mi.StrType)):
        keys = _LENGTH_KEYS if isinstance(t, mi.StrType) else _NUMBER_KEYS
        return {"type": _SCALARS[type(t)], **_constraints(t, keys)}
    if isinstance(t, mi.LiteralType):
        return {"enum": list(t.values)}
    if isinstance(t, (mi.VarTupleType, mi.ListType)):
        return {"type": "array", "items": _type_schema(t.item_type), **_constraints(t, _ITEMS_KEYS)}
    if isinstance(t, mi.DictType):
        return {"type": "object", "additionalProperties": _type_schema(t.value_type)}
    if isinstance(t, mi.DataclassType):
        return _object_schema(t)
    raise TypeError(f"config: no JSON Schema for {t!r}")


def _yaml_fields(t: mi.DataclassType) -> Iterator[mi.Field]:
    """The fields a YAML file may set (not those the loader sets, such as `source`)."""
    for f in t.fields:
        if not (isinstance(f.type, mi.Metadata) and (f.type.extra or {}).get("yaml") is False):
            yield f


def yaml_default(f: mi.Field) -> Any:
    """A field's default as YAML writes it (a duration as text); NODEFAULT when it has none."""
    if f.required:
        return mi.NODEFAULT
    value = f.default_factory() if f.default_factory is not mi.NODEFAULT else f.default
    if isinstance(value, Duration):
        return format_duration(value)
    if isinstance(value, Secret) or value is None or value == "" or dataclasses.is_dataclass(value):
        return mi.NODEFAULT  # not set (a secret's default is no secret), or a section whose keys say
    return msgspec.to_builtins(value)


def _object_schema(t: mi.DataclassType) -> dict[str, Any]:
    properties = {}
    for f in _yaml_fields(t):
        schema = _type_schema(f.type)
        default = yaml_default(f)
        if default is not mi.NODEFAULT:
            schema["default"] = default
        properties[f.name] = schema
    out: dict[str, Any] = {"type": "object", "additionalProperties": False}
    if t.cls.__doc__:
        out["description"] = " ".join(t.cls.__doc__.split())
    required = [f.name for f in _yaml_fields(t) if f.required]
    if required:
        out["required"] = required
    out["properties"] = properties
    return out


@cache
def schema() -> dict[str, Any]:
    """The published JSON Schema (draft 2020-12) of the configuration file."""
    # The histograms whose buckets may be set: the events pipeline's own table (imported here, when
    # both modules are loaded, because the pipeline imports the configuration).
    from ..events.pipeline import HISTOGRAMS

    body = _object_schema(cast(mi.DataclassType, mi.type_info(Config)))
    description = body.pop("description")
    body["properties"]["events"]["properties"]["buckets"]["propertyNames"] = {"enum": list(HISTOGRAMS)}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "livekit-exporter configuration",
        "description": f"{description} Generated from livekit_exporter/config/model.py; do not edit by hand.",
        **body,
    }


def schema_text() -> str:
    return json.dumps(schema(), indent=2, ensure_ascii=False) + "\n"


# -- docs/configuration.md -------------------------------------------------------------------------------

_ENVIRONMENT = (
    ("LIVEKIT_URL", "livekit.url"),
    ("LIVEKIT_API_KEY", "livekit.api_key"),
    ("LIVEKIT_API_SECRET", "livekit.api_secret"),
    ("LIVEKIT_EXPORTER_EVENTS_TOKENS", "events.tokens (added to them; comma-separated)"),
)


def _type_words(s: dict[str, Any]) -> str:
    if s.get("pattern") == DURATION_PATTERN:
        return "duration"
    if "enum" in s:
        return " \\| ".join(f"`{v}`" for v in s["enum"])
    if s.get("type") == "array":
        return "list" if s["items"].get("type") == "object" else f"list of {_type_words(s['items'])}"
    if s.get("type") == "object" and "properties" not in s:
        return f"map of {_type_words(s['additionalProperties'])}"
    words = {"integer": "integer", "number": "number", "string": "string", "boolean": "boolean"}
    out = words.get(s.get("type", ""), "mapping")
    if "minimum" in s:
        out += f" ≥ {s['minimum']}"
    if "exclusiveMinimum" in s:
        out += f" > {s['exclusiveMinimum']}"
    if s.get("minLength", 1) > 1:
        out += f" of ≥ {s['minLength']} characters"
    return out


def _rows(node: dict[str, Any], prefix: str) -> Iterator[str]:
    for name, s in node["properties"].items():
        key = f"{prefix}{name}"
        if s.get("type") == "object" and "properties" in s:
            yield from _rows(s, f"{key}.")
            continue
        default = f"`{json.dumps(s['default'])}`" if "default" in s else "none"
        text = s.get("description", "")
        items = s.get("items", {})
        if items.get("type") == "object":
            text = f"{text} {items.get('description', '')}".strip()
        yield f"| `{key}` | {_type_words(s)} | {default} | {text.replace('|', chr(92) + '|')} |"
        if items.get("type") == "object":
            yield from _rows(items, f"{key}[].")


def _example(node: dict[str, Any], indent: str = "") -> Iterator[str]:
    for name, s in node["properties"].items():
        if s.get("type") == "object" and "properties" in s:
            yield f"{indent}{name}:"
            yield from _example(s, indent + "  ")
        elif "default" in s:
            yield f"{indent}{name}: {json.dumps(s['default'])}"


def docs_text() -> str:
    s = schema()
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m livekit_exporter.config` from livekit_exporter/config/model.py; do not edit. -->",
        "",
        "`livekit-exporter --config.file=FILE` reads one YAML file, validated against",
        "[`schemas/config.schema.json`](../exporter/livekit_exporter/schemas/config.schema.json) (shipped in the",
        "package; `livekit-exporter check-config FILE` checks a file). Every key is optional; an error names the",
        "file, the line, the key and what to do, and never quotes a secret. Secrets can come from files",
        "(`api_secret_file`, `token_files`) and from the environment:",
        "",
        "| variable | sets |",
        "|---|---|",
        *(f"| `{var}` | `{key.split(' ')[0]}`{key[len(key.split(' ')[0]) :]} |" for var, key in _ENVIRONMENT),
        "",
        "Durations are Prometheus durations: `500ms`, `10s`, `1m30s`, `2h`, `1d`.",
        "",
        "## Every key",
        "",
        "| key | type | default | what it does |",
        "|---|---|---|---|",
        *_rows(s, ""),
        "",
        "## The defaults as a file",
        "",
        "A file that sets every key with a default to that default (the livekit URL, key and secret have none):",
        "",
        "```yaml",
        *_example(s),
        "```",
        "",
    ]
    return "\n".join(lines)


def generated_files() -> dict[Path, str]:
    """{path: text} of every file generated from model.py."""
    package = Path(__file__).resolve().parents[1]
    return {
        package / "schemas" / "config.schema.json": schema_text(),
        package.parents[1] / "docs" / "configuration.md": docs_text(),
    }
