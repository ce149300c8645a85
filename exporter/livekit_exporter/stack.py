"""`make stack`: the docker-compose stack's demo profile without Docker, from the same files.

    python -m livekit_exporter.stack [--root DIR] [--data DIR] [--set KEY=YAML ...]

Runs `livekit-exporter demo` (the simulator and the exporter), Debian's `prometheus` with the
bundle's rules and `alertmanager` with the bundle's routes and templates, each on a free loopback
port; prints the URLs; stops everything on Ctrl+C (or SIGTERM) and exits 0.

Nothing is a second copy:
- prometheus.yml and the rules are rendered by the mixin generator from prometheus/mixin.yml, with
  loopback addresses set (`--set` adds more, e.g. shorter windows);
- Prometheus gets the flags docker-compose.yml gives it (retention, exemplar storage);
- alertmanager/alertmanager.yml is used as it is, but for its /run/secrets/ files, written here
  from the same .env entries docker-compose.yml turns into secrets (the environment overrides
  .env), and its templates' path, made absolute.
"""

from __future__ import annotations

import argparse
import contextlib
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

from .mixin import DEFAULT_CONFIG, MixinError, Mixin, load, parse_set
from .mixin.render import prometheus_yml, rule_files

SECRETS_DIR = "/run/secrets/"
# Debian names the Alertmanager binary prometheus-alertmanager.
BINARIES = {"prometheus": ("prometheus",), "alertmanager": ("alertmanager", "prometheus-alertmanager")}
READY_TIMEOUT = 60.0


class StackError(Exception):
    """What stops the stack from starting, said so that the user can fix it."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def binary(name: str) -> str:
    for candidate in BINARIES[name]:
        path = shutil.which(candidate)
        if path:
            return path
    package = "prometheus-alertmanager" if name == "alertmanager" else "prometheus"
    raise StackError(f"{name} is not installed: apt-get install {package} (Debian / Ubuntu)")


def read_env_file(path: Path) -> dict[str, str]:
    """A docker-compose .env file: KEY=VALUE lines, # comments, optional quotes."""
    out = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def compose(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "docker-compose.yml").read_text(encoding="utf-8"))


def compose_secrets(root: Path, environ: dict[str, str] | None = None) -> dict[str, str]:
    """docker-compose.yml's secrets -> their values, from the environment or else .env."""
    env = {**read_env_file(root / ".env"), **(os.environ if environ is None else environ)}
    out = {}
    for name, spec in compose(root).get("secrets", {}).items():
        var = spec.get("environment")
        if var is None:
            raise StackError(f"docker-compose.yml: secrets.{name}: only `environment:` secrets are supported here")
        if var not in env:
            raise StackError(f"secret {name}: set {var} in .env or in the environment")
        out[name] = env[var]
    return out


def prometheus_flags(root: Path) -> list[str]:
    """The flags docker-compose.yml gives Prometheus, but for the paths and addresses set here."""
    mine = ("--config.file", "--storage.tsdb.path", "--web.listen-address")
    return [f for f in compose(root)["services"]["prometheus"]["command"] if not f.startswith(mine)]


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
            name = node[len(SECRETS_DIR):]
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
    host: str = "127.0.0.1"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    urls: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        prometheus_bin, alertmanager_bin = binary("prometheus"), binary("alertmanager")
        ports = {name: free_port(self.host) for name in ("exporter", "simulator", "prometheus", "alertmanager")}
        addr = {name: f"{self.host}:{port}" for name, port in ports.items()}
        try:
            cfg = load(self.root / DEFAULT_CONFIG, {
                "prometheus.targets.exporter": [addr["exporter"]],
                "prometheus.targets.livekit_server": [addr["simulator"]],
                "prometheus.alertmanagers": [addr["alertmanager"]],
                **self.overrides,
            })
            files = {"prometheus/prometheus.yml": prometheus_yml(cfg), **rule_files(Mixin(cfg))}
        except MixinError as e:
            raise StackError(str(e)) from None
        for rel, text in files.items():
            path = self.data / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        am_config = alertmanager_config(self.root, self.data, compose_secrets(self.root))
        exe = Path(sys.executable).with_name("livekit-exporter")
        demo = [str(exe)] if exe.exists() else [sys.executable, "-m", "livekit_exporter.cli"]
        self._spawn("demo", [*demo, "demo", f"--web.listen-address={addr['exporter']}",
                             f"--simulator.listen-address={addr['simulator']}"])
        self._spawn("alertmanager", [alertmanager_bin, f"--config.file={am_config}",
                                     f"--storage.path={self.data / 'alertmanager-data'}",
                                     f"--web.listen-address={addr['alertmanager']}", "--cluster.listen-address="])
        self._spawn("prometheus", [prometheus_bin, f"--config.file={self.data / 'prometheus' / 'prometheus.yml'}",
                                   f"--storage.tsdb.path={self.data / 'prometheus-data'}",
                                   f"--web.listen-address={addr['prometheus']}", *prometheus_flags(self.root)])
        self.urls = {
            "exporter": f"http://{addr['exporter']}",
            "livekit_simulator": f"http://{addr['simulator']}",
            "prometheus": f"http://{addr['prometheus']}",
            "alertmanager": f"http://{addr['alertmanager']}",
        }
        self._wait_ready({"demo": f"{self.urls['exporter']}/-/healthy",
                          "alertmanager": f"{self.urls['alertmanager']}/-/ready",
                          "prometheus": f"{self.urls['prometheus']}/-/ready"})

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = (self.data / f"{name}.log").open("ab")
        # Its own process group: Ctrl+C in the terminal reaches only this process, which then
        # stops the children in order.
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True)

    def _wait_ready(self, checks: dict[str, str]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        for name, url in checks.items():
            while True:
                self.check_alive()
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(url, timeout=2) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise StackError(f"{name} did not become ready at {url} in {READY_TIMEOUT:.0f}s; "
                                     f"see {self.data / (name + '.log')}")
                time.sleep(0.2)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.data / f"{name}.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise StackError(f"{name} exited with {proc.returncode}: " + " | ".join(tail))

    def stop(self) -> dict[str, int]:
        """SIGTERM to each (the last started first), SIGKILL after 10 s; their exit codes."""
        codes = {}
        for name, proc in reversed(list(self.procs.items())):
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
    p.add_argument("--data", type=Path, default=None,
                   help="where the rendered files, data and logs go (default: a temporary directory, removed at exit)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=YAML",
                   help="a prometheus/mixin.yml value for this run, e.g. prometheus.scrape_interval=5s")
    args = p.parse_args(argv)
    data = args.data or Path(tempfile.mkdtemp(prefix="livekit-stack-"))
    data.mkdir(parents=True, exist_ok=True)
    stopping = []

    def on_signal(signum: int, _frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stack = None
    try:
        stack = Stack(args.root.resolve(), data.resolve(), parse_set(args.overrides))
        stack.start()
        width = max(map(len, stack.urls))
        for name, url in stack.urls.items():
            print(f"{name.replace('_', ' '):<{width}}  {url}", flush=True)
        print(f"{'data and logs':<{width}}  {data}", flush=True)
        print("Grafana is not part of the native stack: import grafana/dashboards/*.json with the Prometheus "
              "URL above as the datasource. Press Ctrl+C to stop.", flush=True)
        while not stopping:
            stack.check_alive()
            time.sleep(0.2)
        return 0
    except (StackError, MixinError) as e:
        print(f"stack: {e}", file=sys.stderr)
        return 1
    finally:
        if stack is not None:
            codes = stack.stop()
            print("stopped: " + ", ".join(f"{n} (exit {c})" for n, c in codes.items()), flush=True)
        if args.data is None:
            shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
