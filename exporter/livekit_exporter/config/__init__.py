"""Configuration: YAML file + LiveKit environment variables + secret files -> one typed Config.

model.py is the one source (typed dataclasses: keys, constraints, defaults, descriptions);
schema.py generates schemas/config.schema.json and docs/configuration.md from it; load.py
validates a file against that schema, converts it into the dataclasses and resolves the secrets.
"""

from .load import SECRET_KEYS, ConfigError, load
from .model import (
    MIN_TOKEN_LENGTH,
    WEBHOOK_CLOCK_LEEWAY,
    WEBHOOK_REPLAY_WINDOW,
    WEBHOOK_TOKEN_TTL,
    CollectConfig,
    Config,
    Duration,
    EventsConfig,
    KeyPair,
    LabelsConfig,
    LiveKitConfig,
    Price,
    ProjectConfig,
    RoomDetailConfig,
    Secret,
    ServerConfig,
    WebhooksConfig,
    format_duration,
    parse_duration,
)
from .schema import schema

__all__ = [
    "MIN_TOKEN_LENGTH",
    "SECRET_KEYS",
    "WEBHOOK_CLOCK_LEEWAY",
    "WEBHOOK_REPLAY_WINDOW",
    "WEBHOOK_TOKEN_TTL",
    "CollectConfig",
    "Config",
    "ConfigError",
    "Duration",
    "EventsConfig",
    "KeyPair",
    "LabelsConfig",
    "LiveKitConfig",
    "Price",
    "ProjectConfig",
    "RoomDetailConfig",
    "Secret",
    "ServerConfig",
    "WebhooksConfig",
    "format_duration",
    "load",
    "parse_duration",
    "schema",
]
