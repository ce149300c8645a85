"""Logging in the Prometheus exporter style: logfmt (default) or JSON, one line per record.

Configured secrets are scrubbed from every line as a second line of defence: the code never
formats a secret into a message on purpose.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


def _logfmt_value(v: object) -> str:
    s = str(v)
    if s == "" or any(c in s for c in ' ="\n\t'):
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return s


class _Formatter(logging.Formatter):
    def __init__(self, fmt: str, secrets: Iterable[str]):
        super().__init__()
        self.fmt = fmt
        self.secrets = [s for s in secrets if s]

    def _scrub(self, text: str) -> str:
        for s in self.secrets:
            if s in text:
                text = text.replace(s, "<redacted>")
        return text

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                fields[k] = v
        if record.exc_info:
            fields["err"] = self.formatException(record.exc_info)
        if self.fmt == "json":
            line = json.dumps(fields, default=str)
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        return self._scrub(line)


def setup(level: str = "info", fmt: str = "logfmt", secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt, secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is per request; keep it only at debug.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


class RateLimitedLog:
    """Warnings of each kind (a bounded set: a rejection reason, a client failure), at most `lines`
    per `window` seconds. When a window in which some were held back is over, the next warning of
    that kind is preceded by one `summary` line saying how many (`not_logged`) over how long: the
    count is never lost, only the repetition.

    One helper for every "log it, but not a flood of it" in the package."""

    MAX_KINDS = 1000  # kinds beyond this many share one budget: the map stays bounded whatever calls it

    def __init__(
        self,
        logger: logging.Logger,
        summary: str,
        lines: int,
        window: float,
        clock: Callable[[], float] = time.monotonic,
        kind_field: str = "kind",
    ) -> None:
        self.logger, self.summary, self.lines, self.window, self._clock = logger, summary, lines, window, clock
        self.kind_field = kind_field  # the summary line's name for the kind (e.g. reason)
        self._windows: dict[str, list[float]] = {}  # kind -> [window start, lines logged, lines held back]

    def warning(self, kind: str, message: str, **extra: object) -> bool:
        """Logs `message` unless the kind's budget for this window is spent; True when logged."""
        if kind not in self._windows and len(self._windows) >= self.MAX_KINDS:
            kind = "__other__"
        now = self._clock()
        w = self._windows.get(kind)
        if w is None or now - w[0] >= self.window:
            if w is not None and w[2]:
                self.logger.warning(
                    self.summary,
                    extra={self.kind_field: kind, "not_logged": int(w[2]), "seconds": round(now - w[0])},
                )
            w = self._windows[kind] = [now, 0, 0]
        if w[1] < self.lines:
            w[1] += 1
            self.logger.warning(message, extra=extra)
            return True
        w[2] += 1
        return False
