"""``python -m sensorstats``: read settings, open the store, serve, drain, exit."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from sensorstats import __version__
from sensorstats.ops.logs import FIELDS, configure_logging
from sensorstats.ops.metrics import Metrics
from sensorstats.ops.readiness import Readiness
from sensorstats.server.serving import Server, ensure_descriptors
from sensorstats.settings import SettingsError, load_settings, loggable
from sensorstats.store.factory import open_store
from sensorstats.web.app import create_web

_log = logging.getLogger("sensorstats")
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# glibc's malloc arenas per process; see `_limit_malloc_arenas`.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's <malloc.h>


def _limit_malloc_arenas() -> None:
    """Let the process's threads share `MALLOC_ARENAS` malloc arenas.

    glibc gives threads that allocate at the same time arenas of their own,
    up to eight per core, and each keeps memory it freed for itself. With
    sixteen workers and the store's threads, whose allocations the
    interpreter lock serialises anyway, that is memory held for nothing.
    Only with glibc (elsewhere `mallopt` is absent), before any thread
    starts, and not when the operator set ``MALLOC_ARENA_MAX`` themselves.
    """
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def _remember_stop_signals() -> threading.Event:
    """Catch stop signals from now on; the event is set if one arrives before serving.

    Installed before any thread starts: a Python handler catches the signal in
    whichever thread the kernel picks, where the default action would kill
    the process (or, as PID 1, ignore the signal).
    """
    stop = threading.Event()

    def remember(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for stop_signal in _STOP_SIGNALS:
        signal.signal(stop_signal, remember)
    return stop


def main(argv: Sequence[str] | None = None) -> int:
    """Run the service: exit status 0 after a drain, 1 if it cannot listen, 2 for bad settings."""
    _limit_malloc_arenas()
    try:
        settings = load_settings(argv)
    except SettingsError as error:
        print(f"sensorstats: error: {error}", file=sys.stderr)
        return 2
    early_stop = _remember_stop_signals()
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
        try:
            web = create_web(settings, store, readiness, metrics)
            server = Server(web.app, settings, readiness, metrics, early=web.early)
        except OSError as error:
            print(
                f"sensorstats: error: cannot listen on {settings.host}:{settings.port}: {error}",
                file=sys.stderr,
            )
            return 1
        server.install_signal_handlers()
        if early_stop.is_set():  # told to stop while starting: drain at once
            server.request_stop()
        server.serve()
    finally:
        store.close()
        metrics.close()
    _log.info("stopped", extra={FIELDS: {"event": "stopped"}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
