"""prometheus/mixin.yml -> a checked, read-tracked view of it.

Every key is required and every key must be read by the generator: a missing key names its YAML
path; a key nothing reads (a typo, a key from another version) is refused too, so a threshold a
user edits always reaches a rule.
"""

from __future__ import annotations

import argparse
import copy
import re
from pathlib import Path
from typing import Any

import yaml

_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")


class MixinError(Exception):
    """A mixin configuration that cannot be generated; the message says where and what to do."""


def seconds(text: str) -> float:
    """A Prometheus duration ('1h30m', '1w') in seconds."""
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ValueError(f"{text!r} is not a Prometheus duration (like 30s, 5m, 1h, 1d, 1w)")
    return sum(int(n) * _UNITS[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text))


def config_seconds(value: Any, where: str) -> float:
    """seconds(value) of a configured duration, or a MixinError that starts with `where` (file: key)."""
    try:
        return seconds(value)
    except ValueError as e:
        raise MixinError(f"{where}: {e}") from None


def add_set_option(parser: argparse.ArgumentParser, *, dest: str, metavar: str, help: str) -> None:
    """The repeatable `--set KEY=VALUE` of the commands that load the configuration (see parse_set)."""
    parser.add_argument("--set", dest=dest, action="append", default=[], metavar=metavar, help=help)


class Node:
    """A mapping of the configuration that remembers which keys were read."""

    def __init__(
        self, data: dict[str, Any], path: str, source: str, reads: set[str], ctx: dict[str, Any] | None = None
    ):
        self._data, self._path, self._source, self._reads = data, path, source, reads
        self._ctx = {} if ctx is None else ctx  # shared by every node of one configuration

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def __getitem__(self, key: str) -> Any:
        where = self._where(key)
        if key not in self._data:
            raise MixinError(f"{self._source}: {where} is missing: every key is required (see prometheus/mixin.yml)")
        self._reads.add(where)
        value = self._data[key]
        if isinstance(value, dict):
            return Node(value, where, self._source, self._reads, self._ctx)
        return value

    @property
    def source(self) -> str:
        return self._source

    def __contains__(self, key: object) -> bool:
        """Whether an optional key is set (reading it is still node[key])."""
        return key in self._data

    def get(self, key: str, default: Any = None) -> Any:
        """An optional key: its value (read like node[key]), or `default` when it is not set."""
        return self[key] if key in self._data else default

    def keys(self) -> list[str]:
        return list(self._data)

    def skip(self) -> None:
        """Marks the whole section as read (a disabled optional group)."""

        def walk(d: dict[str, Any], path: str) -> None:
            for k, v in d.items():
                self._reads.add(f"{path}.{k}")
                if isinstance(v, dict):
                    walk(v, f"{path}.{k}")

        walk(self._data, self._path)

    def mappings(self, key: str, allowed: set[str]) -> list[Node]:
        """A list of mappings, each read like a section; keys outside `allowed` are refused."""
        where = self._where(key)
        out = []
        for i, item in enumerate(self.nonempty_list(key, "mappings")):
            if not isinstance(item, dict):
                raise MixinError(f"{self._source}: {where}[{i}]: expected a mapping")
            extra = set(item) - allowed
            if extra:
                raise MixinError(
                    f"{self._source}: {where}[{i}]: unknown key {', '.join(sorted(extra))} "
                    f"(known: {', '.join(sorted(allowed))})"
                )
            out.append(Node(item, f"{where}[{i}]", self._source, self._reads, self._ctx))
        return out

    def nonempty_list(self, key: str, of: str) -> list[Any]:
        """A list with at least one item; `of` names its items in the error (e.g. "mappings")."""
        value = self[key]
        if not isinstance(value, list) or not value:
            raise MixinError(f"{self._source}: {self._where(key)}: expected a non-empty list of {of}")
        return value

    def items(self) -> list[tuple[str, Any]]:
        return [(k, self[k]) for k in self._data]

    def duration(self, key: str, *, positive: bool = False) -> str:
        value = self[key]
        s = config_seconds(value, f"{self._source}: {self._where(key)}")
        if positive and s <= 0:
            raise MixinError(f"{self._source}: {self._where(key)}: {value} must be longer than 0s")
        return value

    def window(self, key: str = "window") -> str:
        """A range for rate() / increase() / *_over_time(): at least two scrape intervals long, or
        it holds one sample and the rule never fires."""
        value = self.duration(key, positive=True)
        low = self._ctx.get("min_window")
        if low and seconds(value) < low:
            raise MixinError(
                f"{self._source}: {self._where(key)}: {value} is shorter than two scrape intervals "
                f"({low:g}s): rate() and increase() need two samples in the window; use at least {low:g}s"
            )
        return value

    def number(self, key: str, *, low: float | None = None, high: float | None = None) -> float:
        value = self[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MixinError(f"{self._source}: {self._where(key)}: {value!r} is not a number")
        if (low is not None and value < low) or (high is not None and value > high):
            raise MixinError(f"{self._source}: {self._where(key)}: {value} is outside [{low}, {high}]")
        return value

    def ratio(self, key: str) -> float:
        return self.number(key, low=0, high=1)

    def strings(self, key: str) -> list[str]:
        value = self[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise MixinError(f"{self._source}: {self._where(key)}: expected a list of non-empty strings")
        return value


class MixinConfig(Node):
    """The root: load() it, read it while generating, then unread() lists what nothing read."""

    def __init__(self, data: dict[str, Any], source: str):
        super().__init__(data, "", source, set(), {})
        self.raw = data

    def unread(self) -> list[str]:
        out = []

        def walk(d: dict[str, Any], path: str) -> None:
            for k, v in d.items():
                where = f"{path}.{k}" if path else k
                if isinstance(v, dict) and v and where in self._reads:
                    walk(v, where)
                elif where not in self._reads:
                    out.append(where)

        walk(self.raw, "")
        return out


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> MixinConfig:
    """Reads the YAML file; `overrides` ({"a.b.c": value}) replace single keys (tests, `--set`)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise MixinError(f"{path}: cannot be read as YAML: {e}") from None
    if not isinstance(data, dict):
        raise MixinError(f"{path}: expected a mapping at the top level")
    data = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        *parents, last = dotted.split(".")
        node = data
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise MixinError(f"override {dotted}: {p} is not a section of {path}")
            node = node[p]
        if last not in node:
            raise MixinError(f"override {dotted}: no such key in {path}")
        node[last] = value
    return MixinConfig(data, str(path))
