"""livekit-exporter: Prometheus metrics for LiveKit server state, webhooks and voice agents."""

__version__ = "0.1.0"
