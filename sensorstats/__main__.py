"""``python -m sensorstats``: read settings, open the store, serve, drain, exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from sensorstats.app import create_app
from sensorstats.logs import configure_logging
from sensorstats.readiness import Readiness
from sensorstats.server import Server, ensure_descriptors
from sensorstats.settings import SettingsError, load_settings
from sensorstats.store.factory import open_store

_log = logging.getLogger("sensorstats")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service: exit status 0 after a drain, 1 if it cannot listen, 2 for bad settings."""
    try:
        settings = load_settings(argv)
    except SettingsError as error:
        print(f"sensorstats: error: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level)
    try:
        ensure_descriptors(settings.connection_limit)
    except SettingsError as error:
        print(f"sensorstats: error: {error}", file=sys.stderr)
        return 2
    store = open_store(settings)
    _log.info("store: %s", store.description)
    try:
        readiness = Readiness(store)
        try:
            server = Server(create_app(settings, store, readiness), settings, readiness)
        except OSError as error:
            print(
                f"sensorstats: error: cannot listen on {settings.host}:{settings.port}: {error}",
                file=sys.stderr,
            )
            return 1
        server.install_signal_handlers()
        server.serve()
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
