"""The package stays lint-clean, formatted and type-checked: ruff and mypy, with the settings of pyproject.toml."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUFF = Path(sys.executable).with_name("ruff")


@pytest.mark.parametrize("args", [["check", "--no-cache"], ["format", "--check", "--no-cache"]], ids=["lint", "format"])
def test_ruff_is_clean_on_the_package(args):
    if not RUFF.exists():
        pytest.fail(f"{RUFF} is missing: the test extra installs ruff (make setup)")
    r = subprocess.run([str(RUFF), *args, "exporter/livekit_exporter"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"ruff {' '.join(args)}:\n{r.stdout}{r.stderr}\nfix with: .venv/bin/ruff check --fix exporter/livekit_exporter && .venv/bin/ruff format exporter/livekit_exporter"


def test_mypy_is_clean_on_the_package():
    mypy = Path(sys.executable).with_name("mypy")
    if not mypy.exists():
        pytest.fail(f"{mypy} is missing: the test extra installs mypy (make setup)")
    r = subprocess.run([str(mypy), "--no-incremental"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"mypy (files and settings in pyproject.toml):\n{r.stdout}{r.stderr}"


def test_the_rate_limited_log_keeps_the_count_and_bounds_its_kinds(caplog):
    import logging

    from livekit_exporter.logsetup import RateLimitedLog

    logger = logging.getLogger("livekit_exporter.test_rate_limited")
    caplog.set_level(logging.WARNING, logger=logger.name)
    now = [0.0]
    limited = RateLimitedLog(logger, "held back", lines=2, window=60, clock=lambda: now[0])
    assert [limited.warning("a", "line a", n=i) for i in range(5)] == [True, True, False, False, False]
    assert limited.warning("b", "line b")  # each kind its own budget
    now[0] = 59.9
    assert not limited.warning("a", "line a")
    now[0] = 60.0
    assert limited.warning("a", "line a")
    lines = [(r.getMessage(), getattr(r, "kind", None), getattr(r, "not_logged", None)) for r in caplog.records]
    assert lines == [("line a", None, None), ("line a", None, None), ("line b", None, None),
                     ("held back", "a", 4), ("line a", None, None)]
    # Whatever the caller passes as kinds, the map stays bounded.
    for i in range(RateLimitedLog.MAX_KINDS * 3):
        limited.warning(f"k{i}", "many")
    assert len(limited._windows) <= RateLimitedLog.MAX_KINDS + 1
