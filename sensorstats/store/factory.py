"""Choosing the store the settings ask for."""

from __future__ import annotations

from sensorstats.settings import Settings
from sensorstats.store import Store
from sensorstats.store.breaker import BreakerStore
from sensorstats.store.memory import MemoryStore


def open_store(settings: Settings) -> Store:
    """The etcd store, behind a circuit breaker, when endpoints are configured; else memory."""
    if not settings.etcd_endpoints:
        # Memory cannot be unreachable, so it needs no breaker.
        return MemoryStore(
            max_sensors=settings.max_sensors, idempotency_ttl=settings.idempotency_ttl
        )
    # Imported here so that the in-memory mode never loads gRPC.
    from sensorstats.store.etcd.store import EtcdStore

    return BreakerStore(EtcdStore.from_settings(settings))
