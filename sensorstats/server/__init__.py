"""Serving the app with waitress: the only package that imports waitress.

- `connections`: waitress's server, channel, parser and tasks, narrowed where
  needed (limits, deadlines, probes and early store calls on the loop,
  problem documents, lingering close);
- `serving`: the event loop the instance runs itself, and the drain on SIGTERM.
"""

from sensorstats.server.serving import Server, ensure_descriptors

__all__ = ["Server", "ensure_descriptors"]
