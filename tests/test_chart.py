"""The Helm chart (charts/livekit-exporter): lint and render with Helm's own Go SDK, every object
validated (Kubernetes' schemas, prometheus-operator's CRD models, promtool), the rules and dashboards
it carries identical to the bundle's, its config.yml accepted by the exporter's own check, and the
properties a kube-prometheus-stack user relies on (job label, sidecar labels, security, probes).

No cluster and no helm binary: helm-python-sdk binds Helm's Go SDK (lint, render, schema).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import helm_python as helm  # the test extra: helm-python-sdk, kubernetes-validate, cloudcoil-models-prometheus-operator
import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

from conftest import require_binary
from livekit_exporter import __version__
from livekit_exporter.mixin import DEFAULT_CONFIG, MixinError, generate, load, stale
from livekit_exporter.mixin.chart import CHART, MANAGED, chart_files, config_schema, leaves, values_docs

ROOT = Path(__file__).parent.parent
CHART_DIR = ROOT / CHART
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
MIXIN = yaml.safe_load((ROOT / DEFAULT_CONFIG).read_text())
SECRET_DIR = "/etc/livekit-exporter/secrets"
NAMESPACE = "monitoring"
# The oldest Kubernetes Chart.yaml's kubeVersion admits, and the newest kubernetes-validate bundles.
K8S_VERSIONS = ("1.25.0", kubernetes_validate.latest_version())
# What tests write into an existingSecret: the keys the chart's README documents.
EXISTING_SECRET_DATA = {
    "api-key": "APIexisting",
    "api-secret": "existing-secret-0123456789abcdef0123456789",
    "webhook-api-secret-0": "old-webhook-secret-0123456789abcdef",
    "webhook-api-secret-1": "new-webhook-secret-0123456789abcdef",
    "events-tokens": "existing-events-token-0123456789\nexisting-events-token-abcdefghij\n",
}


def ci_values(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text()) or {}


KUBE_GATE = ".Capabilities.KubeVersion.Version"
_KUBE_COPIES = Path(tempfile.mkdtemp(prefix="livekit-exporter-chart-"))


@cache
def chart_for_kube(version: str | None) -> Path:
    """The chart, or a copy whose templates see this Kubernetes version: the SDK's render has no --kube-version
    (it renders for its own default), so the copy puts the version where the templates read it."""
    if version is None:
        return CHART_DIR
    copy = _KUBE_COPIES / version / CHART_DIR.name
    shutil.copytree(CHART_DIR, copy)
    for t in (copy / "templates").iterdir():
        t.write_text(re.sub(r"\$?" + re.escape(KUBE_GATE), f'"v{version}"', t.read_text()))
    return copy


@cache
def _render(values_json: str, name: str, namespace: str, kube: str | None) -> tuple[tuple[str, str], ...]:
    with helm.Chart.load(chart_for_kube(kube)) as chart:
        return tuple(sorted(chart.render(json.loads(values_json), name=name, namespace=namespace).items()))


def render(values: dict[str, Any] | None = None, name: str = "lk", namespace: str = NAMESPACE,
           kube: str | None = None) -> dict[str, str]:
    """{template path: text} of a render with these values (cached: renders are pure)."""
    return dict(_render(json.dumps(values or {}, sort_keys=True), name, namespace, kube))


def objects(values: dict[str, Any] | None = None, name: str = "lk", namespace: str = NAMESPACE,
            kube: str | None = None) -> list[dict[str, Any]]:
    out = []
    for path, text in render(values, name, namespace, kube).items():
        if path.endswith("NOTES.txt"):
            continue
        out += [doc for doc in yaml.safe_load_all(text) if doc]
    return out


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def kinds(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def container(objs: list[dict]) -> dict:
    (c,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return c


def bundle_groups() -> list[dict]:
    return [g for f in ("livekit.rules.yml", "livekit.alerts.yml")
            for g in yaml.safe_load((ROOT / "prometheus" / "rules" / f).read_text())["groups"]]


ids = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]


def test_the_ci_values_files_exist():
    assert set(ids) >= {"default", "existing-secret", "ingress-on", "several-replicas", "dashboards-off"}


# -- 1. lint and render ------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", CI_VALUES, ids=ids)
def test_every_ci_values_file_lints_clean_and_renders(path):
    report = helm.lint(CHART_DIR, values=ci_values(path), strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    assert report["total_charts_linted"] == 1
    # severity 2 = warning, 3 = error, 1 = info (advice): the only one left is the icon, as the project has none
    assert [m for m in report["messages"] if m["severity"] >= 2] == [], report["messages"]
    assert [m["error"] for m in report["messages"]] == ["icon is recommended"], report["messages"]
    objs = objects(ci_values(path))
    assert {"Deployment", "Service", "ConfigMap"} <= {o["kind"] for o in objs}


# -- 2. every object valid ---------------------------------------------------------------------------------

def _roundtrip(model, obj: dict) -> dict:
    return model.model_validate(obj).model_dump(mode="json", by_alias=True, exclude_none=True)


@pytest.mark.parametrize("path", CI_VALUES, ids=ids)
def test_every_rendered_object_validates(path):
    """Rendered for each Kubernetes version (the templates gate fields on it), validated against that version."""
    crds = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}
    for version in K8S_VERSIONS:
        for obj in objects(ci_values(path), kube=version):
            if obj["kind"] in crds:
                # the models accept unknown fields, so the round trip is the check: a field they do not know is dropped
                assert _roundtrip(crds[obj["kind"]], obj) == obj, f"{obj['kind']}: fields prometheus-operator does not know"
            else:
                kubernetes_validate.validate(obj, version, strict=True)
        lint = helm.lint(CHART_DIR, values=ci_values(path), strict=True, namespace=NAMESPACE, kube_version=version)
        assert lint["errors"] == [] and [m for m in lint["messages"] if m["severity"] >= 2] == [], lint


def test_fields_newer_than_kubernetes_1_25_are_rendered_only_where_they_exist():
    """unhealthyPodEvictionPolicy (PDB) and matchLabelKeys (topology spread) are 1.27's: a 1.25 cluster gets neither."""
    values = {"replicas": 2}
    assert KUBE_GATE in (CHART_DIR / "templates" / "pdb.yaml").read_text()  # the copies' substitution has a target
    old, new = objects(values, kube="1.25.0"), objects(values, kube=K8S_VERSIONS[-1])
    assert "unhealthyPodEvictionPolicy" not in one(old, "PodDisruptionBudget")["spec"]
    assert one(new, "PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    (old_tsc,) = one(old, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    (new_tsc,) = one(new, "Deployment")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "matchLabelKeys" not in old_tsc and new_tsc["matchLabelKeys"] == ["pod-template-hash"]
    # the default render (the SDK's own Kubernetes version, newer than 1.27) has them too
    assert one(objects(values), "PodDisruptionBudget")["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_the_validation_refuses_what_it_should():
    """The two checks above can fail: an unknown field of a Deployment and of a ServiceMonitor."""
    objs = objects(ci_values(CHART_DIR / "ci" / "several-replicas-values.yaml"))
    deployment = json.loads(json.dumps(one(objs, "Deployment")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    sm = json.loads(json.dumps(one(objs, "ServiceMonitor")))
    sm["spec"]["endpoints"][0]["scrape_timeout"] = "10s"
    assert _roundtrip(ServiceMonitor, sm) != sm


def test_the_prometheus_rule_holds_the_bundles_rules_exactly_and_promtool_passes_them(tmp_path):
    promtool = require_binary("promtool")
    rule = one(objects(), "PrometheusRule")
    groups = rule["spec"]["groups"]
    assert groups == bundle_groups()
    # the annotations' Prometheus templates reach Prometheus unevaluated
    annotations = [v for g in groups for r in g["rules"] for v in r.get("annotations", {}).values()]
    assert any("{{ $value" in a for a in annotations)
    assert any("{{ $labels." in a for a in annotations)
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    run = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "WARNING" not in run.stdout + run.stderr
    n = sum(len(g["rules"]) for g in groups)
    assert f"SUCCESS: {n} rules found" in run.stdout


def test_the_alerts_dashboard_links_can_point_at_your_grafana():
    groups = one(objects({"prometheusRule": {"grafanaUrl": "https://grafana.example.com/"}}), "PrometheusRule")["spec"]["groups"]
    bundle = bundle_groups()
    links = 0
    for g, b in zip(groups, bundle, strict=True):
        for r, br in zip(g["rules"], b["rules"], strict=True):
            url = r.get("annotations", {}).get("dashboard_url")
            if url:
                base, _, rest = br["annotations"]["dashboard_url"].partition("/d/")
                assert base == MIXIN["links"]["grafana_url"]
                assert url == f"https://grafana.example.com/d/{rest}"
                r["annotations"]["dashboard_url"] = br["annotations"]["dashboard_url"]
                links += 1
            assert r == br
    assert links > 20


# -- 3. dashboards -----------------------------------------------------------------------------------------

def dashboard_maps(objs: list[dict], label: str = "grafana_dashboard") -> list[dict]:
    return [o for o in kinds(objs, "ConfigMap") if label in o["metadata"].get("labels", {})]


def test_the_dashboard_configmaps_hold_the_bundles_dashboards_byte_for_byte():
    maps = dashboard_maps(objects())
    bundle = {p.name: p.read_text(encoding="utf-8") for p in sorted((ROOT / "grafana" / "dashboards").glob("*.json"))}
    assert len(bundle) >= 7
    carried = {}
    for cm in maps:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "LiveKit"}
        (name, text), = cm["data"].items()
        carried[name] = text
        board = json.loads(text)
        # kube-prometheus-stack's Prometheus datasource is picked through the datasource variable
        assert {"name": "datasource", "type": "datasource", "query": "prometheus"}.items() <= next(
            v for v in board["templating"]["list"] if v["name"] == "datasource").items()
    assert carried == bundle


def test_the_sidecar_label_and_folder_annotation_are_configurable_and_dashboards_can_be_off():
    objs = objects({"dashboards": {"label": "my_dashboards", "labelValue": "yes",
                                   "folderAnnotation": "k8s-sidecar-target-directory", "folder": "/tmp/dashboards/LiveKit"}})
    maps = dashboard_maps(objs, "my_dashboards")
    assert len(maps) == len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    assert all(m["metadata"]["labels"]["my_dashboards"] == "yes" and "grafana_dashboard" not in m["metadata"]["labels"]
               for m in maps)
    assert all(m["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "/tmp/dashboards/LiveKit"} for m in maps)
    off = objects(ci_values(CHART_DIR / "ci" / "dashboards-off-values.yaml"))
    assert dashboard_maps(off) == []
    assert kinds(off, "PrometheusRule") == []
    assert [o["kind"] for o in kinds(off, "ConfigMap")] == ["ConfigMap"]  # config.yml only
    assert len(kinds(off, "ServiceMonitor")) == 1
    assert kinds(objects({"serviceMonitor": {"enabled": False}}), "ServiceMonitor") == []


# -- 4. the carried files are generated ---------------------------------------------------------------------

def test_the_charts_carried_files_are_the_bundles_generated_by_the_same_step():
    files = generate(load(ROOT / DEFAULT_CONFIG))
    ours = chart_files(files)
    assert {k for k in files if k.startswith(CHART + "/")} == set(ours)
    assert stale(ours, ROOT) == [], "the chart's generated files are stale: run `make rules` and commit the result"
    pairs = {"prometheus/rules/": "files/rules/", "grafana/dashboards/": "files/dashboards/"}
    expected = {f"{CHART}/{into}{rel.removeprefix(src)}": rel
                for rel in files for src, into in pairs.items() if rel.startswith(src) and rel.count("/") == 2}
    bundle = f"{CHART}/files/bundle.json"
    assert {k for k in ours if "/files/" in k} == {*expected, bundle}
    for carried, source in expected.items():
        assert ours[carried] == files[source]
        assert (ROOT / carried).read_bytes() == (ROOT / source).read_bytes()
    on_disk = {str(p.relative_to(ROOT)) for p in (CHART_DIR / "files").rglob("*") if p.is_file()}
    assert on_disk == {*expected, bundle}, "files/ holds a file generate() does not write"
    # what the ServiceMonitor must share with the rules: the mixin's exporter job and scrape timings
    assert json.loads(ours[bundle]) == {"job": MIXIN["jobs"]["exporter"],
                                        "interval": MIXIN["prometheus"]["scrape_interval"],
                                        "scrapeTimeout": MIXIN["prometheus"]["scrape_timeout"]}
    assert f"{CHART}/values.schema.json" in ours  # its config part is generated (test_the_config_schema_...)


def test_another_exporter_job_name_is_set_in_the_mixin_and_reaches_the_service_monitor_and_every_rule(tmp_path):
    """jobs.exporter in prometheus/mixin.yml is the one knob: regenerated, the chart scrapes and selects that job."""
    files = generate(load(ROOT / DEFAULT_CONFIG, {"jobs.exporter": "lk-metrics"}))
    chart = tmp_path / CHART_DIR.name
    shutil.copytree(CHART_DIR, chart)
    for rel, text in files.items():
        if rel.startswith(CHART + "/"):
            (chart / rel.removeprefix(CHART + "/")).write_text(text)
    with helm.Chart.load(chart) as c:
        rendered = c.render({}, name="prod", namespace=NAMESPACE)
    objs = [d for p, t in rendered.items() if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
    assert scraped_job(objs) == "lk-metrics"
    exprs = [r["expr"] for g in one(objs, "PrometheusRule")["spec"]["groups"] for r in g["rules"]]
    exporter_jobs = {j for e in exprs for j in re.findall(r'job="([^"]+)"', e)} - {
        MIXIN["jobs"][k] for k in MIXIN["jobs"] if k != "exporter"}
    assert exporter_jobs == {"lk-metrics"}
    assert 'job="lk-metrics"' in rendered["livekit-exporter/templates/NOTES.txt"]


def test_chart_yaml_is_generated_with_the_packages_version():
    meta = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["type"] == "application" and meta["version"] == "0.1.0"
    assert meta["appVersion"] == __version__
    with helm.Chart.load(CHART_DIR) as chart:
        assert chart.metadata["appVersion"] == __version__


# -- 5. the schema refuses typos and wrong types ---------------------------------------------------------

@pytest.mark.parametrize("values, named", [
    ({"replicas": "two"}, "replicas"),
    ({"replica": 3}, "replica"),
    ({"serviceMonitor": {"intervall": "30s"}}, "intervall"),
    ({"ingress": {"enabled": "yes"}}, "enabled"),
    ({"livekit": {"url": "livekit.example.com"}}, "url"),
    ({"events": {"tokens": ["short"]}}, "tokens"),
    ({"service": {"sessionAffinity": "Sticky"}}, "sessionAffinity"),
    ({"ingress": {"enabled": True, "hosts": []}}, "hosts"),
    ({"prometheusRule": {"grafanaUrl": "grafana.example.com"}}, "grafanaUrl"),
    # the exporter's own config schema (schemas/config.schema.json), generated into values.schema.json
    ({"config": {"colect": {"services": ["room"]}}}, "colect"),
    ({"config": {"webhooks": {"path": "hooks"}}}, "/config/webhooks/path"),
    ({"config": {"collect": {"room_detail": {"max_rooms": 0}}}}, "max_rooms"),
    ({"config": {"events": {"enabled": "yes"}}}, "/config/events/enabled"),
    # the job name is the bundle's (prometheus/mixin.yml), not a value
    ({"serviceMonitor": {"jobName": "other"}}, "jobName"),
    ({"serviceMonitor": {"interval": "15"}}, "interval"),
    ({"podDisruptionBudget": {"maxUnavailable": 0}}, "maxUnavailable"),
    ({"image": {"digest": "latest"}}, "digest"),
    ({"serviceMonitor": {"scheme": "ftp"}}, "scheme"),
])
def test_a_values_file_that_breaks_the_schema_is_refused_naming_the_key(values, named):
    report = helm.lint(CHART_DIR, values=values, strict=True, namespace=NAMESPACE)
    problems = " ".join(report["errors"] + [m["error"] for m in report["messages"] if m["severity"] >= 2])
    assert named in problems, report
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmError, match=re.escape(named)):
        chart.render(values, name="lk", namespace=NAMESPACE)


@pytest.mark.parametrize("values, message", [
    ({"livekit": {"url": "https://lk.example.com"}}, "livekit.url is set but the LiveKit credentials are not"),
    ({"livekit": {"url": "https://lk.example.com", "apiKey": "APIx"}}, "livekit.url is set but the LiveKit credentials"),
    ({"existingSecret": "s", "livekit": {"apiSecret": "x"}}, "leave livekit.apiKey and livekit.apiSecret empty"),
    ({"livekit": {"apiKey": "APIx", "apiSecret": "y"}, "webhooks": {"keys": [{"apiKey": "APIw"}]}},
     r"webhooks.keys\[0\] \(APIw\) has no apiSecret"),
    ({"config": {"livekit": {"api_secret": "inline"}}}, "config.livekit: put no credentials in config"),
    ({"events": {"existingSecretTokens": True}}, "events.existingSecretTokens is set without existingSecret"),
    ({"config": {"webhooks": {"keys": [{"api_key": "k", "api_secret": "s"}]}}}, "config.webhooks.keys: set webhooks.keys"),
    ({"config": {"events": {"tokens": ["t" * 20]}}}, "config.events.tokens: set events.tokens instead"),
    ({"config": {"events": {"token_files": ["/x"]}}}, "config.events.token_files: set events.tokens"),
    ({"config": {"livekit": {"url": "https://lk.example.com"}}}, "config.livekit.url: set livekit.url instead"),
    ({"serviceMonitor": {"interval": "30s", "scrapeTimeout": "1m"}},
     r"serviceMonitor.scrapeTimeout \(1m\) is longer than serviceMonitor.interval \(30s\)"),
    ({"serviceMonitor": {"interval": "1m", "scrapeTimeout": "1m30s"}}, r"scrapeTimeout \(1m30s\) is longer"),
    ({"serviceMonitor": {"interval": "5s"}}, r"scrapeTimeout \(10s\) is longer than serviceMonitor.interval \(5s\)"),
    ({"serviceMonitor": {"scrapeTimeout": "15001ms"}}, r"scrapeTimeout \(15001ms\) is longer"),
    ({"extraArgs": ["--web.config.file=/etc/web.yml"]}, "extraArgs: --web.config.file is set by the chart; use webConfig.existingSecret"),
    ({"extraArgs": ["--web.listen-address=:9000"]}, "extraArgs: --web.listen-address is set by the chart; use service.port"),
    ({"extraArgs": ["--web.telemetry-path", "/m"]}, "extraArgs: --web.telemetry-path is set by the chart"),
    ({"extraArgs": ["--config.file=/x.yml"]}, "extraArgs: --config.file is set by the chart; use config"),
    ({"podLabels": {"app.kubernetes.io/instance": "other"}}, "podLabels.app.kubernetes.io/instance: a selector label"),
    ({"podLabels": {"app.kubernetes.io/name": "other"}}, "podLabels.app.kubernetes.io/name: a selector label"),
    ({"autoscaling": {"enabled": True, "minReplicas": 4, "maxReplicas": 3}},
     r"autoscaling.minReplicas \(4\) is greater than autoscaling.maxReplicas \(3\)"),
    ({"lifecycle": {"preStopSleepSeconds": 30}}, "lifecycle.preStopSleepSeconds .30. must be shorter than terminationGracePeriodSeconds .30."),
])
def test_values_that_cannot_make_a_working_exporter_fail_with_a_clear_message(values, message):
    with helm.Chart.load(CHART_DIR) as chart, pytest.raises(helm.HelmError, match=message):
        chart.render(values, name="lk", namespace=NAMESPACE)


@pytest.mark.parametrize("timing", [{"interval": "1m30s", "scrapeTimeout": "90s"}, {"interval": "1m", "scrapeTimeout": "59s"},
                                    {"interval": "2m", "scrapeTimeout": "1m"}, {"interval": "1s", "scrapeTimeout": "500ms"}])
def test_a_scrape_timeout_at_most_the_interval_is_accepted(timing):
    (ep,) = one(objects({"serviceMonitor": timing}), "ServiceMonitor")["spec"]["endpoints"]
    assert (ep["interval"], ep["scrapeTimeout"]) == (timing["interval"], timing["scrapeTimeout"])


def test_a_default_install_renders_and_its_notes_say_what_is_missing():
    notes = render()["livekit-exporter/templates/NOTES.txt"]
    assert "MISSING: livekit.url is not set" in notes
    assert "MISSING: no LiveKit API key pair" in notes
    assert "/webhook" in notes and "/metrics" in notes and "serviceMonitor.additionalLabels.release" in notes
    complete = render(ci_values(CHART_DIR / "ci" / "several-replicas-values.yaml"))["livekit-exporter/templates/NOTES.txt"]
    assert "MISSING" not in complete
    existing = render(ci_values(CHART_DIR / "ci" / "existing-secret-values.yaml"))["livekit-exporter/templates/NOTES.txt"]
    assert "must hold the keys: api-key, api-secret, webhook-api-secret-0, webhook-api-secret-1, events-tokens" in existing
    assert "(set: release=kube-prometheus-stack)" in existing
    # the port-forward and the curl are two commands (the port-forward runs until stopped)
    lines = notes.splitlines()
    forward = next(i for i, line in enumerate(lines) if "port-forward" in line)
    assert lines[forward].strip() == "kubectl -n monitoring port-forward svc/lk-livekit-exporter 9784"
    assert lines[forward + 1].strip().startswith("curl -s localhost:9784/metrics")
    assert "&&" not in notes


# -- 6. the rendered config passes the exporter's own check ------------------------------------------------

WITH_URL = [p for p in CI_VALUES if ci_values(p).get("livekit", {}).get("url")]


@pytest.mark.parametrize("path", WITH_URL, ids=[p.name.removesuffix("-values.yaml") for p in WITH_URL])
def test_the_rendered_config_and_secret_files_pass_check_config(path, tmp_path):
    values = ci_values(path)
    objs = objects(values)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    secret_volume = next(n for n, v in volumes.items() if "secret" in v)
    assert mounts[secret_volume] == SECRET_DIR
    assert volumes[secret_volume]["secret"]["defaultMode"] == 0o440
    secret_name = volumes[secret_volume]["secret"]["secretName"]

    if values.get("existingSecret"):
        assert kinds(objs, "Secret") == [], "existingSecret: the chart creates no Secret"
        assert secret_name == values["existingSecret"]
        data = EXISTING_SECRET_DATA
    else:
        secret = one(objs, "Secret")
        assert secret_name == secret["metadata"]["name"]
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        secrets = {values["livekit"]["apiSecret"], *(k["apiSecret"] for k in values.get("webhooks", {}).get("keys", [])),
                   *values.get("events", {}).get("tokens", [])}
        assert secrets <= set(data.values()) | {t for v in data.values() for t in v.splitlines()}
    # the config names the secret files under the mount; no secret is in the ConfigMap or a literal env value
    config_text = one([o for o in kinds(objs, "ConfigMap") if "config.yml" in o["data"]], "ConfigMap")["data"]["config.yml"]
    for v in data.values():
        for s in v.splitlines():
            if "secret" in s or "token" in s:
                assert s not in config_text
                assert all(s not in str(e.get("value", "")) for e in c.get("env", []))
    assert "LIVEKIT_API_SECRET" not in {e["name"] for e in c.get("env", [])}
    named = re.findall(rf"{re.escape(SECRET_DIR)}/([\w.-]+)", config_text)
    assert named and set(named) <= set(data), f"the config names files the Secret lacks: {set(named) - set(data)}"

    # the pod's filesystem and environment, in a temporary directory
    secrets_dir = tmp_path / "secrets"
    secrets_dir.mkdir()
    for key, v in data.items():
        (secrets_dir / key).write_text(v)
    config = tmp_path / "config.yml"
    config.write_text(config_text.replace(SECRET_DIR, str(secrets_dir)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LIVEKIT_", "LIVEKIT_EXPORTER_"))}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == secret_name
            env[e["name"]] = data[ref["key"]]
        else:
            env[e["name"]] = e["value"]
    assert "LIVEKIT_API_KEY" in env
    exe = Path(sys.executable).parent / "livekit-exporter"
    run = subprocess.run([str(exe), "check-config", str(config)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    # and the check is real: without the secret files it refuses
    (secrets_dir / "api-secret").unlink()
    run = subprocess.run([str(exe), "check-config", str(config)], capture_output=True, text=True, env=env)
    assert run.returncode == 2 and "api_secret_file" in run.stderr


def test_the_chart_merges_its_settings_into_the_free_form_config():
    values = {"livekit": {"url": "https://lk.example.com", "apiKey": "APIx", "apiSecret": "s" * 32},
              "config": {"livekit": {"request_timeout": "5s"}, "collect": {"services": ["room"]},
                         "webhooks": {"path": "/hooks"}}}
    cm = next(o for o in kinds(objects(values), "ConfigMap") if "config.yml" in o["data"])
    cfg = yaml.safe_load(cm["data"]["config.yml"])
    assert cfg == {"livekit": {"url": "https://lk.example.com", "request_timeout": "5s",
                               "api_secret_file": f"{SECRET_DIR}/api-secret"},
                   "collect": {"services": ["room"]}, "webhooks": {"path": "/hooks"}}


def test_a_config_or_secret_change_rolls_the_pods():
    base = {"livekit": {"url": "https://lk.example.com", "apiKey": "APIx", "apiSecret": "s" * 32}}

    def checksums(values):
        return one(objects(values), "Deployment")["spec"]["template"]["metadata"]["annotations"]

    a = checksums(base)
    b = checksums({**base, "config": {"labels": {"max_values": 10}}})
    c = checksums({**base, "livekit": {**base["livekit"], "apiSecret": "t" * 32}})
    assert a["checksum/config"] != b["checksum/config"] and a["checksum/secret"] == b["checksum/secret"]
    assert a["checksum/secret"] != c["checksum/secret"] and a["checksum/config"] == c["checksum/config"]


# -- 7. what a production install relies on -------------------------------------------------------------------

@pytest.mark.parametrize("path", CI_VALUES, ids=ids)
def test_security_probes_and_ports(path):
    objs = objects(ci_values(path))
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = container(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["runAsGroup"] == 10001
    assert pod["securityContext"]["fsGroup"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert all(sa["automountServiceAccountToken"] is False for sa in kinds(objs, "ServiceAccount"))
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/tmp"}
    assert [v["emptyDir"] for v in pod["volumes"] if "emptyDir" in v] == [{"sizeLimit": "64Mi"}]
    assert all(m["readOnly"] for m in c["volumeMounts"] if m["mountPath"] != "/tmp")
    assert c["lifecycle"] == {"preStop": {"exec": {"command": ["sleep", "5"]}}}
    assert pod["terminationGracePeriodSeconds"] == 30
    assert c["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "http"}
    assert c["ports"] == [{"name": "http", "containerPort": 9784, "protocol": "TCP"}]
    assert c["args"][:2] == ["--config.file=/etc/livekit-exporter/config.yml", "--web.listen-address=:9784"]
    assert c["image"] == f"ghcr.io/livekit-exporter/livekit-exporter:{__version__}"
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    svc = one(objs, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9784, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"].items()


def test_the_ingress_exposes_only_the_webhook_and_events_paths():
    assert kinds(objects(), "Ingress") == []
    values = ci_values(CHART_DIR / "ci" / "ingress-on-values.yaml")
    ing = one(objects(values), "Ingress")
    pod = one(objects(values), "Deployment")["spec"]["template"]["spec"]
    assert "livekit-ca" in {v["name"] for v in pod["volumes"]}  # extraVolumes, extraVolumeMounts
    assert "/etc/livekit-ca" in {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert ing["spec"]["ingressClassName"] == "nginx" and ing["spec"]["tls"]
    for rule in ing["spec"]["rules"]:
        paths = rule["http"]["paths"]
        assert sorted(p["path"] for p in paths) == ["/v1/events", "/webhook"]
        assert all(p["pathType"] == "Exact" and p["backend"]["service"]["port"] == {"name": "http"} for p in paths)
    # the paths follow the exporter's config, and a disabled endpoint is not exposed
    moved = one(objects({**values, "config": {"webhooks": {"path": "/lk"}, "events": {"enabled": False}}}), "Ingress")
    assert [p["path"] for r in moved["spec"]["rules"] for p in r["http"]["paths"]] == ["/lk"]


def test_autoscaling_removes_replicas_and_several_replicas_get_a_pdb():
    default = objects()
    # one replica by default: the events pipeline's call state is per process (README "Replicas")
    assert one(default, "Deployment")["spec"]["replicas"] == 1
    assert kinds(default, "HorizontalPodAutoscaler") == [] and kinds(default, "PodDisruptionBudget") == []
    assert one(objects({"replicas": 2}), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert kinds(objects({"replicas": 2, "podDisruptionBudget": {"enabled": False}}), "PodDisruptionBudget") == []
    # under an HPA a PDB whatever minReplicas (the HPA may scale up)
    assert len(kinds(objects({"autoscaling": {"enabled": True, "minReplicas": 1}}), "PodDisruptionBudget")) == 1
    several = objects(ci_values(CHART_DIR / "ci" / "several-replicas-values.yaml"))
    assert "replicas" not in one(several, "Deployment")["spec"]
    hpa = one(several, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": one(several, "Deployment")["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == 3
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    pdb = one(several, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        one(several, "Deployment")["spec"]["template"]["metadata"]["labels"].items()
    single = objects(ci_values(CHART_DIR / "ci" / "dashboards-off-values.yaml"))
    assert one(single, "Deployment")["spec"]["replicas"] == 1
    assert kinds(single, "PodDisruptionBudget") == []


def scraped_job(objs: list[dict]) -> str:
    """The job label prometheus-operator gives the series of the Service the ServiceMonitor selects:
    the value of the Service label named by spec.jobLabel, else the Service's name; then relabelings."""
    sm = one(objs, "ServiceMonitor")
    (svc,) = [s for s in kinds(objs, "Service")
              if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
    assert svc["metadata"]["namespace"] in sm["spec"]["namespaceSelector"]["matchNames"]
    (ep,) = sm["spec"]["endpoints"]
    assert ep["port"] in {p["name"] for p in svc["spec"]["ports"]}
    job = svc["metadata"]["labels"].get(sm["spec"].get("jobLabel", ""), svc["metadata"]["name"])
    for r in ep.get("relabelings", []):
        if r.get("targetLabel") == "job":
            job = r["replacement"]
    return job


@pytest.mark.parametrize("release", ["lk", "prod", "livekit-exporter", "kube-prometheus-stack"])
def test_the_service_monitor_scrapes_like_the_mixin_says(release):
    objs = objects(name=release)
    assert scraped_job(objs) == MIXIN["jobs"]["exporter"] == "livekit-exporter"
    (ep,) = one(objs, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["interval"] == MIXIN["prometheus"]["scrape_interval"]
    assert ep["scrapeTimeout"] == MIXIN["prometheus"]["scrape_timeout"]
    assert ep["path"] == "/metrics"


def test_the_kube_prometheus_stack_selector_labels_are_applied():
    objs = objects(ci_values(CHART_DIR / "ci" / "existing-secret-values.yaml"))
    assert one(objs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(objs, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    # without the jobLabel the job would be the Service's name, which follows the release: the check can fail
    no_job_label = [json.loads(json.dumps(o)) for o in objects(name="prod")]
    one(no_job_label, "ServiceMonitor")["spec"].pop("jobLabel")
    assert scraped_job(no_job_label) == "prod-livekit-exporter"


# -- 8. values documented and in the schema ----------------------------------------------------------------

def _schema_has(schema: dict, path: str) -> bool:
    node = schema
    for part in path.split("."):
        props = node.get("properties")
        if props is None:  # a free-form object (resources, config, ...): anything under it is its own
            return node.get("type") == "object" and node.get("additionalProperties") is not False
        if part not in props:
            return False
        node = props[part]
    return True


def test_every_values_key_is_in_the_readme_table_and_the_schema():
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    readme = (CHART_DIR / "README.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \|", readme, flags=re.M)
    assert rows
    for leaf in leaves(values):
        assert any(leaf == r or leaf.startswith(r + ".") for r in rows), f"{leaf} is not in the README's values table"
        assert _schema_has(schema, leaf), f"{leaf} is not in values.schema.json"
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    for key, sub in schema["properties"].items():
        if "properties" in sub:
            assert sub["additionalProperties"] is False, f"{key}: a typo under it would be accepted"
    assert set(schema["properties"]) - {"global"} == set(values), "schema keys values.yaml does not have"
    assert schema["properties"]["config"]["additionalProperties"] is False  # generated: see the config schema test
    for key in ("existingSecret", "api-key", "api-secret", "webhook-api-secret-<i>", "events-tokens",
                "serviceMonitor.additionalLabels.release", "prometheusRule.additionalLabels.release",
                "sessionAffinity", "/webhook", "/v1/events"):
        assert key in readme, key


def test_the_config_schema_is_the_exporters_own_made_draft_07_without_the_keys_the_chart_sets():
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    config = schema["properties"]["config"]
    source = json.loads((ROOT / "exporter" / "livekit_exporter" / "schemas" / "config.schema.json").read_text())
    assert config == config_schema(source)
    text = json.dumps(config)
    assert "$ref" not in text and "$defs" not in text and "$schema" not in text  # draft-07, self-contained
    assert set(config["properties"]) == set(source["properties"])
    for section, keys in MANAGED.items():
        for key in keys:
            # left open for the templates' fail messages (test_values_that_cannot_make_a_working_exporter...)
            assert set(config["properties"][section]["properties"][key]) == {"description"}
    # the constraints, default and description of the exporter's model reach the chart's values schema
    assert config["properties"]["webhooks"]["properties"]["max_body_bytes"] == {
        "type": "integer", "minimum": 1, "description": "Larger request bodies get 413.", "default": 1048576}
    # every ci values file's config passes it (lint), and a full config from the repository's example does too
    example = {"collect": {"room_detail": {"enabled": True, "max_rooms": 10}}, "webhooks": {"path": "/hooks"}}
    assert helm.lint(CHART_DIR, values={"config": example}, strict=True, namespace=NAMESPACE)["errors"] == []


def test_an_undocumented_values_key_is_refused_by_the_generator():
    with pytest.raises(MixinError, match="replicas has no `# -- description`"):
        values_docs("# -- documented\nimage: x\nreplicas: 2\n")
    rows = values_docs("a:\n  # -- the b\n  b: 1\n# -- whole\nc:\n  d: [1]\n")
    assert rows == [("a.b", "the b", 1), ("c", "whole", {"d": [1]})]


def test_the_readmes_kube_prometheus_stack_example_lints_renders_and_does_what_it_says():
    """The values example of the top-level README is a working install, not prose."""
    readme = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"```yaml\n# my-values.yaml\n(.*?)```", readme, re.S)
    values = yaml.safe_load(block)
    report = helm.lint(CHART_DIR, values=values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == [], report
    objs = objects(values)
    for obj in objs:
        if obj["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(obj, K8S_VERSIONS[-1], strict=True)
    assert one(objs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(objs, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not kinds(objs, "Secret"), "existingSecret: the chart creates none"
    paths = {p["path"] for rule in one(objs, "Ingress")["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/webhook", "/v1/events"}
    links = {r["annotations"]["dashboard_url"] for g in one(objs, "PrometheusRule")["spec"]["groups"]
             for r in g["rules"] if "alert" in r}
    assert links and all(link.startswith("https://grafana.example.com/d/") for link in links)
    # The kubectl line creates the keys the values name.
    kubectl = re.search(r"kubectl -n monitoring create secret generic livekit-exporter(.*?)\nhelm install", readme, re.S)
    assert set(re.findall(r"--from-(?:literal|file)=([\w-]+)=", kubectl.group(1))) == {"api-key", "api-secret", "events-tokens"}


# -- 9. what prometheus-operator does to the exporter's labels --------------------------------------------------

# Target labels prometheus-operator gives every series a ServiceMonitor scrapes (the Service's, the pod's, the
# port's); with honorLabels false a scraped label of the same name is renamed exported_<name>.
OPERATOR_TARGET_LABELS = {"service", "namespace", "pod", "container", "endpoint", "job", "instance"}


@lru_cache(maxsize=1)
def exporter_label_names() -> frozenset[str]:
    """Every label name the exporter serves: the exporter run against the simulator, every source exercised
    (what docs/metrics.md is generated from), the registry's label names and the scraped samples' ones."""
    import asyncio

    from livekit_exporter import metricsdoc

    text, labelnames = asyncio.run(metricsdoc._collect())
    names = {n for v in labelnames.values() for n in v}
    for line in text.splitlines():
        if not line.startswith("#") and "{" in line:
            names |= set(re.findall(r'[{,]([a-zA-Z_]\w*)="', line.split("}", 1)[0] + "}"))
    return frozenset(names)


def test_the_exporters_own_service_label_survives_the_scrape():
    served = exporter_label_names()
    assert {"service", "agent", "status"} <= served  # the check below has something to check
    clashing = served & OPERATOR_TARGET_LABELS
    # honorLabels keeps the exporter's value of every label the operator would set too; the exporter
    # serves none of the others, so honouring its labels takes nothing from the operator's
    assert clashing == {"service"}, clashing
    for objs in (objects(), objects(ci_values(CHART_DIR / "ci" / "existing-secret-values.yaml"))):
        (ep,) = one(objs, "ServiceMonitor")["spec"]["endpoints"]
        honoured = set(clashing) if ep.get("honorLabels") is True else set()
        assert honoured == clashing, f"{clashing - honoured}: overwritten by prometheus-operator's target labels"
    # the rules group the API families by that label
    exprs = " ".join(r["expr"] for g in bundle_groups() for r in g["rules"])
    assert re.search(r"by \([^)]*\bservice\b[^)]*\)[^;]*livekit_api_up|livekit_api_up[^;]*by \([^)]*\bservice\b", exprs)


# -- 10. names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, values", [
    ("a" * 53, {}),  # Helm's longest release name
    ("r" * 42, {}),  # <42>-livekit-exporter cut to 54 + "-exporter" was the config ConfigMap's name
    ("r" * 46, {}),
    ("livekit-exporter-" + "p" * 36, {}),
    ("lk", {"fullnameOverride": "x" * 70}),
    ("lk", {"fullnameOverride": "y" * 62 + "-z"}),
    ("lk", {"nameOverride": "n" * 70}),
])
def test_names_are_unique_per_kind_and_valid_whatever_the_release_name(name, values):
    helm.validate_release_name(name)  # a release name Helm takes
    objs = objects({"replicas": 2, "ingress": {"enabled": True}, **values}, name=name)
    by_kind: dict[str, list[str]] = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o["metadata"]["name"])
        for v in o["metadata"].get("labels", {}).values():
            assert len(v) <= 63, v
    for kind, names in by_kind.items():
        assert len(names) == len(set(names)), f"{kind}: {names}"
        for n in names:
            assert len(n) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n), n
    assert len(by_kind["ConfigMap"]) == 1 + len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    for o in objs:
        if o["kind"] not in ("ServiceMonitor", "PrometheusRule"):
            kubernetes_validate.validate(o, K8S_VERSIONS[-1], strict=True)


def test_every_object_fits_kubectl_applys_annotation():
    """kubectl apply keeps the object in an annotation of at most 262144 bytes (the dashboards are the largest)."""
    for path in CI_VALUES:
        for o in objects(ci_values(path)):
            size = len(json.dumps(o, separators=(",", ":")).encode())
            assert size < 262144, f"{o['kind']} {o['metadata']['name']}: {size} bytes"


# -- 11. TLS and basic auth on the exporter's port: webConfig -------------------------------------------------------

WEB = "/etc/livekit-exporter/web"


def test_web_config_mounts_the_secret_switches_the_probes_and_the_service_monitor_follows():
    tls = {"ca": {"secret": {"name": "exporter-ca", "key": "ca.crt"}}, "serverName": "lk-livekit-exporter.monitoring.svc"}
    auth = {"username": {"name": "scrape-auth", "key": "username"}, "password": {"name": "scrape-auth", "key": "password"}}
    values = {"webConfig": {"existingSecret": "exporter-web"},
              "serviceMonitor": {"scheme": "https", "tlsConfig": tls, "basicAuth": auth}}
    objs = objects(values)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    c = container(objs)
    assert f"--web.config.file={WEB}/web-config.yml" in c["args"]
    (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "exporter-web"]
    assert {"name": volume["name"], "mountPath": WEB, "readOnly": True} in c["volumeMounts"]
    # the kubelet's httpGet would get 401 (basic auth) or a TLS error: the probes check the port
    assert c["livenessProbe"]["tcpSocket"] == c["readinessProbe"]["tcpSocket"] == {"port": "http"}
    assert "httpGet" not in c["livenessProbe"] and "httpGet" not in c["readinessProbe"]
    assert c["livenessProbe"]["periodSeconds"] == 10 and c["readinessProbe"]["periodSeconds"] == 5
    sm = one(objs, "ServiceMonitor")
    (ep,) = sm["spec"]["endpoints"]
    assert (ep["scheme"], ep["tlsConfig"], ep["basicAuth"]) == ("https", tls, auth)
    assert _roundtrip(ServiceMonitor, sm) == sm  # fields prometheus-operator knows
    assert "webConfig is set" in render(values)["livekit-exporter/templates/NOTES.txt"]
    assert "webConfig is set" not in render()["livekit-exporter/templates/NOTES.txt"]
    for version in K8S_VERSIONS:
        for o in objects(values, kube=version):
            if o["kind"] not in ("ServiceMonitor", "PrometheusRule"):
                kubernetes_validate.validate(o, version, strict=True)
    # without it: HTTP probes, no web volume, no flag, scheme http
    plain = objects()
    assert not any(a.startswith("--web.config.file") for a in container(plain)["args"])
    assert WEB not in {m["mountPath"] for m in container(plain)["volumeMounts"]}
    (ep,) = one(plain, "ServiceMonitor")["spec"]["endpoints"]
    assert ep["scheme"] == "http" and "tlsConfig" not in ep and "basicAuth" not in ep


def test_the_containers_arguments_are_the_exporters_flags(tmp_path):
    """The exporter's own parser takes the rendered args (as its entrypoint does: no subcommand = serve), and
    reads an exporter-toolkit web config at the name the chart gives."""
    from livekit_exporter import cli, webconfig

    args = container(objects({"webConfig": {"existingSecret": "exporter-web"},
                              "extraArgs": ["--log.format=json"]}))["args"]
    parsed = cli.parser().parse_args(["serve", *args])
    assert parsed.web_config_file == f"{WEB}/web-config.yml"
    assert parsed.config_file == "/etc/livekit-exporter/config.yml"
    web = tmp_path / "web-config.yml"
    web.write_text("basic_auth_users:\n  prom: $2b$10$sUdSkJ2sXdZbsRNxYYvPZOXWrJ2d.L4VyIBUqSic3C1VOoH5t5ynG\n")
    assert webconfig.load(str(web)).basic_auth_users


# -- 12. every value reaches the manifest -------------------------------------------------------------------------

CREDS = {"livekit": {"url": "https://lk.example.com", "apiKey": "APIpass", "apiSecret": "pass-secret-0123456789abcdef0123"}}
# one distinctive value for each pass-through leaf of values.yaml, then where it must land
PASS_THROUGH: dict[str, Any] = {
    **CREDS,
    "nameOverride": "lkx",
    "image": {"repository": "registry.example.test/lk/exporter", "tag": "9.9.9-pass", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred-pass"}],
    "extraArgs": ["--log.format=json", "--label.note=a: b #c"],
    "extraEnv": [{"name": "PASS_ENV", "value": "env-pass"}],
    "extraVolumes": [{"name": "pass-ca", "configMap": {"name": "pass-ca"}}],
    "extraVolumeMounts": [{"name": "pass-ca", "mountPath": "/etc/pass-ca", "readOnly": True}],
    "resources": {"requests": {"cpu": "77m", "memory": "99Mi"}, "limits": {"cpu": "1", "memory": "333Mi"}},
    "podSecurityContext": {"runAsNonRoot": True, "runAsUser": 20002, "runAsGroup": 20003, "fsGroup": 20004,
                           "seccompProfile": {"type": "RuntimeDefault"}},
    "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "privileged": False,
                        "capabilities": {"drop": ["ALL"]}},
    "livenessProbe": {"initialDelaySeconds": 2, "periodSeconds": 11, "timeoutSeconds": 4, "failureThreshold": 6,
                      "successThreshold": 1},
    "readinessProbe": {"initialDelaySeconds": 3, "periodSeconds": 7, "timeoutSeconds": 2, "failureThreshold": 8,
                       "successThreshold": 2},
    "terminationGracePeriodSeconds": 47,
    "lifecycle": {"preStopSleepSeconds": 9},
    "podAnnotations": {"example.com/pod": "pod-ann-pass"},
    "podLabels": {"example.com/team": "pod-label-pass"},
    "priorityClassName": "prio-pass",
    "nodeSelector": {"example.com/node": "node-pass"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tol-pass", "effect": "NoSchedule"}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "example.com/pool", "operator": "In", "values": ["affinity-pass"]}]}]}}},
    "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "DoNotSchedule"}],
    "serviceAccount": {"create": True, "name": "sa-pass", "annotations": {"example.com/sa": "sa-ann-pass"}},
    "service": {"port": 19784, "annotations": {"example.com/svc": "svc-ann-pass"}, "sessionAffinity": "None"},
    "ingress": {"enabled": True, "className": "class-pass", "annotations": {"example.com/ing": "ing-ann-pass"},
                "hosts": ["pass.example.test", "pass2.example.test"],
                "tls": [{"secretName": "tls-pass", "hosts": ["pass.example.test"]}]},
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 2},
    "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 7, "targetCPUUtilizationPercentage": 63},
    "serviceMonitor": {"enabled": True, "additionalLabels": {"release": "sm-pass"}, "interval": "31s",
                       "scrapeTimeout": "21s", "scheme": "https", "tlsConfig": {"serverName": "tls-name-pass"},
                       "basicAuth": {"username": {"name": "auth-pass", "key": "u"}, "password": {"name": "auth-pass", "key": "p"}},
                       "relabelings": [{"action": "replace", "targetLabel": "cluster", "replacement": "relabel-pass"}],
                       "metricRelabelings": [{"sourceLabels": ["__name__"], "regex": "drop_pass_.*", "action": "drop"}]},
    "prometheusRule": {"enabled": True, "additionalLabels": {"release": "pr-pass"}, "grafanaUrl": "https://grafana.pass.test"},
    "dashboards": {"enabled": True, "label": "dash_label_pass", "labelValue": "yes-pass", "folderAnnotation": "folder-ann-pass",
                   "folder": "Folder-pass", "additionalLabels": {"example.com/dash": "dash-label-pass"}},
}
# leaves set by the second render below, or checked by the tests named
ELSEWHERE = {
    "replicas": "the second render", "fullnameOverride": "the second render", "image.digest": "the second render",
    "webConfig.existingSecret": "test_web_config_mounts_the_secret_...",
    "existingSecret": "test_the_rendered_config_and_secret_files_pass_check_config[existing-secret]",
    "webhooks.keys": "test_the_rendered_config_and_secret_files_pass_check_config[several-replicas]",
    "events.tokens": "test_the_rendered_config_and_secret_files_pass_check_config[ingress-on]",
    "events.existingSecretTokens": "test_the_rendered_config_and_secret_files_pass_check_config[existing-secret]",
    "config": "test_the_chart_merges_its_settings_into_the_free_form_config",
}
RELEASE, OTHER_NS = "voice-prod", "livekit-observability"


# leaves PASS_THROUGH sets to their default: toggles whose other value other tests render, and the safe security
# booleans (the contexts as a whole differ from the defaults: runAsUser, privileged)
SAME_AS_DEFAULT = {
    "podSecurityContext.runAsNonRoot", "podSecurityContext.seccompProfile.type",
    "securityContext.readOnlyRootFilesystem", "securityContext.allowPrivilegeEscalation",
    "securityContext.capabilities.drop",
    "serviceAccount.create",  # false: test_replicas_fullname_override_digest_and_an_external_service_account_...
    "podDisruptionBudget.enabled",  # false: test_autoscaling_removes_replicas_and_several_replicas_get_a_pdb
    "autoscaling.minReplicas",  # 3: ci/several-replicas (test_autoscaling_...)
    "serviceMonitor.enabled", "prometheusRule.enabled", "dashboards.enabled",  # false: ci/dashboards-off
}


def _pairs(values: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(values, dict) and values:
        return {k: v for key, sub in values.items() for k, v in _pairs(sub, (*prefix, key)).items()}
    return {prefix: values}


def test_every_pass_through_value_reaches_its_place_in_the_manifest():
    defaults = _pairs(yaml.safe_load((CHART_DIR / "values.yaml").read_text()))
    ours = _pairs(PASS_THROUGH)
    same = {".".join(k) for k, v in ours.items() if defaults.get(k, KeyError) == v}
    assert same == SAME_AS_DEFAULT, "a pass-through value equal to its default proves nothing"
    set_here = set(ours)
    missing = [".".join(leaf) for leaf in defaults if ".".join(leaf) not in ELSEWHERE
               and not any(k[:len(leaf)] == leaf for k in set_here)]
    assert missing == [], f"values.yaml leaves no test sets: {missing}"

    objs = objects(PASS_THROUGH, name=RELEASE, namespace=OTHER_NS)
    full = f"{RELEASE}-lkx"  # nameOverride
    dep = one(objs, "Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    c = container(objs)
    v = PASS_THROUGH
    # the image, pull secrets, args, env, volumes
    assert c["image"] == "registry.example.test/lk/exporter:9.9.9-pass" and c["imagePullPolicy"] == "Always"
    assert spec["imagePullSecrets"] == v["imagePullSecrets"]
    assert c["args"][-2:] == v["extraArgs"]
    assert v["extraEnv"][0] in c["env"]
    assert v["extraVolumes"][0] in spec["volumes"] and v["extraVolumeMounts"][0] in c["volumeMounts"]
    # resources, security, probes, lifecycle
    assert c["resources"] == v["resources"]
    assert spec["securityContext"] == v["podSecurityContext"] and c["securityContext"] == v["securityContext"]
    assert c["livenessProbe"] == {"httpGet": {"path": "/-/healthy", "port": "http"}, **v["livenessProbe"]}
    assert c["readinessProbe"] == {"httpGet": {"path": "/-/ready", "port": "http"}, **v["readinessProbe"]}
    assert spec["terminationGracePeriodSeconds"] == 47
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "9"]
    # the pod's metadata and scheduling
    assert pod["metadata"]["annotations"]["example.com/pod"] == "pod-ann-pass"
    assert pod["metadata"]["labels"]["example.com/team"] == "pod-label-pass"
    assert spec["priorityClassName"] == "prio-pass"
    assert spec["nodeSelector"] == v["nodeSelector"] and spec["tolerations"] == v["tolerations"]
    assert spec["affinity"] == v["affinity"]
    (tsc,) = spec["topologySpreadConstraints"]
    assert v["topologySpreadConstraints"][0].items() <= tsc.items()
    assert tsc["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    # the ServiceAccount
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"]["name"] == spec["serviceAccountName"] == "sa-pass"
    assert sa["metadata"]["annotations"] == v["serviceAccount"]["annotations"]
    # the Service and the Ingress
    svc = one(objs, "Service")
    assert svc["metadata"]["name"] == full
    assert svc["metadata"]["annotations"] == v["service"]["annotations"]
    assert svc["spec"]["sessionAffinity"] == "None" and svc["spec"]["ports"][0]["port"] == 19784
    ing = one(objs, "Ingress")
    assert ing["metadata"]["annotations"] == v["ingress"]["annotations"]
    assert ing["spec"]["ingressClassName"] == "class-pass" and ing["spec"]["tls"] == v["ingress"]["tls"]
    assert [r["host"] for r in ing["spec"]["rules"]] == v["ingress"]["hosts"]
    assert {p["backend"]["service"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]} == {full}
    # PDB and HPA
    assert "replicas" not in dep["spec"]
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 2
    hpa = one(objs, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 7)
    assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 63
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"] == full
    # the ServiceMonitor
    sm = one(objs, "ServiceMonitor")
    (ep,) = sm["spec"]["endpoints"]
    assert sm["metadata"]["labels"]["release"] == "sm-pass"
    assert (ep["interval"], ep["scrapeTimeout"], ep["scheme"]) == ("31s", "21s", "https")
    assert ep["tlsConfig"] == v["serviceMonitor"]["tlsConfig"] and ep["basicAuth"] == v["serviceMonitor"]["basicAuth"]
    assert ep["relabelings"] == v["serviceMonitor"]["relabelings"]
    assert ep["metricRelabelings"] == v["serviceMonitor"]["metricRelabelings"]
    assert _roundtrip(ServiceMonitor, sm) == sm
    # the PrometheusRule and the dashboards
    rule = one(objs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "pr-pass"
    assert all(r["annotations"]["dashboard_url"].startswith("https://grafana.pass.test/d/")
               for g in rule["spec"]["groups"] for r in g["rules"] if "dashboard_url" in r.get("annotations", {}))
    boards = [o for o in kinds(objs, "ConfigMap") if "dash_label_pass" in o["metadata"]["labels"]]
    assert len(boards) == len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    for b in boards:
        assert b["metadata"]["labels"]["dash_label_pass"] == "yes-pass"
        assert b["metadata"]["labels"]["example.com/dash"] == "dash-label-pass"
        assert b["metadata"]["annotations"] == {"folder-ann-pass": "Folder-pass"}
    # every namespace reference follows the release's namespace
    for o in objs:
        assert o["metadata"]["namespace"] == OTHER_NS, o["kind"]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [OTHER_NS]}
    notes = render(PASS_THROUGH, name=RELEASE, namespace=OTHER_NS)["livekit-exporter/templates/NOTES.txt"]
    assert f"kubectl -n {OTHER_NS} port-forward svc/{full} 19784" in notes
    assert f"http://{full}.{OTHER_NS}.svc:19784/metrics" in notes and NAMESPACE not in notes
    # the selectors hold the release (app.kubernetes.io/instance): two releases in a namespace select their own pods
    selector = {"app.kubernetes.io/name": "lkx", "app.kubernetes.io/instance": RELEASE}
    assert dep["spec"]["selector"]["matchLabels"] == selector
    assert svc["spec"]["selector"] == selector
    assert one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    assert sm["spec"]["selector"]["matchLabels"].items() >= selector.items()
    assert selector.items() <= pod["metadata"]["labels"].items()
    # and the whole render is valid
    for version in K8S_VERSIONS:
        for o in objects(PASS_THROUGH, name=RELEASE, namespace=OTHER_NS, kube=version):
            if o["kind"] not in ("ServiceMonitor", "PrometheusRule"):
                kubernetes_validate.validate(o, version, strict=True)


def test_replicas_fullname_override_digest_and_an_external_service_account_reach_the_manifest():
    values = {**CREDS, "replicas": 3, "fullnameOverride": "exporter-pass",
              "image": {"digest": "sha256:" + "ab" * 32, "tag": "ignored"},
              "serviceAccount": {"create": False, "name": "external-sa"}}
    objs = objects(values, name=RELEASE, namespace=OTHER_NS)
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 3 and dep["metadata"]["name"] == "exporter-pass"
    assert container(objs)["image"] == "ghcr.io/livekit-exporter/livekit-exporter@sha256:" + "ab" * 32
    assert kinds(objs, "ServiceAccount") == []
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == "external-sa"
    assert {o["metadata"]["name"] for o in objs if o["kind"] != "ConfigMap"} == {"exporter-pass"}
    assert one(objects({**CREDS, "serviceAccount": {"create": False}}), "Deployment")["spec"]["template"]["spec"][
        "serviceAccountName"] == "default"
    assert kinds(objects({**CREDS, "lifecycle": {"preStopSleepSeconds": 0}}), "Deployment")[0]["spec"]["template"][
        "spec"]["containers"][0].get("lifecycle") is None
