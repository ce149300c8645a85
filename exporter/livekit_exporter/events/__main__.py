"""python -m livekit_exporter.events > exporter/livekit_exporter/schemas/events.schema.json"""

import sys

from .model import schema_text

sys.stdout.write(schema_text())
