"""python -m livekit_exporter.mixin [--config FILE] [--out DIR] [--set KEY=VALUE ...] [--check]"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import DEFAULT_CONFIG, MixinError, generate, load, parse_set, stale, write
from .config import add_set_option


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m livekit_exporter.mixin", description=__doc__)
    ap.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help="the mixin configuration (default: %(default)s)"
    )
    ap.add_argument("--out", type=Path, default=Path("."), help="where prometheus/ and docs/ are written (default: .)")
    add_set_option(
        ap,
        dest="set",
        metavar="KEY=VALUE",
        help="override one key, VALUE in YAML (repeatable), e.g. prometheus.scrape_timeout=5s",
    )
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = ap.parse_args(argv)
    try:
        files = generate(load(args.config, parse_set(args.set)))
    except MixinError as e:
        print(f"mixin: {e}", file=sys.stderr)
        return 2
    if args.check:
        bad = stale(files, args.out)
        for rel in bad:
            print(f"stale: {rel} (run `make rules`)", file=sys.stderr)
        return 1 if bad else 0
    for path in write(files, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
