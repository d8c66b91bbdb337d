"""The response head: byte for byte what waitress builds, and keep-alive on bodiless answers."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from waitress.task import WSGITask

from sensorstats.server.tasks import KeepAliveTask

STATUSES = ("200 OK", "201 Created", "204 No Content", "304 Not Modified", "101 Switching", "404 x")
NAMES = (
    "content-type",
    "Content-Type",
    "content-length",
    "CONTENT-LENGTH",
    "date",
    "server",
    "Server",
    "x-request-id",
    "retry-after",
    "www-authenticate",
    "allow",
    "etag",
)
VALUES = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


class WaitressHead(KeepAliveTask):
    """Our task, with waitress's own head builder in place of ours: the reference."""

    _response_head = WSGITask.build_response_header


def task(cls: type[KeepAliveTask], version: str, connection: str | None, **state: Any) -> Any:
    headers = {} if connection is None else {"CONNECTION": connection}
    request = SimpleNamespace(version=version, headers=headers)
    server = SimpleNamespace(adj=SimpleNamespace(ident=state.pop("ident")), draining=False)
    made = cls(SimpleNamespace(server=server), request)
    for name, value in state.items():
        setattr(made, name, value)
    return made


@given(
    version=st.sampled_from(["1.0", "1.1", "0.9"]),
    connection=st.sampled_from([None, "", "close", "keep-alive", "Keep-Alive", "x, close"]),
    status=st.sampled_from(STATUSES),
    headers=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6),
    content_length=st.none() | st.integers(0, 10**6),
    ident=st.sampled_from(["sensorstats", ""]),
    start_time=st.floats(0, 4e9),
    close_on_finish=st.booleans(),
)
def test_the_head_is_waitress_s_own(
    version: str,
    connection: str | None,
    status: str,
    headers: list[tuple[str, str]],
    content_length: int | None,
    ident: str,
    start_time: float,
    close_on_finish: bool,
) -> None:
    state = {
        "status": status,
        "content_length": content_length,
        "ident": ident,
        "start_time": start_time,
        "close_on_finish": close_on_finish,
    }
    ours = task(KeepAliveTask, version, connection, **state)
    reference = task(WaitressHead, version, connection, **state)
    ours.response_headers = list(headers)
    reference.response_headers = list(headers)
    assert ours.build_response_header() == reference.build_response_header()
    assert ours.response_headers == reference.response_headers
    assert ours.close_on_finish == reference.close_on_finish
    assert ours.chunked_response == reference.chunked_response


def test_a_204_keeps_its_http_1_1_connection_and_names_no_length() -> None:
    made = task(KeepAliveTask, "1.1", None, status="204 No Content", ident="s", start_time=0.0)
    head = made.build_response_header()
    assert head == (
        b"HTTP/1.1 204 No Content\r\nDate: Thu, 01 Jan 1970 00:00:00 GMT\r\nServer: s\r\n\r\n"
    )
    assert not made.close_on_finish


def test_a_204_closes_when_the_client_asked_to() -> None:
    made = task(KeepAliveTask, "1.1", "close", status="204 No Content", ident="s", start_time=0.0)
    made.build_response_header()
    assert made.close_on_finish


def test_the_date_follows_the_second_of_each_answer() -> None:
    first = task(KeepAliveTask, "1.1", None, status="204 No Content", ident="", start_time=59.9)
    second = task(KeepAliveTask, "1.1", None, status="204 No Content", ident="", start_time=60.0)
    assert b"Date: Thu, 01 Jan 1970 00:00:59 GMT" in first.build_response_header()
    assert b"Date: Thu, 01 Jan 1970 00:01:00 GMT" in second.build_response_header()
