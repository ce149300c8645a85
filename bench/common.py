"""Helpers shared by the benchmark scripts (each script runs standalone: `python bench/bench_X.py`)."""

from __future__ import annotations

import socket
import subprocess
import time


def free_port() -> int:
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


class ListSink:
    """Stands in for the push client: keeps what is emitted, at the cost of a list append."""

    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event) -> bool:
        self.events.append(event)
        return True
