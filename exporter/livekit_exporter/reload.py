"""Reloading the configuration of a running exporter (SIGHUP, or POST /-/reload with
--web.enable-lifecycle), as Prometheus reloads its own: the file is read and checked again, and
either the whole new configuration runs or, when anything is wrong with it, the old one keeps
running and the log and livekit_exporter_config_last_reload_successful say why.

What a reload keeps: every metric and its values (the Telemetry registry and the families in it are
never rebuilt), the webhook deduplication ids, the events API's Idempotency-Keys and active calls.
What it changes: the LiveKit URL, key pair and collection settings (a new StateCollector takes over;
the old one finishes the collection in flight and closes), the webhook key pairs, the events tokens,
prices and max_latency, and every server.* limit. Keys whose running state is shaped by them (paths,
enabled switches, label bounds, buckets, TTLs and cache sizes, max_body_bytes: aiohttp's outer bound is
set at start) cannot change without a restart: a reload that changes one fails and names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import fields

from aiohttp import web

from . import config as config_mod
from .config import Config
from .events import HANDLER as EVENTS_HANDLER
from .events import EventsHandler
from .events.pipeline import PriceTable
from .livekit_state import StateCollector
from .projects import livekit_servers, webhook_signers
from .telemetry import Telemetry
from .webhooks import WebhookHandler

log = logging.getLogger(__name__)

# section -> the keys a reload may change; every other key of the section (and every key of a section
# not listed) needs a restart. Unlisted means restart-only, so a key added later is safe by default.
RELOADABLE: dict[str, frozenset[str] | None] = {
    "livekit": None,  # None: every key of the section
    "projects": None,  # but not the list of their names (project_names_changed)
    "collect": None,
    "server": None,
    "webhooks": frozenset({"keys"}),
    "events": frozenset({"tokens", "token_files", "max_events", "max_latency", "prices"}),
}
WEBHOOK_HANDLER = web.AppKey("webhook_handler", WebhookHandler)


def restart_only_changes(old: Config, new: Config) -> list[str]:
    """The keys that differ between `old` and `new` and that a reload cannot change."""
    changed = []
    for section in fields(Config):
        if section.name == "source":
            continue
        before, after = getattr(old, section.name), getattr(new, section.name)
        allowed = RELOADABLE.get(section.name, frozenset())
        if allowed is None:
            continue
        for key in fields(before):
            if key.name not in allowed and getattr(before, key.name) != getattr(after, key.name):
                changed.append(f"{section.name}.{key.name}")
    return changed


def project_names_changed(old: Config, new: Config) -> bool:
    """Projects added, removed or renamed (or the livekit section swapped for projects): each is a
    scrape target with its own registry, made at start."""
    return [p.name for p in old.projects] != [p.name for p in new.projects]


class Reloader:
    """Reads `path` again and swaps the running configuration in, or keeps it and says why."""

    def __init__(self, app: web.Application, telemetry: Telemetry, path: str | None):
        self.app, self.path = app, path
        self.on_reload: list[Callable[[Config], None]] = []  # e.g. the CLI's log scrubber, given new secrets
        self.successful = telemetry.gauge(
            "livekit_exporter_config_last_reload_successful",
            "1 when the last configuration reload (SIGHUP, POST /-/reload) succeeded, 0 when it failed "
            "and the previous configuration kept running.",
        )
        self.success_time = telemetry.gauge(
            "livekit_exporter_config_last_reload_success_timestamp_seconds",
            "When the running configuration was loaded (at start, or by the last successful reload).",
        )
        self.successful.set(1)
        self.success_time.set_to_current_time()
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()

    async def reload(self, trigger: str) -> list[str]:
        """Reloads; returns the problems that kept the old configuration ([] when it was replaced)."""
        async with self._lock:  # one at a time: a second SIGHUP waits for the first
            try:
                new = await asyncio.get_running_loop().run_in_executor(None, config_mod.load, self.path)
                problems = await self._apply(new)
            except config_mod.ConfigError as e:
                problems = e.problems
            except Exception:  # a bug of ours: the running configuration is kept all the same
                log.exception("configuration reload failed in the exporter (a bug: please report it)")
                problems = ["the exporter failed while applying the configuration (a bug: see the log)"]
            if problems:
                self.successful.set(0)
                log.warning(
                    "configuration reload failed: the previous configuration keeps running",
                    extra={"trigger": trigger, "config": self.path or "<environment>", "problems": problems},
                )
                return problems
            self.successful.set(1)
            self.success_time.set_to_current_time()
            log.info("configuration reloaded", extra={"trigger": trigger, "config": new.source})
            return []

    async def _apply(self, new: Config) -> list[str]:
        from .server import EXPORTER, telemetry_path_problem  # server imports this module

        ex = self.app[EXPORTER]
        old = ex.config
        problems = [
            f"{key}: changed; it takes effect only when the exporter restarts (restore it to reload the rest)"
            for key in restart_only_changes(old, new)
        ]
        if project_names_changed(old, new):
            problems.append(
                "projects: a project was added, removed or renamed; that takes effect only when the exporter "
                "restarts (restore the names to reload the rest)"
            )
        if problem := telemetry_path_problem(ex.telemetry_path, new):
            problems.append(problem)
        if problems:
            return problems
        replaced: dict[str, StateCollector] = {}
        before, after = livekit_servers(old), livekit_servers(new)
        for name, livekit in after.items():
            target = ex.targets[name]
            if target.state is not None and (livekit, new.collect) != (before[name], old.collect):
                state = replaced[name] = StateCollector(livekit, new.collect, target.telemetry, name)
                await state.start()
                state.answered_once = target.state.answered_once  # readiness is not lost to a reload
        for listener in self.on_reload:
            listener(new)
        # From here nothing awaits: the swap is one step for the requests to come (one being served may
        # see the new limits from its next line on).
        if WEBHOOK_HANDLER in self.app:
            hooks = self.app[WEBHOOK_HANDLER]
            seen, rejections = hooks.seen, hooks.rejections  # dedup ids: restart-only settings
            WebhookHandler.__init__(hooks, new.webhooks, webhook_signers(new), hooks.metrics, hooks.unattributed)
            hooks.seen, hooks.rejections = seen, rejections
        if EVENTS_HANDLER in self.app:
            handler = self.app[EVENTS_HANDLER]
            pipelines, idempotency = handler.pipelines, handler.idempotency
            prices = PriceTable(new.events.prices)
            for pipeline in pipelines.values():
                pipeline.config, pipeline.prices, pipeline.max_latency = new.events, prices, new.events.max_latency
            # tokens and limits from the new configuration
            EventsHandler.__init__(handler, new, pipelines, handler.unattributed)
            handler.idempotency = idempotency
        ex.config = new
        for name, state in replaced.items():
            target = ex.targets[name]
            previous, target.state = target.state, state
            assert previous is not None  # only a target with a state is given a new one
            task = asyncio.create_task(self._retire(previous, old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        return []

    async def _retire(self, state: StateCollector, config: Config) -> None:
        """Closes a replaced collector once the collection scrapes may still be waiting on is over."""
        inflight = state._inflight  # the collection in flight, if any: its scrapes get its answer
        try:
            if inflight is not None and not inflight.done():
                await asyncio.wait({inflight}, timeout=config.collect.max_scrape_timeout)
        finally:  # cancelled at shutdown: closed at once
            await state.close()

    async def close(self) -> None:
        """At shutdown: the replaced collectors still closing are closed now."""
        for task in list(self._closing):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


RELOADER = web.AppKey("reloader", Reloader)
