"""Generated files are committed and must be current."""

from __future__ import annotations

import asyncio
from pathlib import Path

from livekit_exporter import metricsdoc

ROOT = Path(__file__).parent.parent


def test_docs_metrics_md_is_current():
    text, labelnames = asyncio.run(metricsdoc._collect())
    expected = metricsdoc.render(text, labelnames)
    current = (ROOT / "docs" / "metrics.md").read_text()
    assert current == expected, (
        "docs/metrics.md is stale: run `.venv/bin/python -m livekit_exporter.metricsdoc > docs/metrics.md`"
    )


def test_readme_names_the_two_commands_ci_runs():
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
