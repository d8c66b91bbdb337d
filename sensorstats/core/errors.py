"""The failures sensorstats knows by name; `problems` maps each to HTTP."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One reason a batch was rejected: which item, which field, and why."""

    index: int
    field: str | None  # None when the item as a whole is wrong
    message: str


class InvalidBatch(Exception):
    """The request body is not an acceptable batch; nothing of it was stored."""

    def __init__(self, detail: str, errors: tuple[FieldError, ...] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors


class PayloadTooLarge(Exception):
    """The body or the batch exceeds a configured limit."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnsupportedMediaType(Exception):
    """The body's Content-Type is not one a batch is read from."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UnsupportedContentCoding(Exception):
    """The body is compressed in a way the service does not decode; `supported` are."""

    def __init__(self, detail: str, supported: tuple[str, ...]) -> None:
        super().__init__(detail)
        self.detail = detail
        self.supported = supported


class CorruptBody(Exception):
    """The body does not decode as its Content-Encoding says it should."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidSensorId(Exception):
    """A sensor id in a URL that no measurement could ever carry."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class StoreUnavailable(Exception):
    """The store cannot serve the request now; retrying later may succeed.

    `outage` says whether the failure means the store is unreachable or
    broken (a timeout, no leader): the circuit breaker counts only those. A
    store that answered but refused (contention, a full quota) passes
    ``outage=False``, since failing fast would not help anyone.
    """

    def __init__(self, detail: str, retry_after: int = 1, *, outage: bool = True) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.outage = outage


class StoreFull(Exception):
    """Storing a batch would take the store past its configured size; nothing was stored."""

    def __init__(self, detail: str, limit: int) -> None:
        super().__init__(detail)
        self.detail = detail
        self.limit = limit
