"""Command line: `livekit-exporter [serve] [flags]`, `livekit-exporter demo`, `livekit-exporter check-config FILE`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import urllib.parse
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from . import __version__, logsetup, webconfig
from . import config as config_mod
from .httpguard import ExporterRunner
from .reload import RELOADER
from .server import (
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_TELEMETRY_PATH,
    EXPORTER,
    build_app,
    parse_listen_address,
    telemetry_path_problem,
)

log = logging.getLogger("livekit_exporter")


# Each flag once: (flag, dest, what argparse takes beyond them). Exporter-style names (--web.*, --log.*).
COMMON_FLAGS: tuple[tuple[str, str, dict], ...] = (
    ("--web.listen-address", "listen_address",
     {"default": DEFAULT_LISTEN_ADDRESS, "help": f"address to listen on (default {DEFAULT_LISTEN_ADDRESS})"}),
    ("--web.telemetry-path", "telemetry_path",
     {"default": DEFAULT_TELEMETRY_PATH, "help": f"path of the metrics endpoint (default {DEFAULT_TELEMETRY_PATH})"}),
    ("--log.level", "log_level",
     {"default": "info", "choices": ["debug", "info", "warn", "error"], "help": "log level (default info)"}),
    ("--log.format", "log_format",
     {"default": "logfmt", "choices": ["logfmt", "json"], "help": "log line format (default logfmt)"}),
)  # fmt: skip
SERVE_FLAGS: tuple[tuple[str, str, dict], ...] = (
    ("--web.config.file", "web_config_file",
     {"default": None, "help": "exporter-toolkit style file for TLS and basic auth of the exporter's endpoints"}),
    ("--web.enable-lifecycle", "enable_lifecycle",
     {"action": "store_true",
      "help": "let POST /-/reload reload the configuration, as SIGHUP does (off by default, as in Prometheus)"}),
    ("--config.file", "config_file",
     {"default": None,
      "help": "YAML configuration file (LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET fill or override it)"}),
)  # fmt: skip
DEMO_FLAGS: tuple[tuple[str, str, dict], ...] = (
    ("--simulator.listen-address", "simulator_address",
     {"default": "127.0.0.1:0",
      "help": "address of the simulated LiveKit: its Twirp API and, at /metrics, LiveKit server's own metrics "
              "(default 127.0.0.1:0, a free loopback port)"}),
)  # fmt: skip


def _add_flags(p: argparse.ArgumentParser, *tables: tuple[tuple[str, str, dict], ...]) -> None:
    for table in tables:
        for flag, dest, options in table:
            p.add_argument(flag, dest=dest, **options)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="livekit-exporter",
        description="Prometheus exporter for LiveKit server state, webhooks and voice agents.",
    )
    p.add_argument("--version", action="version", version=f"livekit-exporter {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{serve,demo,check-config}")
    _add_flags(sub.add_parser("serve", help="run the exporter (the default)"), COMMON_FLAGS, SERVE_FLAGS)
    demo = sub.add_parser("demo", help="run a simulated LiveKit and the exporter pointed at it")
    _add_flags(demo, COMMON_FLAGS, DEMO_FLAGS)
    check = sub.add_parser("check-config", help="validate a configuration file; exit 2 if it is bad")
    check.add_argument("file")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        argv.insert(0, "serve")
    args = parser().parse_args(argv)
    if args.command == "check-config":
        return check_config(args.file)
    try:
        host, port = parse_listen_address(args.listen_address)
    except ValueError as e:
        print(f"livekit-exporter: {e}", file=sys.stderr)
        return 2
    level = "warning" if args.log_level == "warn" else args.log_level
    if args.command == "demo":
        from .demo import run_demo

        try:
            sim_host, sim_port = parse_listen_address(args.simulator_address)
        except ValueError as e:
            print(
                f"livekit-exporter: {str(e).replace('--web.listen-address', '--simulator.listen-address')}",
                file=sys.stderr,
            )
            return 2
        problem = telemetry_path_problem(args.telemetry_path, config_mod.Config())  # the demo's paths
        if problem:
            print(f"livekit-exporter: {problem}", file=sys.stderr)
            return 2
        logsetup.setup(level, args.log_format)
        # Until run_demo's own handler is in place, SIGTERM stops it as Ctrl+C does.
        signal.signal(signal.SIGTERM, _interrupt)
        return _listening(run_demo(host, port, args.telemetry_path, simulator=(sim_host, sim_port)))
    try:
        cfg = config_mod.load(args.config_file)
        web_cfg = webconfig.load(args.web_config_file) if args.web_config_file else webconfig.WebConfig()
    except config_mod.ConfigError as e:
        print("livekit-exporter: the configuration is not usable:", file=sys.stderr)
        for problem in e.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    problem = telemetry_path_problem(args.telemetry_path, cfg)
    if problem:
        print(f"livekit-exporter: {problem}", file=sys.stderr)
        return 2
    logsetup.setup(level, args.log_format, _secrets(cfg))
    app = build_app(
        cfg,
        telemetry_path=args.telemetry_path,
        web_config=web_cfg,
        config_file=args.config_file,
        lifecycle=args.enable_lifecycle,
    )
    scrubbed = _secrets(cfg)

    def rescrub(new: config_mod.Config) -> None:  # the log scrubber learns a reload's secrets too
        scrubbed.extend(s for s in _secrets(new) if s not in scrubbed)
        logsetup.setup(level, args.log_format, scrubbed)

    app[RELOADER].on_reload.append(rescrub)
    log.info(
        "starting livekit-exporter",
        extra={
            "version": __version__,
            "address": f"{host or '*'}:{port}",
            "livekit": cfg.livekit.shown_url,
            "config": cfg.source,
            "tls": web_cfg.ssl_context is not None,
            "basic_auth": bool(web_cfg.basic_auth_users),
        },
    )
    return _listening(_serve(app, host, port, web_cfg))


def _listening(server: Coroutine[Any, Any, None]) -> int:
    """Runs `server` to its end: 0, or 1 when it cannot listen (an address in use, or not ours)."""
    try:
        asyncio.run(server)
    except KeyboardInterrupt:  # the demo stops on Ctrl+C (and SIGTERM, made the same); serve drains first
        pass
    except OSError as e:
        print(f"livekit-exporter: cannot listen: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def _secrets(cfg: config_mod.Config) -> list[str]:
    """Every secret of a configuration, for the log's scrubber."""
    servers = [cfg.livekit, *(p.livekit for p in cfg.projects)]
    keys = [*cfg.webhooks.keys, *(k for p in cfg.projects for k in p.webhook_keys)]
    tokens = [*cfg.events.tokens, *(t for p in cfg.projects for t in p.events_tokens)]
    return [
        *(lk.api_secret.reveal() for lk in servers),
        *(k.api_secret.reveal() for k in keys),
        *(t.reveal() for t in tokens),
        # a password in a URL, should one be there
        *(urllib.parse.urlsplit(lk.url).password or "" for lk in servers),
    ]


async def _serve(app: web.Application, host: str | None, port: int, web_cfg: webconfig.WebConfig) -> None:
    """Serves until SIGTERM or SIGINT, then drains: no new connections, the requests in flight get
    server.shutdown_grace to finish (the rest are cancelled), the app is cleaned up. SIGHUP reloads
    the configuration (reload.py)."""
    loop = asyncio.get_running_loop()
    runner = ExporterRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[list[str]]] = set()

    def on_sighup() -> None:
        task = asyncio.create_task(app[RELOADER].reload("SIGHUP"))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    try:
        await web.TCPSite(runner, host, port, ssl_context=web_cfg.ssl_context).start()
        log.info("listening", extra={"address": f"{host or '*'}:{port}"})
        await stop.wait()
        grace = app[EXPORTER].config.server.shutdown_grace
        log.info("shutting down: finishing the requests in flight", extra={"grace_seconds": float(grace)})
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("stopped")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def check_config(path: str) -> int:
    try:
        config_mod.load(path)
    except config_mod.ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        return 2
    print(f"{path}: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
