"""The package stays lint-clean and formatted: ruff, with the rules and line length of pyproject.toml."""

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
