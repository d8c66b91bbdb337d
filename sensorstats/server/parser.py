"""Waitress's request parser, plus: bare LF, the body limit and budget on the head, timing."""

from __future__ import annotations

import re
import time
from typing import Any

from waitress.parser import HTTPRequestParser
from waitress.utilities import Error

from sensorstats.server.answers import BodyTooLarge, MalformedRequest, ServerBusy
from sensorstats.server.limits import ConnectionPolicy, ReceiveBudget
from sensorstats.store.calls import StartedCall
from sensorstats.web.early import body_too_large

_BARE_LF = re.compile(rb"(?<!\r)\n")


class Parser(HTTPRequestParser):  # type: ignore[misc]  # waitress is untyped
    """Waitress's parser, plus: bare LF, the body limit and budget on the head, timing."""

    headers_finished: bool

    def __init__(self, adj: Any, *, policy: ConnectionPolicy, budget: ReceiveBudget) -> None:
        super().__init__(adj)
        self.started_at = time.monotonic()  # the first byte of this request
        self.completed_at: float | None = None  # and the last
        self.started_call: StartedCall[Any] | None = None  # its store call, once settled
        self._policy = policy
        self._budget = budget
        self._reserved = 0

    def received(self, data: bytes) -> int:
        if self.completed:
            return 0
        if not self.headers_finished and self._bare_lf(data):
            self.refuse(
                MalformedRequest(
                    "malformed HTTP request: a line of the request ends in a bare LF; "
                    "end every line with CRLF"
                )
            )
        else:
            head_done_before = self.headers_finished
            consumed: int = super().received(data)
            self._note_completion()
            if self.error is None and self.headers_finished:
                if not head_done_before:
                    self._admit_body()
                elif self.chunked and self.body_rcv is not None:
                    self._check_chunked_size()
            if self.error is None:
                return consumed
        # After an error nothing more of this connection is parsed: it is
        # answered and closed, and lingering discards the rest.
        return len(data)

    def close(self) -> None:
        super().close()
        self.release_budget()

    def _note_completion(self) -> None:
        if self.completed and self.completed_at is None:
            self.completed_at = time.monotonic()

    @property
    def body_length(self) -> int:
        """The length of the body as received (de-chunked): a `ReceivedRequest`."""
        return len(self.body_rcv) if self.body_rcv is not None else 0

    def body(self) -> bytes:
        """The whole body, left unread for the app."""
        if self.body_rcv is None:
            return b""
        body: bytes = self.body_rcv.getbuf().get()  # reads without consuming
        return body

    def release_budget(self) -> None:
        """Give back the room this request's body took in the budget (once)."""
        reserved, self._reserved = self._reserved, 0
        if reserved:
            self._budget.release(reserved)

    def _bare_lf(self, data: bytes) -> bool:
        head = self.header_plus + data
        end = head.find(b"\r\n\r\n")
        if end >= 0:
            head = head[:end]
        # Empty lines before a request are tolerated, as waitress does.
        return _BARE_LF.search(head.lstrip(b"\r\n")) is not None

    def _admit_body(self) -> None:
        limit = self._policy.max_body_bytes
        if not self.chunked and self.content_length > limit:
            self.refuse(BodyTooLarge(body_too_large(f"has {self.content_length} bytes", limit)))
            return
        need = limit if self.chunked else self.content_length
        if not need:
            return
        if not self._budget.reserve(need):
            self.refuse(
                ServerBusy(
                    "the server is receiving as many request bodies as it can hold; "
                    "retry in a moment"
                )
            )
            return
        self._reserved = need

    def _check_chunked_size(self) -> None:
        limit = self._policy.max_body_bytes
        if len(self.body_rcv) > limit:
            self.refuse(BodyTooLarge(body_too_large(f"has more than {limit} bytes", limit)))

    def refuse(self, error: Error) -> None:
        """Complete this request as `error`: it is answered, and the connection closed."""
        if not self.headers_finished:
            # What waitress does for an oversized head: a minimal request
            # for the error task to answer.
            self.parse_header(b"GET / HTTP/1.0\r\n")
            self.headers_finished = True
            self.stand_in = True  # its method and path are not the client's
        self.error = error
        self.expect_continue = False
        self.completed = True
