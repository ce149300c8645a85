"""The monitoring mixin: generated files current, checked by promtool and amtool, rule tests complete,
every metric and label a rule reads really served, Alertmanager routes, inhibitions and templates.

The end-to-end run (real exporter -> prometheus -> alertmanager -> receiver) is test_alerting_e2e.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from pathlib import Path

import promql_parser
import pytest
import yaml

from conftest import require_binary
from livekit_exporter import metricsdoc
from livekit_exporter.mixin import DEFAULT_CONFIG, Mixin, MixinError, generate, load, stale, write
from livekit_exporter.mixin.config import seconds

ROOT = Path(__file__).parent.parent
RULE_FILES = sorted((ROOT / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((ROOT / "prometheus" / "tests").glob("*.yml"))
ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"

# Metrics that the exporter does not serve but the optional groups and Prometheus itself do.
# LiveKit server: livekit/livekit pkg/telemetry/prometheus/{quality,packets}.go (../shared/LIVEKIT.md).
# livekit-agents workers: livekit/agents/telemetry/metrics.py (lk_agents_*, label nodename).
FOREIGN = {
    "up": {"job", "instance", "agent"},
    "scrape_duration_seconds": {"job", "instance"},
    "livekit_quality_score_bucket": {"le", "node_id", "node_type"},
    "livekit_packet_loss_percent_bucket": {"le", "direction", "source", "type", "country", "node_id", "node_type"},
    "livekit_jitter_us_bucket": {"le", "direction", "source", "type", "country", "node_id", "node_type"},
    "livekit_rtt_ms_bucket": {"le", "direction", "source", "type", "country", "node_id", "node_type"},
    "lk_agents_worker_load": {"nodename", "agent"},
    "lk_agents_active_job_count": {"nodename", "agent"},
}
TARGET_LABELS = {"cluster", "namespace", "job", "project", "instance"}  # project: prometheus.projects


@pytest.fixture(scope="module")
def mixin() -> Mixin:
    return Mixin(load(ROOT / DEFAULT_CONFIG))


def rules() -> list[dict]:
    return [r for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


# -- PromQL, walked with a real parser -------------------------------------------------------------------

def selectors(expr: str) -> list[tuple[str, set[str], str | None, set[str]]]:
    """(metric, matcher labels, the enclosing aggregation's op, its by-labels) for every selector."""
    out = []

    def walk(node, agg: tuple[str | None, set[str]]) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            out.append((node.name, {m.name for m in node.matchers.matchers}, *agg))
        elif isinstance(node, promql_parser.MatrixSelector):
            walk(node.vector_selector, agg)
        elif isinstance(node, promql_parser.AggregateExpr):
            labels = set(node.modifier.labels) if node.modifier else set()
            walk(node.expr, (str(node.op), labels))
        elif isinstance(node, promql_parser.BinaryExpr):
            # by-labels name the binary expression's result, not each operand's labels
            walk(node.lhs, (agg[0], set()))
            walk(node.rhs, (agg[0], set()))
        elif isinstance(node, promql_parser.Call):
            for a in node.args:
                walk(a, agg)
        elif isinstance(node, (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)):
            walk(node.expr, agg)

    walk(promql_parser.parse(expr), (None, set()))
    return out


@pytest.fixture(scope="module")
def served() -> dict[str, set[str]]:
    """Every sample name a fully exercised demo exporter serves, with its label names."""
    text, labelnames = asyncio.run(metricsdoc._collect())
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, set()).update(s.labels)
    for name, labels in labelnames.items():  # families with no sample yet (a counter never incremented)
        out.setdefault(name, set()).update(labels)
        if name.endswith("_bucket"):
            out[name].add("le")
    return out


# -- generated, current, valid ------------------------------------------------------------------------------

def test_generated_files_are_current():
    files = generate(load(ROOT / DEFAULT_CONFIG))
    assert set(files) >= {"prometheus/prometheus.yml", "prometheus/rules/livekit.rules.yml",
                          "prometheus/rules/livekit.alerts.yml", "docs/alerts.md", "docs/runbooks.md"}
    assert stale(files, ROOT) == [], "generated files are stale: run `make rules` and commit the result"


def test_promtool_checks_config_and_rules_clean():
    promtool = require_binary("promtool")
    for args in (["check", "config", "prometheus/prometheus.yml"],
                 ["check", "rules", *map(str, RULE_FILES)]):
        run = subprocess.run([promtool, *args], cwd=ROOT, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "WARNING" not in run.stdout + run.stderr


def test_promtool_rule_tests_pass():
    promtool = require_binary("promtool")
    run = subprocess.run([promtool, "test", "rules", *map(str, RULE_TESTS)], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    assert run.stdout.count("SUCCESS") == len(RULE_TESTS)


def test_every_alert_and_tier_has_a_firing_and_a_quiet_rule_test(mixin):
    """Quiet counts only once the alert could have fired: at an eval_time past its longest `for`."""
    longest_for = {a.name: max(seconds(t.for_) for t in a.tiers) for a in mixin.alerts}
    fired: set[tuple[str, str]] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert doc["rule_files"] == ["../rules/livekit.rules.yml", "../rules/livekit.alerts.yml"]
        for test in doc["tests"]:
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    for a in case["exp_alerts"]:
                        fired.add((case["alertname"], a["exp_labels"]["severity"]))
                        assert set(a.get("exp_annotations", {})) == {"summary", "description", "runbook_url",
                                                                      "dashboard_url"}, case["alertname"]
                elif seconds(str(case["eval_time"])) > longest_for.get(case["alertname"], 0):
                    quiet.add(case["alertname"])
    tiers = {(a.name, t.severity) for a in mixin.alerts for t in a.tiers}
    assert tiers - fired == set(), "tiers no rule test fires"
    assert {a.name for a in mixin.alerts} - quiet == set(), "alerts no rule test shows quiet"
    assert fired - tiers == set(), "rule tests of alerts that do not exist"


def test_state_gauges_are_never_summed_and_their_rules_are_tested_with_two_replicas(mixin):
    """Every replica reads the same LiveKit state (and keeps the reports it received): such gauges are
    taken with max across replicas, and a rule test feeds them from two instances."""
    counters = ("_total", "_bucket", "_count", "_sum")
    job = mixin.q.jobs["exporter"]
    gauges = set()
    for rule in rules():
        for name, matchers, op, _ in selectors(rule["expr"]):
            if ":" in name or name.endswith(counters) or name in FOREIGN:
                continue
            gauges.add(name)
            assert op == "max", f"{rule.get('alert') or rule.get('record')}: {name} must be aggregated with max, not {op}"
    assert {"livekit_api_up", "livekit_rooms", "voice_agent_dependency_up", "voice_agent_campaign_running"} <= gauges
    replicas: dict[str, set[str]] = {}
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for s in test.get("input_series", []):
                m = re.fullmatch(r"(\w+)\{(.*)\}", s["series"])
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
                if labels.get("job") == job:
                    replicas.setdefault(m.group(1), set()).add(labels.get("instance", ""))
    for g in sorted(gauges):
        assert len(replicas.get(g, ())) >= 2, f"no rule test feeds {g} from two replicas"


def test_every_metric_and_label_a_rule_or_runbook_queries_is_served(mixin, served):
    records = {r["record"] for r in rules() if "record" in r}
    queries = [(r.get("alert") or r["record"], r["expr"]) for r in rules()]
    queries += [(f"runbook {a.name}", q.replace("<agent>", "x")) for a in mixin.alerts for q in a.diagnosis]
    checked = set()
    for where, expr in queries:
        for name, matchers, _, by in selectors(expr):
            if ":" in name:
                assert name in records, f"{where}: {name} is no recording rule"
                continue
            known = FOREIGN.get(name, served.get(name))
            assert known is not None, f"{where}: {name} is not served by the exporter (nor listed in FOREIGN)"
            unknown = (matchers | by) - known - TARGET_LABELS - {"le"} - {"__name__"}
            assert not unknown, f"{where}: {name} has no label {sorted(unknown)} (it has {sorted(known)})"
            checked.add(name)
    assert len(checked) > 30


def test_the_slo_bound_is_a_bucket_bound_and_a_bad_one_is_refused():
    from livekit_exporter.events.pipeline import TURN_BUCKETS

    cfg = load(ROOT / DEFAULT_CONFIG)
    assert cfg["slos"]["turn_latency"]["threshold"] in TURN_BUCKETS
    with pytest.raises(MixinError, match=r"slos.turn_latency.threshold 1.4 is not a bucket bound .*1\.5"):
        generate(load(ROOT / DEFAULT_CONFIG, {"slos.turn_latency.threshold": 1.4}))


@pytest.mark.parametrize("overrides, message", [
    ({"voice_agents.latency": {"window": "5m", "quantile": 0.95, "warning": 1.5, "for": "10m"}},
     r"voice_agents\.latency\.critical is missing"),
    ({"voice_agents.latency": {"window": "5m", "quantile": 0.95, "warning": 1.5, "critical": 3, "for": "10m",
                               "criticl": 4}}, r"unknown keys .*voice_agents\.latency\.criticl"),
    ({"livekit_api.latency.window": "5 minutes"}, r"livekit_api\.latency\.window: '5 minutes' is not a Prometheus duration"),
    ({"livekit_api.error_ratio.warning": 5}, r"livekit_api\.error_ratio\.warning: 5 is outside \[0, 1\]"),
    ({"prometheus.scrape_timeout": "30s"}, r"scrape_timeout 30s is longer than scrape_interval 15s"),
    ({"slos.burn_rates": [{"severity": "page", "long": "1h", "short": "5m", "factor": 14.4, "for": "2m"}]},
     r"slos\.burn_rates\[0\]\.severity: 'page' is not critical, warning or info"),
])
def test_a_bad_configuration_names_the_key_and_what_is_wrong(overrides, message):
    with pytest.raises(MixinError, match=message):
        generate(load(ROOT / DEFAULT_CONFIG, overrides))


@pytest.mark.parametrize("overrides, message", [
    ({"webhooks.silent.window": "0s"}, r"webhooks\.silent\.window: 0s must be longer than 0s"),
    ({"livekit_api.latency.window": "15s"}, r"livekit_api\.latency\.window: 15s is shorter than two scrape intervals \(30s\)"),
    ({"slos.budget_interval": "10m"}, r"slos\.budget_interval 10m must stay under Prometheus' 5m lookback"),
    ({"slos.call_success.objective": 0.9}, r"slos\.burn_rates\[0\]\.factor 14\.4 x the call-success error budget 0\.1 is 1\.44"),
    ({"slos.call_success.objective": 1}, r"slos\.call_success\.objective 1 must lie between 0 and 1"),
    ({"voice_agents.latency.critical": 1.0}, r"voice_agents\.latency: the critical threshold \(1\) must be above the warning one \(1\.5\)"),
    ({"voice_agents.call_success.critical": 0.97}, r"voice_agents\.call_success: the critical threshold \(0\.97\) must be below"),
    # the long-range recording rules
    ({"long_term.interval": "5m"}, r"long_term\.interval 5m must stay under Prometheus' 5m lookback"),
    ({"long_term.windows": []}, r"long_term\.windows: expected a non-empty list"),
    ({"long_term.windows": ["5m", "10s"]}, r"long_term\.windows\[1\]: 10s is shorter than long_term\.interval 1m"),
    ({"long_term.windows": ["an hour"]}, r"long_term\.windows\[0\]: 'an hour' is not a Prometheus duration"),
    ({"long_term.keep": ["up", "my-metric"]}, r"long_term\.keep: 'my-metric' is not a metric name"),
])
def test_values_that_would_make_a_dead_or_broken_rule_are_refused(overrides, message):
    with pytest.raises(MixinError, match=message):
        generate(load(ROOT / DEFAULT_CONFIG, overrides))


def test_label_values_and_job_names_with_regex_and_quote_characters_make_valid_rules(tmp_path):
    """Outcomes like no-answer or booked.v2 are escaped for RE2 inside a PromQL string; promtool loads them."""
    promtool = require_binary("promtool")
    files = generate(load(ROOT / DEFAULT_CONFIG, {
        "voice_agents.failed_outcomes": ["no-answer", "failed (hard)", 'q"uote', "back\\slash"],
        "campaigns.converted_outcomes": ["booked.v2", "a+b"],
        "telephony.sip_unanswered_reasons": ["user-busy", "user_rejected"],
        "jobs.exporter": 'my "exporter"',
    }))
    write(files, tmp_path)
    run = subprocess.run([promtool, "check", "rules", *map(str, (tmp_path / "prometheus" / "rules").glob("*.yml"))],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    expr = next(r["expr"] for g in yaml.safe_load(files["prometheus/rules/livekit.rules.yml"])["groups"]
                for r in g["rules"] if r["record"] == "agent:voice_agent_calls_success:ratio_rate1h")
    values = {}

    def walk(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            values.update({m.name: m.value for m in node.matchers.matchers})
        for child in ("lhs", "rhs", "expr", "vector_selector"):
            if hasattr(node, child):
                walk(getattr(node, child))
        for arg in getattr(node, "args", None) or []:
            walk(arg)

    walk(promql_parser.parse(expr))
    assert values["job"] == 'my "exporter"'
    for outcome in ("no-answer", "failed (hard)", 'q"uote', "back\\slash"):
        assert re.fullmatch(values["outcome"], outcome), (values["outcome"], outcome)
    for other in ("no_answer", "failed hard", "failed (hard)x", "backslash"):
        assert not re.fullmatch(values["outcome"], other), other


def test_a_changed_threshold_reaches_the_rule_and_the_docs():
    files = generate(load(ROOT / DEFAULT_CONFIG, {"voice_agents.latency.warning": 1.2}))
    alerts = yaml.safe_load(files["prometheus/rules/livekit.alerts.yml"])
    tiers = [r for g in alerts["groups"] for r in g["rules"] if r["alert"] == "LiveKitVoiceAgentLatencyHigh"]
    warning = next(r for r in tiers if r["labels"]["severity"] == "warning")
    assert warning["expr"] == "agent:voice_agent_turn_latency_seconds:p95_5m > 1.2"
    assert "above 1.2 s" in warning["annotations"]["description"]
    assert "| warning | p95 > 1.2 s | 10m | `voice_agents.latency.warning` |" in files["docs/alerts.md"]


def test_prometheus_yml_scrapes_the_exporter_with_its_timeout_and_loads_the_rules():
    cfg = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    mixin_cfg = yaml.safe_load((ROOT / DEFAULT_CONFIG).read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    exporter = jobs[mixin_cfg["jobs"]["exporter"]]
    assert exporter["scrape_timeout"] == mixin_cfg["prometheus"]["scrape_timeout"]
    # the exporter honours the header up to collect.max_scrape_timeout (2m by default)
    assert seconds(exporter["scrape_timeout"]) <= 120
    assert mixin_cfg["jobs"]["livekit_server"] in jobs
    assert cfg["rule_files"] == ["rules/*.yml"]
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == mixin_cfg["prometheus"]["alertmanagers"]


def test_runbooks_have_every_section_the_alerts_link_to(mixin):
    text = (ROOT / "docs" / "runbooks.md").read_text()
    alerts_md = (ROOT / "docs" / "alerts.md").read_text()
    for rule in rules():
        if "alert" not in rule:
            continue
        name = rule["alert"]
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower()  # GitHub's anchor of "## Name"
        section = text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("**Meaning.**", "**Impact.**", "**Diagnosis.**", "**Fix.**"):
            assert part in section, (name, part)
        assert "\n- `" in section  # at least one query to run
        assert f"[{name}](runbooks.md#{anchor})" in alerts_md
        uid = rule["annotations"]["dashboard_url"].rsplit("/d/", 1)[1].split("?")[0]
        assert uid in mixin.dashboards.values()


# -- Alertmanager ----------------------------------------------------------------------------------------------

def amtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_binary("amtool"), *args], cwd=ROOT, capture_output=True, text=True)


def test_amtool_check_config_is_clean():
    run = amtool("check-config", str(ALERTMANAGER))
    assert run.returncode == 0 and "SUCCESS" in run.stdout, run.stdout + run.stderr


@pytest.mark.parametrize("labels, receiver", [
    (["severity=critical", "alertname=LiveKitApiServiceDown"], "critical"),
    (["severity=warning", "alertname=LiveKitVoiceAgentLatencyHigh"], "slack"),
    (["severity=info", "alertname=LiveKitExporterTimingsDiscarded"], "null"),
    (["alertname=SomethingElse"], "default-webhook"),
    (["severity=page", "alertname=SomethingElse"], "default-webhook"),
])
def test_amtool_routes_each_severity_to_its_receiver(labels, receiver):
    run = amtool("config", "routes", "test", f"--config.file={ALERTMANAGER}", f"--verify.receivers={receiver}", *labels)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == receiver


def test_every_severity_of_the_bundle_has_a_route(mixin):
    am = yaml.safe_load(ALERTMANAGER.read_text())
    routed = {m for r in am["route"]["routes"] for m in r["matchers"]}
    for sev in {t.severity for a in mixin.alerts for t in a.tiers}:
        assert f'severity="{sev}"' in routed


SECRETISH = re.compile(r"password|secret|token|api_key|routing_key|service_key|credentials|api_url|bot_token", re.I)


def test_no_secret_is_inline_in_the_alertmanager_config():
    """Every key that can hold a secret is a *_file; no URL carries a query string or user info."""
    am = yaml.safe_load(ALERTMANAGER.read_text())
    found = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if SECRETISH.search(k) and not k.endswith("_file"):
                    found.append(f"{path}.{k}")
                if k == "url" or k.endswith("_url"):
                    assert "?" not in str(v) and "@" not in str(v).split("//", 1)[-1], f"{path}.{k}: {v}"
                walk(v, f"{path}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    walk(am, "")
    assert found == [], f"secrets written inline: {found}"
    assert am["global"]["smtp_auth_password_file"] and am["global"]["slack_api_url_file"]
    for r in am["receivers"]:
        for w in r.get("webhook_configs", []):
            assert "credentials_file" in w["http_config"]["authorization"]


def test_inhibitions_name_real_alerts_and_components_and_fire_first(mixin):
    am = yaml.safe_load(ALERTMANAGER.read_text())
    by_name = {a.name: a for a in mixin.alerts}
    components = {a.component for a in mixin.alerts}
    longest_for = {a.name: max(seconds(t.for_) for t in a.tiers) for a in mixin.alerts}
    shortest_for = {a.name: min(seconds(t.for_) for t in a.tiers) for a in mixin.alerts}

    def selected(matcher: str) -> set[str]:
        key, op, value = re.fullmatch(r'(\w+)(=~|=)"(.*)"', matcher).groups()
        values = set(value.split("|")) if op == "=~" else {value}
        if key == "alertname":
            assert values <= set(by_name), values - set(by_name)
            return values
        if key == "component":
            assert values <= components | {"agent_workers", "media_quality"}, values - components
            return {a.name for a in mixin.alerts if a.component in values}
        assert key == "severity"
        return {a.name for a in mixin.alerts if any(t.severity in values for t in a.tiers)}

    recorded = {r["record"]: r["expr"] for r in rules() if "record" in r}

    def metrics(expr: str) -> set[str]:
        """The raw metrics an expression reads, through recording rules."""
        out = set()
        for name, *_ in selectors(expr):
            out |= metrics(recorded[name]) if name in recorded else {name}
        return out

    from livekit_exporter.mixin.rules import INHIBITORS

    # `up` as a guard (events(): "was the target scraped a window ago") is not what an alert is about
    reads = {a.name: (m - {"up"}) or m for a in mixin.alerts
             for m in [set().union(*(metrics(t.expr) for t in a.tiers))]}
    named_sources = {m.split('"')[1] for r in am["inhibit_rules"] for m in r["source_matchers"] if m.startswith("alertname=")}
    assert named_sources == set(INHIBITORS)
    for rule in rules():
        if rule.get("alert") in INHIBITORS:
            assert rule["keep_firing_for"] == "5m", rule["alert"]
    checked = 0
    for rule in am["inhibit_rules"]:
        sources = set.intersection(*(selected(m) for m in rule["source_matchers"]))
        targets = set.intersection(*(selected(m) for m in rule["target_matchers"])) - sources
        assert sources and targets, rule
        if rule["source_matchers"][0].startswith("alertname"):
            # Inhibition acts on firing alerts only: a cause must fire no later than the symptoms
            # that read the same metrics (a symptom with its own data fires on its own terms).
            (source,) = sources
            for t in targets:
                if reads[t] & reads[source]:
                    assert longest_for[source] <= shortest_for[t], (source, t)
                    checked += 1
    assert checked >= 5


def test_amtool_renders_every_template_with_a_realistic_alert(mixin, tmp_path):
    alert = next(r for r in rules() if r.get("alert") == "LiveKitVoiceAgentLatencyHigh")
    labels = {"alertname": alert["alert"], **alert["labels"], "job": "livekit-exporter", "agent": "support-agent"}
    annotations = {**alert["annotations"],
                   "description": alert["annotations"]["description"].replace("{{ $labels.agent }}", "support-agent")
                   .replace("{{ $value | humanizeDuration }}", "2.1s")}
    data = {
        "receiver": "slack", "status": "firing", "externalURL": "http://alertmanager.example:9093",
        "groupLabels": {"alertname": alert["alert"]}, "commonLabels": labels, "commonAnnotations": annotations,
        "alerts": [{"status": "firing", "labels": labels, "annotations": annotations,
                    "startsAt": "2026-12-01T20:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                    "generatorURL": "http://prometheus.example:9090/graph?g0.expr=x", "fingerprint": "1"}],
    }
    (tmp_path / "alert.json").write_text(json.dumps(data))
    tmpl = (ROOT / "alertmanager" / "templates" / "livekit.tmpl").read_text()
    names = re.findall(r'\{\{ define "([\w.]+)"', tmpl)
    assert {"slack.livekit.title", "slack.livekit.text", "email.livekit.subject", "email.livekit.html",
            "email.livekit.text", "livekit.silence_url"} <= set(names)
    for name in names:
        run = amtool("template", "render", "--template.glob=alertmanager/templates/*.tmpl",
                     f"--template.text={{{{ template \"{name}\" . }}}}", f"--template.data={tmp_path / 'alert.json'}")
        assert run.returncode == 0, (name, run.stderr)
        out = run.stdout
        assert out.strip(), name
        if name in ("slack.livekit.text", "email.livekit.text", "email.livekit.html"):
            for must in ("support-agent", "2.1s", alert["annotations"]["runbook_url"],
                         alert["annotations"]["dashboard_url"], "http://prometheus.example:9090/graph",
                         "http://alertmanager.example:9093/#/silences/new?filter=%7Balertname%3D%22LiveKitVoiceAgentLatencyHigh%22"):
                assert must in out, (name, must)
        if name.endswith("title") or name.endswith("subject"):
            assert out == "[FIRING:1] LiveKitVoiceAgentLatencyHigh (warning)"


# -- long-term storage: remote_write and the long-range recording rules ------------------------------------

REMOTE = {"url": "https://mimir.example.com/api/v1/push", "name": "mimir",
          "basic_auth": {"username": "livekit", "password_file": "/etc/prometheus/secrets/mimir-password"}}


def test_remote_write_is_off_by_default_and_renders_with_secrets_from_files_only(tmp_path):
    promtool = require_binary("promtool")
    assert "remote_write" not in yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    files = generate(load(ROOT / DEFAULT_CONFIG, {"prometheus.remote_write": [
        REMOTE, {"url": "http://store:9090/api/v1/write", "bearer_token_file": "/run/secrets/token",
                 "long_term_only": False}]}))
    cfg = yaml.safe_load(files["prometheus/prometheus.yml"])
    mimir, store = cfg["remote_write"]
    assert mimir["url"] == REMOTE["url"] and mimir["name"] == "mimir" and mimir["basic_auth"] == REMOTE["basic_auth"]
    (keep,) = mimir["write_relabel_configs"]
    assert keep["action"] == "keep" and keep["source_labels"] == ["__name__"]
    regex = re.compile(keep["regex"])
    long_term = yaml.safe_load((ROOT / DEFAULT_CONFIG).read_text())["long_term"]["keep"]
    recorded = {r["record"] for r in rules() if "record" in r}
    assert all(regex.fullmatch(n) for n in [*long_term, *recorded])
    assert not any(regex.fullmatch(n) for n in ("voice_agent_turn_latency_seconds_bucket", "scrape_duration_seconds",
                                                "livekit_room_participants", "livekit_exporter_events_total"))
    assert store == {"url": "http://store:9090/api/v1/write",
                     "authorization": {"type": "Bearer", "credentials_file": "/run/secrets/token"}}
    # a family served raw to long-term storage has no histogram bucket nor a per-room label
    assert not [n for n in long_term if n.endswith(("_bucket", "_sum", "_count"))]
    write(files, tmp_path)
    run = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus" / "prometheus.yml")],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("entry, message", [
    ({"url": "https://m/api/v1/push", "basic_auth": {"username": "u", "password": "hunter2"}},
     r"remote_write\[0\]: basic_auth\.password would put a secret in prometheus\.yml; use basic_auth\.password_file"),
    ({"url": "https://m/api/v1/push", "bearer_token": "t0ken"}, r"bearer_token would put a secret in prometheus\.yml"),
    ({"url": "https://m/api/v1/push", "headers": {"X-Scope-OrgID": "a"}}, r"headers would put a secret"),
    ({"url": "https://user:pw@m/api/v1/push"}, r"remote_write\[0\]\.url: credentials in the URL"),
    ({"url": "mimir:9009"}, r"remote_write\[0\]\.url: 'mimir:9009' is not an http\(s\) URL"),
    ({"url": "https://m/api/v1/push", "queue": {}}, r"remote_write\[0\]: unknown key queue"),
    ({"url": "https://m/api/v1/push", "long_term_only": "yes"}, r"long_term_only: 'yes' is not true or false"),
    ({"url": "https://m/api/v1/push", "basic_auth": {"username": "u", "password_file": "/p"},
      "bearer_token_file": "/t"}, r"basic_auth and bearer_token_file exclude each other"),
])
def test_a_bad_remote_write_names_the_entry_and_what_to_do(entry, message):
    with pytest.raises(MixinError, match=message):
        generate(load(ROOT / DEFAULT_CONFIG, {"prometheus.remote_write": [entry]}))
    for secret in ("hunter2", "t0ken", ":pw@"):  # never echoed back
        try:
            generate(load(ROOT / DEFAULT_CONFIG, {"prometheus.remote_write": [entry]}))
        except MixinError as e:
            assert secret not in str(e)


def test_long_range_rules_record_every_lifecycle_counter_and_latency_quantile_per_window(mixin):
    cfg = yaml.safe_load((ROOT / DEFAULT_CONFIG).read_text())
    groups = {g["name"]: g for g in yaml.safe_load((ROOT / "prometheus" / "rules" / "livekit.rules.yml").read_text())["groups"]}
    long_range = groups["livekit-long-term.rules"]
    assert long_range["interval"] == cfg["long_term"]["interval"]
    records = {r["record"] for g in groups.values() for r in g["rules"]}
    all_records = [r["record"] for g in groups.values() for r in g["rules"] if "slo" not in r.get("labels", {})]
    assert len(all_records) == len(set(all_records)), "a series recorded by two rules"
    for window in cfg["long_term"]["windows"]:
        for metric, labels in Mixin.LONG_TERM_RATES:
            assert f"{'_'.join(labels) or 'job'}:{metric.removesuffix('_total')}:rate{window}" in records
        for q in cfg["voice_agents"]["latency_quantiles"]:
            assert f"agent:voice_agent_turn_latency_seconds:p{str(q)[2:].ljust(2, '0')}_{window}" in records
    # the SLO ratios long ranges read are recorded (the budget's period and the burn-rate windows)
    for window in (cfg["slos"]["period"], "1h", "1d"):
        assert f"slo:sli_error:ratio_rate{window}" in records
