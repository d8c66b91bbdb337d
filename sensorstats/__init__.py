"""sensorstats: per-sensor statistics over HTTP, consistent across instances."""
