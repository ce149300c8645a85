"""Several LiveKit projects in one exporter: the multi-target pattern of blackbox_exporter and
pve-exporter (docs/architecture.md, "Several projects").

Each project is a scrape target of its own, `<telemetry path>?project=<name>`, and Prometheus gives
it the label project="<name>" by relabelling (prometheus.projects of the mixin, the chart's
ServiceMonitor): the exporter itself never writes a `project` label. A project's target serves its
LiveKit state and the webhooks and voice-agent events attributed to it, from a registry of its own.
The telemetry path without the parameter serves the exporter's own metrics (process, HTTP server,
reloads, and the requests no project can be named for: a webhook signed with an unknown key, an
events request with an unknown token).

A single-project install (the livekit section) has one target, the telemetry path, which serves
everything, as before projects existed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config, KeyPair, LiveKitConfig, Secret
from .livekit_state import StateCollector
from .telemetry import Telemetry

PROJECT_PARAMETER = "project"
# The target without ?project=: the single project of a livekit-section install, or the exporter's own.
OWN = ""


@dataclass
class Target:
    """What one scrape target serves: a registry of event-driven families, and the LiveKit state read
    on each scrape (None for the exporter's own target of a multi-project install)."""

    name: str
    telemetry: Telemetry
    state: StateCollector | None


def livekit_servers(config: Config) -> dict[str, LiveKitConfig]:
    """The LiveKit server whose state each target reads."""
    return {project.name: project.livekit for project in config.projects} or {OWN: config.livekit}


def build_targets(config: Config, own: Telemetry) -> dict[str, Target]:
    """The scrape targets of `config`, by their ?project= value (OWN: none)."""
    targets = {OWN: Target(OWN, own, None)}
    for name, livekit in livekit_servers(config).items():
        telemetry = own if name == OWN else Telemetry(config.labels, process=False)
        targets[name] = Target(name, telemetry, StateCollector(livekit, config.collect, telemetry, name))
    return targets


def counting_targets(config: Config) -> list[str]:
    """The targets that count webhooks and events: each project, or the one target of a single project."""
    return [project.name for project in config.projects] or [OWN]


def webhook_signers(config: Config) -> dict[str, tuple[KeyPair, ...]]:
    """The key pairs that verify each target's webhooks: webhooks.keys, or LiveKit's own API key pair;
    with projects, each project's webhook_keys (the loader filled them with its own key pair)."""
    if not config.projects:
        return {OWN: config.webhooks.keys or (KeyPair(config.livekit.api_key, config.livekit.api_secret),)}
    return {project.name: project.webhook_keys for project in config.projects}


def events_tokens(config: Config) -> dict[Secret, str | None]:
    """Every events token -> the target its events belong to (None: any, named by ?project=)."""
    tokens: dict[Secret, str | None] = {}
    for project in config.projects:
        tokens.update(dict.fromkeys(project.events_tokens, project.name))
    for token in config.events.tokens:
        tokens[token] = None if config.projects else OWN
    return tokens


def unknown_project(name: str, targets: Mapping[str, object], what: str) -> str:
    """The error for a ?project= that names no project: what was asked, and what may be."""
    shown = name[:64].encode("unicode_escape").decode()
    named = sorted(t for t in targets if t != OWN)
    if not named:
        return f"{what}: this exporter monitors one LiveKit project; leave out ?{PROJECT_PARAMETER}= ({shown!r} given)"
    return (
        f"{what}: no project {shown!r} in the exporter's configuration; "
        f"?{PROJECT_PARAMETER}= may be one of: {', '.join(named)}"
    )
