"""sensorstats: per-sensor statistics over HTTP, consistent across instances."""

__version__ = "1.0.0"
