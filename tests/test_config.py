"""Configuration and `livekit-exporter check-config`, through the real command line."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from livekit_exporter import config

SECRET = "super-secret-value-" + "z" * 24


def run_check(path: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "livekit_exporter.cli", "check-config", str(path)],
        capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **(env or {})},
        cwd=Path(__file__).parent.parent / "exporter",
    )


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "livekit-exporter.yml"
    p.write_text(textwrap.dedent(text))
    return p


def test_a_good_file_is_ok(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    p = write(tmp_path, f"""
        livekit:
          url: https://lk.example.com
          api_key: APIkey
          api_secret_file: {secret_file}
          request_timeout: 5s
        collect:
          default_scrape_timeout: 15s
          timeout_margin: 250ms
          room_detail: {{enabled: true, max_rooms: 20, concurrency: 4}}
        labels: {{max_values: 20}}
    """)
    r = run_check(p)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"{p}: OK"
    cfg = config.load(str(p), env={})
    assert cfg.livekit.api_secret.reveal() == SECRET
    assert cfg.collect.timeout_margin == 0.25
    assert cfg.collect.room_detail.max_rooms == 20


@pytest.mark.parametrize(
    "body,expected",
    [
        pytest.param("""
            livekit: {url: https://lk.example.com, api_key: k, api_secret: s}
            collect:
              room_detail:
                max_rooms: "lots"
        """, ["livekit-exporter.yml:5", "collect.room_detail.max_rooms", "must be of type integer"], id="wrong-type"),
        pytest.param("""
            livekit: {url: https://lk.example.com, api_key: k, api_secret: s}
            collect:
              servics: [room]
        """, ["livekit-exporter.yml:4", "collect: unknown key(s) servics", "allowed keys"], id="unknown-key"),
        pytest.param("""
            livekit: {api_key: k, api_secret: s}
        """, ["livekit.url: missing", "LIVEKIT_URL"], id="missing-url"),
        pytest.param("""
            livekit: {url: https://lk.example.com, api_key: k, api_secret: s}
            collect:
              default_scrape_timeout: 10 seconds
        """, ["livekit-exporter.yml:4", "collect.default_scrape_timeout", "must be a duration like"], id="bad-duration"),
        pytest.param("""
            livekit: {url: "lk.example.com", api_key: k, api_secret: s}
        """, ["livekit.url", "http(s)://"], id="bad-url"),
        pytest.param("""
            livekit: [not, a, mapping
        """, ["not valid YAML"], id="bad-yaml"),
    ],
)
def test_each_bad_file_exits_2_naming_the_yaml_path(tmp_path, body, expected):
    r = run_check(write(tmp_path, body))
    assert r.returncode == 2
    for piece in expected:
        assert piece in r.stderr, f"{piece!r} not in {r.stderr!r}"
    assert "Traceback" not in r.stderr


def test_every_error_is_listed(tmp_path):
    r = run_check(write(tmp_path, """
        livekit: {url: https://lk.example.com, api_key: k, api_secret: s, colour: blue}
        collect:
          timeout_margin: soon
          room_detail: {concurrency: 0}
    """))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 3, r.stderr


@pytest.mark.parametrize("body", [
    f"""
        livekit: {{url: https://lk.example.com, api_key: k, api_secret: {SECRET}, extra: 1}}
    """,
    f"""
        livekit:
          url: https://lk.example.com
          api_key: k
          api_secret: ["{SECRET}"]
    """,
    f"""
        livekit: {{url: https://lk.example.com, api_key: k}}
        webhooks:
          keys:
            - {{api_key: k2, api_secret: {SECRET}, api_secret_file: /x}}
    """,
    f"""
        livekit: {{url: https://lk.example.com, api_key: k, api_secret: {SECRET}}}
        collect: {{room_detail: {{enabled: maybe}}}}
    """,
    f"""
        livekit: {{url: https://lk.example.com, api_key: k, api_secret: "{SECRET}
    """,
])
def test_a_secret_is_never_echoed(tmp_path, body):
    r = run_check(write(tmp_path, body))
    assert r.returncode == 2
    assert SECRET not in r.stderr + r.stdout


def test_environment_fills_and_overrides(tmp_path):
    p = write(tmp_path, """
        livekit: {url: https://file.example.com, api_key: filekey}
    """)
    env = {"LIVEKIT_URL": "wss://env.example.com", "LIVEKIT_API_SECRET": SECRET}
    cfg = config.load(str(p), env=env)
    assert cfg.livekit.url == "wss://env.example.com"
    assert cfg.livekit.api_key == "filekey"
    assert cfg.livekit.api_secret.reveal() == SECRET
    assert SECRET not in repr(cfg)
    assert run_check(p, env).returncode == 0
    assert run_check(p).returncode == 2  # no secret anywhere


def test_environment_alone_is_enough():
    env = {"LIVEKIT_URL": "http://127.0.0.1:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET}
    cfg = config.load(None, env=env)
    assert cfg.livekit.url == "http://127.0.0.1:7880"
    assert cfg.collect.services == ("room", "egress", "ingress", "sip")


def test_missing_secret_file_is_reported(tmp_path):
    r = run_check(write(tmp_path, f"""
        livekit: {{url: https://lk.example.com, api_key: k, api_secret_file: {tmp_path / 'nope'}}}
    """))
    assert r.returncode == 2
    assert "livekit.api_secret_file: cannot read secret file" in r.stderr


@pytest.mark.parametrize("text,seconds", [("500ms", 0.5), ("10s", 10), ("1m30s", 90), ("2h", 7200), ("1d", 86400)])
def test_durations(text, seconds):
    assert config.parse_duration(text) == seconds


@pytest.mark.parametrize("body,expected", [
    pytest.param("collect:\n  room_size_buckets: [1, 1, 2]\n", "must not repeat an item", id="duplicate-buckets"),
    pytest.param("collect:\n  room_size_buckets: [1, .inf]\n", "must be finite numbers", id="infinite-bucket"),
    pytest.param("collect:\n  services: []\n", "must have at least 1 item", id="no-services"),
    pytest.param("livekit:\n  url: https://x y\n", "must be an http(s):// or ws(s):// URL", id="url-with-space"),
    pytest.param("collect:\n  timeout_margin: 1s\n  timeout_margin: 2s\n", "livekit-exporter.yml:4: not valid YAML: key 'timeout_margin' is given twice (first on line 3)", id="duplicate-key"),
    pytest.param(f"livekit:\n  api_secret: {SECRET}\n  api_secret_file: /x\n", "not both", id="secret-and-file"),
    pytest.param("webhooks:\n  keys:\n    - {api_key: k2}\n", "livekit-exporter.yml:4: webhooks.keys[0]: give exactly one of api_secret or api_secret_file", id="key-without-secret"),
    pytest.param("events:\n  buckets: {voice_agent_nope_seconds: [1]}\n", "livekit-exporter.yml:3: events.buckets: must be one of voice_agent_call_duration_seconds", id="unknown-histogram"),
    pytest.param("events:\n  call_ttl: 0s\n", "livekit-exporter.yml:3: events.call_ttl: must be longer than 0 (got '0s'); the default is 2h", id="zero-ttl"),
    pytest.param(f"livekit:\n  url: http://user:{SECRET}@x y\n", "must be an http(s):// or ws(s):// URL (got 'http://***@x y')", id="url-credentials-blanked"),
])
def test_more_bad_files(tmp_path, body, expected):
    base = "livekit: {url: https://lk.example.com, api_key: k, api_secret: s}\n"
    text = body if body.startswith("livekit") else base + body
    r = run_check(write(tmp_path, text))
    assert r.returncode == 2
    assert expected in r.stderr, r.stderr
    assert SECRET not in r.stderr


def test_a_secret_file_given_as_the_config_is_not_echoed(tmp_path):
    p = tmp_path / "secret"
    p.write_text(SECRET + "\n")
    r = run_check(p)
    assert r.returncode == 2
    assert "(top level): must be of type object" in r.stderr
    assert SECRET not in r.stderr


def test_a_binary_file_is_reported_not_a_traceback(tmp_path):
    p = tmp_path / "cfg.yml"
    p.write_bytes(b"\xff\xfe\x00livekit: 1\n")
    r = run_check(p)
    assert r.returncode == 2
    assert "not UTF-8 text" in r.stderr and "Traceback" not in r.stderr


# -- the contract: model.py is the one source ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def test_the_schema_and_the_configuration_doc_are_generated_and_current():
    r = subprocess.run([sys.executable, "-m", "livekit_exporter.config", "--check"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr + "\nregenerate with: .venv/bin/python -m livekit_exporter.config"
    from livekit_exporter.config.schema import generated_files

    assert {p.relative_to(ROOT).as_posix() for p in generated_files()} == {
        "exporter/livekit_exporter/schemas/config.schema.json", "docs/configuration.md"}


def test_the_documented_defaults_are_the_defaults(tmp_path):
    """docs/configuration.md's file of defaults, loaded, is the Config nobody configured."""
    import re

    doc = (ROOT / "docs" / "configuration.md").read_text()
    example = re.search(r"## The defaults as a file.*?```yaml\n(.*?)```", doc, re.S).group(1)
    p = tmp_path / "defaults.yml"
    p.write_text(example)
    env = {"LIVEKIT_URL": "http://127.0.0.1:7880", "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": SECRET}
    assert config.load(str(p), env=env) == config.load(None, env=env).__class__(
        **{**vars(config.load(None, env=env)), "source": str(p)})
    assert config.load(None, env=env).events == config.EventsConfig()
    assert config.load(None, env=env).collect == config.CollectConfig()
    # every key of the model is in the table of docs/configuration.md, with its default
    rows = dict(re.findall(r"^\| `([a-z_.\[\]]+)` \| [^|]*(?:\\\|[^|]*)* \| ([^|]+) \|", doc, re.M))
    assert rows["events.call_ttl"] == "`\"2h\"`" and rows["collect.timeout_margin"] == "`\"500ms\"`"
    assert rows["labels.max_values"] == "`50`" and rows["livekit.url"] == "none"


def test_no_default_is_written_outside_the_model():
    """load.py converts and resolves; it names no default of its own (issue: literal fallbacks)."""
    text = (ROOT / "exporter" / "livekit_exporter" / "config" / "load.py").read_text()
    source = "\n".join(line for line in text.splitlines() if not line.startswith("MAX_"))  # its own file limits
    for literal in ('"10s"', '"2m"', '"500ms"', '"10m"', '"2h"', '"5m"', '"15m"', '"30s"', "100_000", "1 << 20",
                    '"/webhook"', '"/v1/events"'):
        assert literal not in source, literal


# -- files an attacker or a mistake can hand us: bounded, and never echoed ------------------------------------

BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]" for i in range(8)]
    + ["collect: {room_detail: {max_rooms: *i}}"]
) + "\n"


@pytest.mark.parametrize("body,expected", [
    pytest.param(BILLION_LAUGHS, "once its aliases (*name) are expanded", id="billion-laughs"),
    pytest.param("[" * 20_000 + "\n", "nested too deeply", id="deep-nesting"),
    pytest.param(f"livekit:\n  url: https://lk.example.com\n  api_key: k\n  api_secret: *{SECRET}\n",
                 "an alias (*name) that no anchor (&name) defines: quote a value that starts with *",
                 id="unquoted-star-secret"),
    pytest.param(f"livekit:\n  url: https://lk.example.com\n  api_key: k\n  api_secret: &{SECRET} x\n  x: &{SECRET} y\n",
                 "not valid YAML", id="anchor-named-like-a-secret"),
])
def test_a_hostile_file_exits_2_quickly_and_echoes_nothing(tmp_path, body, expected):
    r = run_check(write(tmp_path, body))
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and SECRET not in r.stderr and "MemoryError" not in r.stderr


def test_devices_and_huge_files_are_read_only_up_to_a_bound(tmp_path):
    r = run_check(Path("/dev/zero"))
    assert r.returncode == 2 and "is larger than 1,048,576 bytes" in r.stderr and "Traceback" not in r.stderr
    p = write(tmp_path, "livekit: {url: https://lk.example.com, api_key: k, api_secret_file: /dev/zero}\n")
    r = run_check(p)
    assert r.returncode == 2 and "livekit.api_secret_file: secret file '/dev/zero' is larger than 65,536 bytes" in r.stderr


def test_a_secret_file_that_is_not_utf8_is_refused_without_a_byte_of_it(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(SECRET.encode() + b"\xff\xfe" + SECRET.encode())
    token_file = tmp_path / "tokens"
    token_file.write_bytes(b"\xc3" + SECRET.encode())
    p = write(tmp_path, f"""
        livekit: {{url: https://lk.example.com, api_key: k, api_secret_file: {secret_file}}}
        events: {{token_files: [{token_file}]}}
    """)
    r = run_check(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"secret file {str(secret_file)!r} is not UTF-8 text (byte {len(SECRET)})" in r.stderr
    assert f"secret file {str(token_file)!r} is not UTF-8 text (byte 0)" in r.stderr
    assert SECRET not in r.stderr and "\\x" not in r.stderr


async def test_a_password_in_the_livekit_url_is_shown_nowhere(aiohttp_client, make_config):
    from dataclasses import replace

    from livekit_exporter.server import build_app

    cfg = make_config()
    url = cfg.livekit.url.replace("http://", f"http://user:{SECRET}@")
    client = await aiohttp_client(build_app(replace(cfg, livekit=replace(cfg.livekit, url=url))))
    page = await (await client.get("/")).text()
    assert SECRET not in page and "http://***@127.0.0.1" in page
    # and the startup line of a real exporter
    env = {"PATH": "/usr/bin:/bin", "LIVEKIT_URL": f"http://user:{SECRET}@127.0.0.1:9",
           "LIVEKIT_API_KEY": "k", "LIVEKIT_API_SECRET": "s" * 32}
    from conftest import free_port

    proc = subprocess.Popen([sys.executable, "-m", "livekit_exporter.cli", f"--web.listen-address=127.0.0.1:{free_port()}"],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent / "exporter")
    try:
        lines = [proc.stderr.readline() for _ in range(2)]
    finally:
        proc.terminate()
        rest = proc.communicate(timeout=30)[1]
    start = [line for line in lines if "starting livekit-exporter" in line]
    assert start and "http://***@127.0.0.1:9" in start[0], lines
    assert SECRET not in "".join(lines) + rest
