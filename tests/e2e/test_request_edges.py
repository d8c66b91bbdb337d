"""The edges of the API as a client meets them on the wire: compressed batches, media
types, methods no resource implements, and what every 4xx says.

Each test speaks HTTP/1.1 byte for byte to a real `python -m sensorstats`.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import re
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.service import Service, read_response, start_service

SAMPLE = {"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}
MiB = 1 << 20
TOKEN = "0123456789abcdefXYZ"

# What no detail may show: Python's words and names, a traceback, waitress's words.
LEAKS = re.compile(
    r"Traceback|File \"|timedelta|isoformat|Expecting value|codec can't|datetime\.|"
    r"max_body|max_header|Invalid HTTP method|Transfer-Encoding requested|waitress|"
    r"<class |'(?:str|int|float|dict|list|bytes|NoneType)'|"
    r"\b(?:ValueError|TypeError|KeyError|JSONDecodeError|UnicodeDecodeError|RecursionError)\b"
)


def connect(service: Service, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", service.port), timeout=timeout)


def exchange(service: Service, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection, and its answer (the server may answer early)."""
    with connect(service) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        status, headers, body = read_response(sock)
    return int(status.split()[1]), headers, body


def post(body: bytes, *headers: str, path: str = "/data") -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{head}\r\n"
    ).encode() + body


def chunked(body: bytes, *headers: str, size: int = 1000) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size])
        for i in range(0, len(body), size)
    )
    return (
        (f"POST /data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n{head}\r\n").encode()
        + chunks
        + b"0\r\n\r\n"
    )


def batch(sensor: str, count: int = 1) -> bytes:
    return json.dumps([{**SAMPLE, "sensor": sensor}] * count).encode()


def count(service: Service, sensor: str) -> int:
    counted: int = service.get(f"/statistics/{sensor}").json["count"]
    return counted


def bomb(inflated: int) -> bytes:
    """A gzip body of a JSON array's start and zeros, inflating to `inflated` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [compressor.compress(b"[")]
    zeros = bytes(MiB)
    parts += [compressor.compress(zeros) for _ in range(inflated // MiB)]
    return b"".join(parts) + compressor.flush()


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    with start_service(log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


# --- compressed batches -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("coding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_a_compressed_batch_is_counted_with_content_length_or_chunked(
    service: Service, coding: str, compress
) -> None:
    sensor = f"compressed-{coding}"
    data = compress(batch(sensor, 3))
    assert exchange(service, post(data, f"Content-Encoding: {coding}"))[0] == 204
    assert exchange(service, chunked(data, f"Content-Encoding: {coding}", size=7))[0] == 204
    assert count(service, sensor) == 6


def test_a_gzip_bomb_is_413_while_other_clients_post_and_memory_stays_bounded(
    service: Service,
) -> None:
    body = bomb(1 << 30)  # 1 GiB once inflated
    assert len(body) < MiB  # within the body limit as sent
    before = peak_rss_mib(service.pid)
    answers: list[int] = []
    stop = threading.Event()

    def poster(n: int) -> None:
        while not stop.is_set():
            answers.append(service.post("/data", batch(f"beside-bomb-{n}")).status)

    posters = [threading.Thread(target=poster, args=(n,)) for n in range(3)]
    for thread in posters:
        thread.start()
    try:
        started = time.monotonic()
        bombs = [exchange(service, post(body, "Content-Encoding: gzip")) for _ in range(3)]
        took = time.monotonic() - started
    finally:
        stop.set()
        for thread in posters:
            thread.join()
    for status, _, answer in bombs:
        assert status == 413
        detail = json.loads(answer)["detail"]
        assert detail == (
            f"the body decompresses to more than {MiB} bytes; the limit is {MiB} bytes "
            "(SENSORSTATS_MAX_BODY_BYTES), counted after decompression: send the measurements "
            "in smaller batches"
        )
    assert took < 10  # refused after a MiB each, not after inflating a GiB
    # Every other client was served, and counted.
    assert answers
    assert set(answers) == {204}
    assert sum(count(service, f"beside-bomb-{n}") for n in range(3)) == len(answers)
    assert service.get("/healthz").status == 204
    # Each bomb cost the limit and the body, never the gigabyte.
    assert peak_rss_mib(service.pid) - before < 64


@pytest.mark.parametrize(
    ("request_bytes", "status", "type_name"),
    [
        pytest.param(
            post(gzip.compress(batch("x")), "Content-Encoding: gzip, gzip"),
            415,
            "unsupported-content-coding",
            id="gzip-twice",
        ),
        pytest.param(
            post(b"[]", "Content-Encoding: br"), 415, "unsupported-content-coding", id="br"
        ),
        pytest.param(
            post(gzip.compress(batch("x"))[:-10], "Content-Encoding: gzip"),
            400,
            "corrupt-body",
            id="truncated-gzip",
        ),
        pytest.param(
            chunked(gzip.compress(batch("x"))[:-10], "Content-Encoding: gzip"),
            400,
            "corrupt-body",
            id="truncated-gzip-chunked",
        ),
        pytest.param(
            post(batch("x"), "Content-Type: application/xml"),
            415,
            "unsupported-media-type",
            id="xml",
        ),
        pytest.param(
            post(batch("x"), "Content-Type: application/" + "x" * 15_000),
            415,
            "unsupported-media-type",
            id="huge-content-type",
        ),
    ],
)
def test_bodies_the_service_cannot_read_are_refused_saying_why(
    service: Service, request_bytes: bytes, status: int, type_name: str
) -> None:
    got, headers, body = exchange(service, request_bytes)
    assert got == status
    problem = json.loads(body)
    assert problem["type"] == f"urn:sensorstats:problem:{type_name}"
    assert len(problem["detail"]) < 400  # a huge header is not echoed whole
    if type_name == "unsupported-content-coding":
        assert headers["accept-encoding"] == "gzip, deflate"
    assert count(service, "x") == 0


def test_a_content_type_past_the_head_limit_is_431(service: Service) -> None:
    got, _, _ = exchange(service, post(b"[]", "Content-Type: application/" + "x" * 20_000))
    assert got == 431


def test_a_body_over_waitresss_own_limit_is_answered_as_any_body_over_the_limit(
    service: Service,
) -> None:
    # 17 MB: past waitress's limit (16 times the app's), which refuses it itself.
    got, _, body = exchange(service, b"POST /data HTTP/1.1\r\nContent-Length: 17000000\r\n\r\n")
    assert got == 413
    problem = json.loads(body)
    assert problem["type"] == "urn:sensorstats:problem:payload-too-large"
    assert problem["detail"] == (
        f"the body has more than {MiB} bytes; the limit is {MiB} bytes "
        "(SENSORSTATS_MAX_BODY_BYTES): send the measurements in smaller batches"
    )


# --- methods ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["BREW", "PROPFIND", "MKCOL", "X-CUSTOM"])
@pytest.mark.parametrize("target", ["/data", "/statistics/abc", "/nowhere", "*"])
def test_a_method_http_does_not_define_is_501_without_allow(
    service: Service, method: str, target: str
) -> None:
    got, headers, body = exchange(
        service, f"{method} {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert got == 501
    assert "allow" not in headers
    assert json.loads(body)["detail"].startswith(f"no resource here implements the method {method}")


def test_known_methods_keep_their_answers(service: Service) -> None:
    for method in ("PUT", "QUERY"):
        request = f"{method} /data HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        refused = exchange(service, request.encode())
        assert (refused[0], refused[1]["allow"]) == (405, "OPTIONS, POST")
    star = exchange(service, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (star[0], star[1]["allow"]) == (204, "GET, HEAD, POST, DELETE, OPTIONS")
    with connect(service) as sock:
        sock.sendall(b"HEAD /statistics/abc HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, head=True)[0] == b"HTTP/1.1 200 OK"


def test_a_lowercase_method_is_400_saying_methods_are_upper_case(service: Service) -> None:
    got, _, body = exchange(service, b"brew /data HTTP/1.1\r\nHost: x\r\n\r\n")
    assert got == 400
    assert "upper-case" in json.loads(body)["detail"]


# --- every 4xx, in words a person can act on ----------------------------------------------


@dataclass(frozen=True)
class Provocation:
    """A request answered with `status`; `path` and `method` as the document names the
    operation, or "*" for the server's own answers, which any operation can meet."""

    status: int
    method: str
    path: str
    request: bytes
    slow: bool = False  # the answer comes after the receive timeout


BEARER = f"Authorization: Bearer {TOKEN}"
KEY = "Idempotency-Key: edges-1"
STATISTICS = "/statistics/{sensor_id}"


def _provocations() -> list[Provocation]:
    def p(status: int, method: str, path: str, request: bytes, slow: bool = False) -> Provocation:
        return Provocation(status, method, path, request, slow)

    def with_token(data: bytes, *headers: str) -> bytes:
        return post(data, BEARER, *headers)

    item = dict(SAMPLE)
    bad_bodies = [
        b"",
        b"  ",
        b"[{]",
        b"{}",
        b"[1,",
        b"\xff[]",
        b"\x1f\x8b\x08\x00\x00",
        b"[" + b"1" * 5000 + b"]",
        b"[" * 100_000,
        json.dumps([{**item, "timestamp": "2021-01-01T00:00:00+25:00"}]).encode(),
        json.dumps([{**item, "timestamp": "yesterday"}, 5, {"sensor": 1}]).encode(),
        json.dumps([{**item, "timestamp": "2021-02-30"}]).encode(),
        json.dumps([{**item, "timestamp": "1" * 80}]).encode(),
        json.dumps([{**item, "value": "NaN"}, {**item, "value": True}]).encode(),
        b'[{"sensor": "a", "timestamp": "2021-01-01", "value": NaN}]',
        b'[{"sensor": "a", "timestamp": "2021-01-01", "value": 1e400}]',
        json.dumps([{**item, "sensor": "x" * 300}]).encode(),
    ]
    return [
        *(p(400, "POST", "/data", with_token(b)) for b in bad_bodies),
        p(400, "POST", "/data", with_token(b"[]", 'Idempotency-Key: "unterminated')),
        p(400, "POST", "/data", with_token(b"[1]", "Content-Encoding: gzip")),
        p(401, "POST", "/data", post(batch("a"))),
        p(401, "POST", "/data", post(batch("a"), "Authorization: Bearer wrong-token-0123456")),
        p(401, "GET", STATISTICS, b"GET /statistics/a HTTP/1.1\r\nHost: x\r\n\r\n"),
        p(401, "DELETE", STATISTICS, b"DELETE /statistics/a HTTP/1.1\r\nHost: x\r\n\r\n"),
        *(
            p(
                status,
                method,
                STATISTICS,
                f"{method} {target} HTTP/1.1\r\n{BEARER}\r\n\r\n".encode(),
            )
            for method in ("GET", "DELETE")
            for status, target in (
                (400, "/statistics/%01"),
                (400, "/statistics/%FF"),
                (404, "/statistics/"),
            )
        ),
        p(413, "POST", "/data", with_token(batch("a", 10_001))),
        p(
            413,
            "POST",
            "/data",
            with_token(gzip.compress(batch("a") + b" " * MiB), "Content-Encoding: gzip"),
        ),
        p(413, "POST", "/data", with_token(b"x" * (MiB + 1))),
        p(415, "POST", "/data", with_token(b"[]", "Content-Type: text/plain")),
        p(415, "POST", "/data", with_token(b"[]", "Content-Encoding: compress")),
        p(422, "POST", "/data", with_token(batch("k", 2), KEY)),
        # The server's own, on any operation.
        p(400, "*", "*", b"GET /livez HTTP/1.1\nHost: x\n\n"),
        p(400, "*", "*", b"GET /livez HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
        p(400, "*", "*", b"GET /livez HTTP/1.1\r\nBad header\r\n\r\n"),
        p(400, "*", "*", b"get /livez HTTP/1.1\r\n\r\n"),
        p(400, "*", "*", b"GET\r\n\r\n"),
        p(400, "*", "*", b"POST /data HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        p(408, "*", "*", b"POST /data HTTP/1.1\r\nContent-Length: 10\r\n\r\n[", slow=True),
        p(413, "*", "*", b"POST /data HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"),
        p(413, "*", "*", b"POST /data HTTP/1.1\r\nContent-Length: 17000000\r\n\r\n"),
        p(431, "*", "*", b"GET /livez HTTP/1.1\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"),
        # Outside any operation: components/responses.
        p(404, "-", "-", b"GET /nowhere HTTP/1.1\r\n\r\n"),
        p(405, "-", "-", b"PUT /data HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        p(405, "-", "-", b"POST /statistics/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        p(400, "-", "-", b"GET * HTTP/1.1\r\n\r\n"),
    ]


PROVOCATIONS = _provocations()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """An instance where every 4xx can happen: tokens on reads and writes too."""
    with start_service(
        env={"SENSORSTATS_API_TOKENS": f"edges:{TOKEN}", "SENSORSTATS_READ_REQUIRES_TOKEN": "true"},
        args=["--receive-timeout", "0.5"],
        log_dir=tmp_path_factory.mktemp("logs"),
    ) as running:
        yield running


def test_every_documented_4xx_is_provoked_here(guarded: Service) -> None:
    document = guarded.get("/openapi.json").json
    documented = {
        (path, method.upper(), int(status))
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method != "head"  # no body, no detail
        for status in operation["responses"]
        if 400 <= int(status) < 500
    }
    provoked = {(p.path, p.method, p.status) for p in PROVOCATIONS}
    server = {p.status for p in PROVOCATIONS if p.path == "*"}
    missing = {
        (path, method, status)
        for path, method, status in documented
        if (path, method, status) not in provoked and status not in server
    }
    assert not missing, f"documented 4xx answers no test provokes: {sorted(missing)}"


@pytest.mark.parametrize(
    "provocation", PROVOCATIONS, ids=lambda p: f"{p.status}-{p.request[:40]!r}"
)
def test_no_4xx_detail_shows_python_or_waitress(guarded: Service, provocation: Provocation) -> None:
    if provocation.status == 422:
        first = post(batch("k"), BEARER, KEY)
        assert exchange(guarded, first)[0] == 204
    got, headers, body = exchange(guarded, provocation.request)
    assert got == provocation.status, body
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    detail = problem["detail"]
    assert detail
    assert not LEAKS.search(detail), detail
    for error in problem.get("errors", []):
        assert not LEAKS.search(error["message"]), error
    if got == 413 and detail.startswith("the body"):
        assert "(SENSORSTATS_MAX_BODY_BYTES)" in detail
