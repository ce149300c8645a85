"""python -m livekit_exporter.config [--check]: write (or check) schemas/config.schema.json and docs/configuration.md."""

import sys

from .schema import generated_files

stale = []
for path, text in generated_files().items():
    if not path.parent.is_dir():
        continue  # an installed wheel has no docs/ beside it
    current = path.read_text(encoding="utf-8") if path.exists() else None
    if current != text:
        stale.append(path)
        if "--check" not in sys.argv:
            path.write_text(text, encoding="utf-8")
if stale and "--check" in sys.argv:
    sys.exit("stale (run python -m livekit_exporter.config): " + ", ".join(map(str, stale)))
for path in stale:
    print(f"wrote {path}")
