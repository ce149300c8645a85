"""The monitoring mixin: prometheus/mixin.yml -> Prometheus rules, prometheus.yml and their docs.

    python -m livekit_exporter.mixin                 # regenerate the committed files (make rules)
    python -m livekit_exporter.mixin --check         # exit 1 when a committed file is stale
    python -m livekit_exporter.mixin --out DIR --set prometheus.targets.exporter='["127.0.0.1:9784"]'

Same generator, other values: tests render a variant with short windows, the native stack renders
loopback addresses; nobody keeps a second copy of a rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import MixinConfig, MixinError, load
from .render import alerts_md, prometheus_yml, rule_files, runbooks_md
from .rules import Alert, Mixin

__all__ = ["DEFAULT_CONFIG", "Alert", "Mixin", "MixinConfig", "MixinError", "generate", "load"]

DEFAULT_CONFIG = Path("prometheus/mixin.yml")


def generate(cfg: MixinConfig) -> dict[str, str]:
    """Every generated file, keyed by its path relative to the repository's top."""
    m = Mixin(cfg)
    files = {
        "prometheus/prometheus.yml": prometheus_yml(cfg),
        **rule_files(m),
        "docs/alerts.md": alerts_md(m),
        "docs/runbooks.md": runbooks_md(m),
    }
    from .dashboards import render as dashboards  # needs grafana-foundation-sdk (the test extra)

    files.update(dashboards(m))
    from .chart import chart_files  # the Helm chart's copies of the rules and dashboards, Chart.yaml, README

    files.update(chart_files(files))
    unread = cfg.unread()
    if unread:
        raise MixinError(f"{cfg.source}: unknown keys (nothing reads them; a typo?): {', '.join(unread)}")
    return files


def write(files: dict[str, str], root: Path) -> list[Path]:
    written = []
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(files: dict[str, str], root: Path) -> list[str]:
    return [
        rel
        for rel, text in files.items()
        if not (root / rel).is_file() or (root / rel).read_text(encoding="utf-8") != text
    ]


def parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise MixinError(f"--set {item!r}: expected KEY=VALUE (VALUE in YAML), e.g. prometheus.scrape_timeout=5s")
        out[key] = yaml.safe_load(value)
    return out
