"""The aiohttp application: routes, limits, startup and shutdown. No metric logic lives here.

Routes:
    GET  /                  landing page linking to the rest
    GET  <telemetry path>   Prometheus text or OpenMetrics (Accept), gzip when asked;
                            ?project=<name>: one project of several (projects.py)
    GET  /-/healthy         the process is alive
    GET  /-/ready           configuration loaded and LiveKit answered at least once
    POST /-/reload          reload the configuration (with --web.enable-lifecycle; else 403)
    POST <webhooks.path>    LiveKit webhooks (webhooks.py)
    POST <events.path>      voice-agent events (events/)
"""

from __future__ import annotations

import asyncio
import html
import logging
import math
import re
from dataclasses import dataclass

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from . import events, webconfig, webhooks
from .config import Config
from .httpguard import GUARD, HttpGuard
from .livekit_state import ScrapeView
from .projects import OWN, PROJECT_PARAMETER, Target, build_targets, unknown_project
from .reload import RELOADER, WEBHOOK_HANDLER, Reloader
from .telemetry import Telemetry
from .webconfig import WebConfig

log = logging.getLogger(__name__)

SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
DEFAULT_LISTEN_ADDRESS = ":9784"
DEFAULT_TELEMETRY_PATH = "/metrics"


@dataclass
class Exporter:
    """Everything one running exporter owns; stored on the app under EXPORTER. A reload replaces
    `config` (and a target's `state`, when its livekit section or the collect section changed): read
    them per request. `telemetry` is the exporter's own; each target (projects.py) has its registry."""

    config: Config
    telemetry: Telemetry
    targets: dict[str, Target]
    telemetry_path: str


EXPORTER = web.AppKey("exporter", Exporter)
LIFECYCLE = web.AppKey("lifecycle", bool)


def scrape_budget(header: str | None, default: float, margin: float, maximum: float) -> float:
    """Seconds the collection may take: Prometheus's scrape timeout minus a margin.

    A missing, unparsable, non-positive or non-finite header means the default; a larger one than
    `maximum` (collect.max_scrape_timeout) is cut to it, so no request can hold a collection open.
    """
    timeout = default
    if header:
        try:
            value = float(header)
        except ValueError:
            value = 0.0
        if math.isfinite(value) and value > 0:
            timeout = min(value, maximum)
    # A margin larger than a short timeout would leave nothing: keep at least half of it.
    return max(timeout - margin, timeout / 2)


async def handle_metrics(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    cfg = ex.config.collect
    budget = scrape_budget(
        request.headers.get(SCRAPE_TIMEOUT_HEADER),
        cfg.default_scrape_timeout,
        cfg.timeout_margin,
        cfg.max_scrape_timeout,
    )
    name = request.query.get(PROJECT_PARAMETER, OWN)
    target = ex.targets.get(name)
    if target is None:
        return web.Response(status=404, text=unknown_project(name, ex.targets, "scrape") + "\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    fresh = await target.state.families(budget) if target.state else []
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    compress = gzip_wanted(request.headers.get("Accept-Encoding", ""))
    # Rendered off the loop, in what the collection left of the budget (at least half the margin).
    left = max(budget - (loop.time() - started), cfg.timeout_margin / 2)
    body = await ex.telemetry.render(ScrapeView(target.telemetry.registry, fresh), encoder, compress, left)
    if body is None:
        return web.Response(
            status=503,
            text=f"The metrics were not rendered within this scrape's budget ({budget:g} s: the scrape timeout "
            "minus collect.timeout_margin). Lower labels.max_series or raise the scrape timeout.\n",
        )
    headers = {"Content-Type": content_type, "Vary": "Accept-Encoding"}
    if compress:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


def gzip_wanted(accept_encoding: str) -> bool:
    """RFC 9110 negotiation: gzip (or `*`, when gzip is not named) with a weight above 0.
    (prometheus-client's own gzip_accepted ignores weights, so `gzip;q=0` would get gzip.)"""
    weights: dict[str, float] = {}
    for item in accept_encoding.split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if coding:
            weights[coding.lower()] = weight
    return weights.get("gzip", weights.get("*", 0.0)) > 0


async def handle_healthy(request: web.Request) -> web.Response:
    return web.Response(text="Healthy.\n")


async def handle_ready(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    # Ready once any project's LiveKit answered: one project down must not take webhooks and events of
    # the others out of the Service. The projects that have not answered yet are named.
    states = {name: t.state for name, t in ex.targets.items() if t.state is not None}
    waiting = sorted(name for name, state in states.items() if not state.answered_once)
    if len(waiting) < len(states):
        return web.Response(
            text="Ready.\n" + "".join(f"Project {n!r}: LiveKit has not answered yet.\n" for n in waiting)
        )
    return web.Response(status=503, text="Not ready: LiveKit has not answered yet (see livekit_api_up on /metrics).\n")


async def handle_reload(request: web.Request) -> web.Response:
    """POST (or PUT) /-/reload: what SIGHUP does, when --web.enable-lifecycle allows it."""
    if not request.app[LIFECYCLE]:
        return web.Response(
            status=403, text="Lifecycle API is not enabled: start the exporter with --web.enable-lifecycle.\n"
        )
    problems = await request.app[RELOADER].reload("POST /-/reload")
    if problems:
        # As Prometheus answers a failed reload. The problems name files, lines and keys, never a secret.
        text = "\n".join(["The configuration was not reloaded; the previous one keeps running:", *problems])
        return web.Response(status=500, text=text + "\n")
    return web.Response(text="Configuration reloaded.\n")


async def handle_index(request: web.Request) -> web.Response:
    ex = request.app[EXPORTER]
    links: list[tuple[str | None, str]] = [
        (ex.telemetry_path, "Metrics"),
        ("/-/healthy", "Health"),
        ("/-/ready", "Readiness"),
    ]
    if ex.config.webhooks.enabled:
        links.append((None, f"LiveKit webhooks: POST {ex.config.webhooks.path}"))
    if ex.config.events.enabled:
        links.append((None, f"Voice-agent events: POST {ex.config.events.path}"))
    items = "\n".join(
        f'<li><a href="{html.escape(p)}">{html.escape(t)}</a></li>' if p else f"<li>{html.escape(t)}</li>"
        for p, t in links
    )
    servers = [(p.name, p.livekit.shown_url) for p in ex.config.projects] or [("", ex.config.livekit.shown_url)]
    projects = "".join(
        f'<li><a href="{html.escape(ex.telemetry_path)}?{PROJECT_PARAMETER}={html.escape(name)}">'
        f"{html.escape(name)}</a>: {html.escape(url)}</li>"
        for name, url in servers
        if name
    )
    about = (
        f"<p>Prometheus metrics for the LiveKit server at {html.escape(servers[0][1])}.</p>"
        if not projects
        else f"<p>Prometheus metrics for these LiveKit projects (one scrape target each):</p><ul>{projects}</ul>"
    )
    body = (
        "<!doctype html><html><head><title>LiveKit Exporter</title></head><body>"
        "<h1>LiveKit Exporter</h1>"
        f"{about}"
        f"<ul>\n{items}\n</ul></body></html>"
    )
    return web.Response(text=body, content_type="text/html")


def build_app(
    config: Config,
    *,
    telemetry: Telemetry | None = None,
    telemetry_path: str = DEFAULT_TELEMETRY_PATH,
    web_config: WebConfig | None = None,
    config_file: str | None = None,
    lifecycle: bool = False,
) -> web.Application:
    """The exporter's app. `config_file` is what a reload reads again (None: the environment alone);
    `lifecycle` (--web.enable-lifecycle) lets POST /-/reload reload, as Prometheus's flag does."""
    telemetry = telemetry or Telemetry(config.labels)
    targets = build_targets(config, telemetry)
    max_body = max(config.webhooks.max_body_bytes, config.events.max_body_bytes)
    problem = telemetry_path_problem(telemetry_path, config)
    if problem:
        raise ValueError(problem)
    ingest = [c.path for c in (config.webhooks, config.events) if c.enabled]
    guard = HttpGuard(telemetry, lambda: app[EXPORTER].config.server, ingest)
    # Bodies are read by the handlers with their own limits; this is only aiohttp's outer bound.
    # The guard is the outermost middleware: nothing a client sends gets past it as a traceback.
    app = web.Application(client_max_size=max_body + 1, middlewares=[guard.middleware])
    app[GUARD] = guard
    if web_config:
        # The webhook and events endpoints authenticate every request themselves.
        exempt = [c.path for c in (config.webhooks, config.events) if c.enabled]
        webconfig.install(app, web_config, exempt, telemetry.registry)
    app[EXPORTER] = Exporter(config, telemetry, targets, telemetry_path)
    app.router.add_get("/", handle_index)
    app.router.add_get(telemetry_path, handle_metrics)
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app[RELOADER] = reloader = Reloader(app, telemetry, config_file)
    app[LIFECYCLE] = lifecycle
    app.router.add_route("POST", "/-/reload", handle_reload)
    app.router.add_route("PUT", "/-/reload", handle_reload)
    if config.webhooks.enabled:
        app[WEBHOOK_HANDLER] = webhooks.setup(app, config, targets)
    if config.events.enabled:
        events.setup(app, config, targets)

    async def running(app: web.Application):
        states = [t.state for t in targets.values() if t.state is not None]
        for state in states:
            await state.start()
        # One collection at startup, so /-/ready can turn green before Prometheus's first scrape.
        collect = config.collect
        budget = collect.default_scrape_timeout - collect.timeout_margin
        probes = [asyncio.ensure_future(state.snapshot(budget, scrape=False)) for state in states]
        yield
        for probe in probes:
            probe.cancel()
        await reloader.close()
        for target in app[EXPORTER].targets.values():  # the ones running now: a reload may have replaced them
            if target.state is not None:
                await target.state.close()

    app.cleanup_ctx.append(running)
    return app


# Paths the exporter serves besides the telemetry path and the configured webhooks and events paths.
RESERVED_PATHS = ("/", "/-/healthy", "/-/ready", "/-/reload")
_PATH_CHARACTERS = re.compile(r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$")  # RFC 3986 path characters, no { }


def telemetry_path_problem(path: str, config: Config) -> str | None:
    """Why `path` cannot be the telemetry path (--web.telemetry-path), or None when it can."""
    if not path.startswith("/"):
        return f"--web.telemetry-path {path!r}: must start with /, like /metrics"
    if not _PATH_CHARACTERS.match(path):
        return f"--web.telemetry-path {path!r}: may hold only URL path characters (letters, digits, - . _ ~ / ...)"
    taken = {p: "the landing page" if p == "/" else p for p in RESERVED_PATHS}
    for section, what in ((config.webhooks, "webhooks.path"), (config.events, "events.path")):
        if section.enabled:
            taken[section.path] = f"{what} of the configuration"
    if path in taken:
        return f"--web.telemetry-path {path!r}: already served as {taken[path]}; choose another path, like /metrics"
    return None


def parse_listen_address(addr: str) -> tuple[str | None, int]:
    """':9784' -> (None, 9784): every address; '127.0.0.1:9784'; '[::1]:9784'."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--web.listen-address {addr!r}: expected HOST:PORT or :PORT, like :9784")
    # An empty host listens on every address, IPv6 included, as exporter-toolkit exporters do.
    return host.strip("[]") or None, int(port)
