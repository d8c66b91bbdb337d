"""``python -m sensorstats``: read settings, open the store, serve, drain, exit."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence

from sensorstats import __version__
from sensorstats.app import create_app
from sensorstats.logs import FIELDS, configure_logging
from sensorstats.metrics import Metrics
from sensorstats.readiness import Readiness
from sensorstats.server import Server, ensure_descriptors
from sensorstats.settings import SettingsError, load_settings, loggable
from sensorstats.store.factory import open_store

_log = logging.getLogger("sensorstats")
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service: exit status 0 after a drain, 1 if it cannot listen, 2 for bad settings."""
    try:
        settings = load_settings(argv)
    except SettingsError as error:
        print(f"sensorstats: error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_format)
    _log.info(
        "starting sensorstats %s",
        __version__,
        extra={FIELDS: {"event": "starting", "settings": loggable(settings)}},
    )
    try:
        ensure_descriptors(settings.connection_limit)
    except SettingsError as error:
        print(f"sensorstats: error: {error}", file=sys.stderr)
        return 2
    # One registry for the process: every worker thread counts into it.
    metrics = Metrics()
    metrics.observe_store_events()
    store = open_store(settings)
    _log.info("store: %s", store.description)
    try:
        readiness = Readiness(metrics.measured(store))
        # From the moment the port listens, a client may be told to stop us;
        # until our handlers are in place SIGTERM would kill the process (or,
        # as PID 1, be ignored). Held back, it is delivered once they are.
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            app = create_app(settings, store, readiness, metrics)
            server = Server(app, settings, readiness, metrics)
            server.install_signal_handlers()
        except OSError as error:
            print(
                f"sensorstats: error: cannot listen on {settings.host}:{settings.port}: {error}",
                file=sys.stderr,
            )
            return 1
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        server.serve()
    finally:
        store.close()
        metrics.close()
    _log.info("stopped", extra={FIELDS: {"event": "stopped"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
