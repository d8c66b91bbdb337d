"""Choosing the store the settings ask for."""

from __future__ import annotations

from sensorstats.settings import Settings
from sensorstats.store import Store
from sensorstats.store.memory import MemoryStore


def open_store(settings: Settings) -> Store:
    """The etcd store when endpoints are configured, else the in-memory one."""
    if not settings.etcd_endpoints:
        return MemoryStore()
    # Imported here so that the in-memory mode never loads gRPC.
    from sensorstats.store.etcd import EtcdStore

    return EtcdStore.from_settings(settings)
