"""The process limits glibc's malloc arenas, unless the operator chose their own number."""

from __future__ import annotations

from typing import Any

import pytest

from sensorstats import __main__ as entry


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []

    def mallopt(self, parameter: int, value: int) -> int:
        self.calls.append((parameter, value))
        return 1


@pytest.fixture
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(entry.ctypes, "CDLL", lambda name: fake)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    return fake


def test_the_arenas_are_limited_to_two(libc: FakeLibc) -> None:
    entry._limit_malloc_arenas()
    assert libc.calls == [(-8, 2)]  # M_ARENA_MAX


def test_an_operators_malloc_arena_max_wins(
    libc: FakeLibc, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    entry._limit_malloc_arenas()
    assert libc.calls == []


def test_a_c_library_without_mallopt_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)

    def no_mallopt(name: Any) -> object:
        return object()  # musl and others: no such function

    monkeypatch.setattr(entry.ctypes, "CDLL", no_mallopt)
    entry._limit_malloc_arenas()  # no error


def test_the_real_c_library_takes_the_setting() -> None:
    assert entry.ctypes.CDLL(None).mallopt(entry._M_ARENA_MAX, entry.MALLOC_ARENAS) == 1
