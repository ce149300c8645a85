"""Helpers shared by the benchmark scripts (each script runs standalone: `python bench/bench_X.py`)."""

from __future__ import annotations

import argparse
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A loopback port nothing listens on now (for a server to take, or to be refused on)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Returns once something accepts connections on the port; exits if the server died first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server on port {port} exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop_process(proc: subprocess.Popen) -> None:
    """Terminates a process this one started, and kills it if it has not exited 10 s later."""
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def rss_mb(pid: int, *, missing: float | None = None) -> float:
    """A process's resident memory in MB (VmRSS of /proc/PID/status); a process without one (a
    zombie) has `missing`, or exits the script when that is None."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    if missing is None:
        raise SystemExit(f"no VmRSS for {pid}")
    return missing


def start_prometheus(binary: str, config: Path, data: Path, port: int, *flags: str) -> subprocess.Popen:
    """Prometheus on 127.0.0.1:PORT with this configuration file and TSDB directory (its output dropped)."""
    return subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={data}",
                             f"--web.listen-address=127.0.0.1:{port}", *flags],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class ListSink:
    """Stands in for the push client: keeps what is emitted, at the cost of a list append."""

    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event) -> bool:
        self.events.append(event)
        return True


# -- the simulated LiveKit (bench/soak.py, tests/test_dashboards.py) -------------------------------
# The imports are in the functions: this module is imported before some scripts choose which
# exporter/ (BENCH_EXPORTER_SRC) is on sys.path.


def add_busy_room(scenario: Any, room: str, rng: random.Random, trunk: Any, *, max_participants: int) -> tuple[Any, Any]:
    """A room of the simulator's Scenario with 1 to 4 users (audio; every other one video too), an
    agent with a running support-agent dispatch, and an active SIP call on `trunk`.
    Returns (the dispatch, the SIP participant), for end_busy_room_call()."""
    from livekit.protocol import agent as proto_agent
    from livekit.protocol import models as proto_models

    from livekit_exporter.simulator.scenario import Kind

    audio, video = (proto_models.AUDIO, proto_models.MICROPHONE), (proto_models.VIDEO, proto_models.CAMERA)
    scenario.add_room(room, max_participants=max_participants)
    for j in range(rng.randint(1, 4)):
        scenario.add_participant(room, f"u{j}", tracks=[audio, video][: 1 + j % 2])
    scenario.add_participant(room, "agent", kind=Kind.AGENT, tracks=[audio])
    dispatch = scenario.add_dispatch(room, "support-agent", [proto_agent.JS_RUNNING])
    return dispatch, scenario.add_sip_call(room, trunk, "active")


def end_busy_room_call(scenario: Any, room: str, dispatch: Any, sip: Any, *, user_unavailable: bool) -> None:
    """The SIP caller of add_busy_room() leaves (USER_UNAVAILABLE or CLIENT_INITIATED), the agent's job succeeds."""
    from livekit.protocol import agent as proto_agent
    from livekit.protocol import models as proto_models

    reasons = proto_models.DisconnectReason
    scenario.remove_participant(room, sip.identity, reasons.USER_UNAVAILABLE if user_unavailable else reasons.CLIENT_INITIATED)
    scenario.set_job_status(room, dispatch.id, 0, proto_agent.JS_SUCCESS)


# The voice-agent fleet's Truth (simulator/voice_agents.py) and the series the exporter shows it as:
# per Truth field, the sample name and its label names, in the order of the field's keys.
FLEET_SERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "calls_started": ("voice_agent_calls_started_total", ("agent", "direction", "campaign")),
    "calls_answered": ("voice_agent_calls_answered_total", ("agent", "direction", "campaign", "answered_by")),
    "calls_ended": ("voice_agent_calls_ended_total", ("agent", "direction", "campaign", "outcome")),
    "active": ("voice_agent_calls_active", ("agent", "direction")),
    "queued": ("voice_agent_calls_queued", ("agent", "campaign")),
    "campaign_running": ("voice_agent_campaign_running", ("campaign",)),
    "turns": ("voice_agent_turns_total", ("agent", "interrupted")),
    "interruptions": ("voice_agent_interruptions_total", ("agent",)),
    "llm_tokens": ("voice_agent_llm_tokens_total", ("agent", "provider", "model", "type")),
    "tts_characters": ("voice_agent_tts_characters_total", ("agent", "provider", "model")),
    "stt_audio_seconds": ("voice_agent_stt_audio_seconds_total", ("agent", "provider", "model")),
    "tool_calls": ("voice_agent_tool_call_duration_seconds_count", ("agent", "tool")),
    "errors": ("voice_agent_errors_total", ("agent", "component", "type", "recoverable")),
    "events": ("livekit_exporter_events_total", ("type",)),
}


def fleet_series(truth: Any, *fields: str) -> Iterator[tuple[str, str, dict[str, str], float]]:
    """(field, sample name, labels, what the fleet sent) for every key of the Truth fields named, in order."""
    for truth_field in fields:
        name, label_names = FLEET_SERIES[truth_field]
        for key, sent in getattr(truth, truth_field).items():
            yield truth_field, name, dict(zip(label_names, key if isinstance(key, tuple) else (key,), strict=True)), sent


# -- scripts that start their servers as copies of themselves ---------------------------------


def parse_args(parser: argparse.ArgumentParser, serve: Callable[[str, int], None]) -> argparse.Namespace:
    """The script's options; with the hidden `--serve KIND PORT` (how start_server runs the script),
    serves KIND on PORT instead and exits when the server stops."""
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        sys.exit(0)
    return args


def start_server(script: str, kind: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    """Runs `script --serve KIND PORT` on a free port; returns (the process, the port) once it listens."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, script, "--serve", kind, str(port)], env=env)
    wait_listening(port, proc)
    return proc, port


# -- wrk -----------------------------------------------------------------------------------------


def require_wrk() -> None:
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (Debian package: wrk)")


# The end of every wrk Lua script here: one RESULT line, which wrk_result() reads.
WRK_RESULT_LUA = r"""function done(summary, latency, requests)
  io.write(string.format("RESULT requests=%d seconds=%.3f p50_us=%d p99_us=%d non2xx=%d errors=%d\n",
    summary.requests, summary.duration / 1e6, latency:percentile(50), latency:percentile(99),
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def wrk_result(out: str) -> dict[str, float]:
    """wrk's output -> requests, seconds, p50_us, p99_us, non2xx, errors (the RESULT line)."""
    match = re.search(r"RESULT (.*)", out)
    if not match:
        raise SystemExit(f"wrk printed no result:\n{out}")
    return {k: float(v) for k, v in (kv.split("=") for kv in match.group(1).split())}


def medians(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per kind of run, the median of each of its measures over the rounds."""
    return {kind: {m: statistics.median(r[m] for r in rounds) for m in rounds[0]} for kind, rounds in runs.items()}


# -- structured results (`--json PATH`, what `python -m bench` collects) --------------------------


def spread(values: list[float], unit: str) -> dict[str, float | int | str]:
    """Median and spread of one measure over its rounds (nearest-rank percentiles)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")

    def pct(q: float) -> float:
        return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]

    return {"unit": unit, "n": len(xs), "median": statistics.median(xs), "p10": pct(0.10), "p90": pct(0.90),
            "p99": pct(0.99), "min": xs[0], "max": xs[-1]}


class Result:
    """What one benchmark script measured, written as JSON with `--json PATH`:

    - measures: name -> spread() of its rounds (median, p10, p90, p99, min, max, unit, n);
    - ratios: name -> value, what it divides (of / to: two measures of the same run), its meaning, and
      the target if the project has one (op "<=" or ">=", target, met);
    - facts: single figures (API calls per scrape, bytes served, RSS, ...);
    - params: the options of the run.
    """

    def __init__(self, benchmark: str, params: dict | None = None) -> None:
        params = {k: v for k, v in (params or {}).items() if k not in ("json", "serve")}
        self.data: dict = {"benchmark": benchmark, "params": params, "measures": {}, "ratios": {}, "facts": {}}

    def measure(self, name: str, values: list[float], unit: str) -> dict:
        self.data["measures"][name] = spread(values, unit)
        return self.data["measures"][name]

    def ratio(self, name: str, of: str, to: str, meaning: str, *, target: float | None = None,
              op: str = "<=", value: float | None = None) -> float:
        """of / to, medians of two measures of this run (or `value` when it is derived otherwise)."""
        if value is None:
            value = self.data["measures"][of]["median"] / self.data["measures"][to]["median"]
        entry: dict = {"value": value, "of": of, "to": to, "meaning": meaning}
        if target is not None:
            entry.update(op=op, target=target, met=bool(value <= target if op == "<=" else value >= target))
        self.data["ratios"][name] = entry
        return value

    def ratios(self, *rows: tuple[str, str, str, str]) -> None:
        """A table of ratios without targets: (name, of, to, meaning) each, as ratio() takes them."""
        for name, of, to, meaning in rows:
            self.ratio(name, of, to, meaning)

    def fact(self, name: str, value: float | int | str, unit: str = "") -> None:
        self.data["facts"][name] = {"value": value, "unit": unit}

    def write(self, path: str | None) -> None:
        if path:
            import json

            with open(path, "w") as f:
                json.dump(self.data, f, indent=2)


def add_json_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH (for python -m bench)")


def bench_options(description: str | None, **options: Any) -> argparse.ArgumentParser:
    """A script's parser from a table of NAME=DEFAULT or NAME=(DEFAULT, HELP), in order: the option
    --NAME (underscores as dashes), of its default's type; a False default makes a switch
    (store_true). Then --json PATH (add_json_arg)."""
    parser = argparse.ArgumentParser(description=description)
    for name, spec in options.items():
        default, help_text = spec if isinstance(spec, tuple) else (spec, None)
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true", help=help_text)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=help_text)
    add_json_arg(parser)
    return parser
