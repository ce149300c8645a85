"""The published contract: the generated JSON Schema is current, agrees with the decoder, and the
OpenAPI document is valid and points at it; the config schema knows every histogram."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import jsonschema
import msgspec
import pytest
import yaml
from test_events_api import BAD_BATCH, ONE_OF_EACH

from livekit_exporter import config as config_mod
from livekit_exporter.events import model
from livekit_exporter.events.decode import BadBatch, decode_json
from livekit_exporter.events.pipeline import HISTOGRAMS

SCHEMAS = resources.files("livekit_exporter").joinpath("schemas")
DOCS = Path(__file__).parent.parent / "docs" / "events-api.md"


def published() -> dict:
    return json.loads(SCHEMAS.joinpath("events.schema.json").read_text())


def test_the_published_schema_is_generated_from_the_model():
    assert SCHEMAS.joinpath("events.schema.json").read_text() == model.schema_text(), (
        "schemas/events.schema.json is stale: python -m livekit_exporter.events > "
        "exporter/livekit_exporter/schemas/events.schema.json"
    )


def test_every_event_type_has_a_schema_definition():
    event = published()["$defs"]["Event"]
    assert sorted(event["discriminator"]["mapping"]) == sorted(model.TYPE_NAMES)
    assert len(event["anyOf"]) == len(model.TYPE_NAMES) >= 10


@pytest.fixture(scope="module")
def validator():
    s = published()
    jsonschema.Draft202012Validator.check_schema(s)
    return jsonschema.Draft202012Validator(s)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=[e["type"] for e in ONE_OF_EACH])
def test_good_events_pass_both_the_schema_and_the_decoder(validator, event):
    body = {"events": [event]}
    assert list(validator.iter_errors(body)) == []
    assert len(decode_json(json.dumps(body).encode(), 10)[0]) == 1


# cached_tokens > input_tokens, and interrupted with 0 interruptions, are the rules the schema
# cannot express (checked after decoding).
SCHEMA_EXPRESSIBLE = [e for e in BAD_BATCH[1:] if e.get("type") != "llm" and "interruptions" not in e]


@pytest.mark.parametrize("event", SCHEMA_EXPRESSIBLE, ids=lambda e: str(e.get("type")))
def test_bad_events_fail_both_the_schema_and_the_decoder(validator, event):
    body = {"events": [event]}
    assert list(validator.iter_errors(body)) != []
    with pytest.raises(BadBatch):
        decode_json(json.dumps(body).encode(), 10)


def test_the_examples_in_the_docs_are_valid(validator):
    text = DOCS.read_text()
    curl = re.search(r"-d '(\{.*?\})'\n", text, re.S)
    assert curl
    body = json.loads(curl.group(1))
    assert list(validator.iter_errors(body)) == []
    decode_json(curl.group(1).encode(), 10)


def test_the_openapi_document_is_valid_and_uses_the_event_schema():
    from openapi_spec_validator import validate
    from openapi_spec_validator.readers import read_from_filename

    path = str(SCHEMAS.joinpath("openapi.yaml"))
    spec, base_uri = read_from_filename(path)
    validate(spec, base_uri=base_uri)

    refs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str) and not node["$ref"].startswith("#"):
                refs.append(node["$ref"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(spec)
    assert sorted(refs) == ["events.schema.json", "events.schema.json#/$defs/Event"]
    schema = published()
    for ref in refs:  # every external reference resolves in the published schema
        target = schema
        for part in ref.partition("#")[2].strip("/").split("/") if "#" in ref else []:
            target = target[part]
        assert target
    op = spec["paths"]["/v1/events"]["post"]
    assert set(op["responses"]) == {"200", "400", "401", "413", "415", "422", "429"}
    assert any(p.get("name") == "Idempotency-Key" and p["in"] == "header" for p in op["parameters"])
    example = op["requestBody"]["content"]["application/json"]["example"]
    jsonschema.Draft202012Validator(schema).validate(example)


def test_the_package_ships_the_contract():
    pyproject = (Path(__file__).parent.parent / "pyproject.toml").read_text()
    assert '"schemas/*.json"' in pyproject and '"schemas/*.yaml"' in pyproject


def test_the_config_schema_knows_every_histogram():
    events = config_mod.schema()["properties"]["events"]["properties"]
    assert sorted(events["buckets"]["propertyNames"]["enum"]) == sorted(HISTOGRAMS)


def test_prices_and_buckets_load_from_yaml(tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({
        "livekit": {"url": "http://lk:7880", "api_key": "k", "api_secret": "s" * 32},
        "events": {
            "tokens": ["a-token-of-sixteen-chars"],
            "prices": [{"provider": "openai", "model": "gpt-4o-mini", "usd_per_million_input_tokens": 0.15},
                       {"provider": "deepgram", "usd_per_stt_audio_minute": 0.0077},
                       {"provider": "cartesia", "usd_per_tts_audio_minute": 0.03}],
            "buckets": {"voice_agent_turn_latency_seconds": [2, 1]},
        },
    }))
    cfg = config_mod.load(str(path), env={})
    assert cfg.events.prices == (
        config_mod.Price("openai", "gpt-4o-mini", usd_per_million_input_tokens=0.15),
        config_mod.Price("deepgram", usd_per_stt_audio_minute=0.0077),
        config_mod.Price("cartesia", usd_per_tts_audio_minute=0.03),
    )
    assert cfg.events.buckets == {"voice_agent_turn_latency_seconds": (1, 2)}


@pytest.mark.parametrize("events, problem", [
    ({"prices": [{"provider": "a", "usd_per_stt_audio_minute": 1}, {"provider": "A", "usd_per_stt_audio_minute": 2}]},
     "events.prices[1]: provider 'A' model '*' is already priced by events.prices[0]; keep one entry"),
    ({"prices": [{"provider": "a", "usd_per_minute": 1}]}, "unknown key(s) usd_per_minute"),
    # One audio-minute price for STT and TTS charged STT prices on TTS audio: it is gone.
    ({"prices": [{"provider": "a", "usd_per_audio_minute": 1}]},
     "unknown key(s) usd_per_audio_minute; allowed keys: model, provider, usd_per_million_cached_tokens"),
    ({"prices": [{"provider": "a", "usd_per_stt_audio_minute": -1}]}, "must be >= 0"),
    ({"buckets": {"voice_agent_turn_latency": [1]}}, "events.buckets"),
])
def test_bad_prices_and_buckets_are_reported(tmp_path, events, problem):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"livekit": {"url": "http://lk:7880", "api_key": "k", "api_secret": "s"},
                                    "events": events}))
    with pytest.raises(config_mod.ConfigError) as e:
        config_mod.load(str(path), env={})
    assert any(problem in p for p in e.value.problems), e.value.problems


def test_a_client_struct_round_trips_through_the_decoder():
    event = model.Turn(agent="a", e2e_latency_seconds=0.5)
    assert decode_json(msgspec.json.encode(model.Batch(events=[event])), 10) == ([event], None)


def _load_events(tmp_path, events: dict, env: dict | None = None):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"livekit": {"url": "http://lk:7880", "api_key": "k", "api_secret": "s"},
                                    "events": events}))
    return config_mod.load(str(path), env=env or {})


def test_tokens_from_files_and_the_environment_are_held_to_the_same_minimum(tmp_path):
    short, good = "short-tok-123", "a-long-enough-token-0123"
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{good}\n\n{short}\n")
    with pytest.raises(config_mod.ConfigError) as e:
        _load_events(tmp_path, {"token_files": [str(token_file)]},
                     env={"LIVEKIT_EXPORTER_EVENTS_TOKENS": f"{good}, tiny"})
    problems = e.value.problems
    assert problems == [
        f"{tmp_path / 'c.yml'}: events.token_files[0] ({str(token_file)!r}) line 3: an events token must be at "
        "least 16 characters long (this one has 13); use a random one, e.g. `openssl rand -hex 24`",
        "LIVEKIT_EXPORTER_EVENTS_TOKENS: token 2 (comma-separated): an events token must be at least 16 "
        "characters long (this one has 4); use a random one, e.g. `openssl rand -hex 24`",
    ]
    assert not any(short in p or "tiny" in p for p in problems)
    cfg = _load_events(tmp_path, {"token_files": [str(token_file)][:0]}, env={"LIVEKIT_EXPORTER_EVENTS_TOKENS": good})
    assert [t.reveal() for t in cfg.events.tokens] == [good]


@pytest.mark.parametrize("name", ["call_ttl", "dependency_ttl", "campaign_ttl", "max_latency", "idempotency_ttl"])
def test_durations_of_the_events_api_must_be_longer_than_zero(tmp_path, name):
    with pytest.raises(config_mod.ConfigError) as e:
        _load_events(tmp_path, {name: "0s"})
    assert any(f"events.{name}: must be longer than 0 (got '0s')" in p for p in e.value.problems), e.value.problems
