"""POSTs written ahead, end to end: a real instance on a real etcd, raw HTTP on its socket.

Whatever the framing (pipelined, chunked, ``Expect: 100-continue``,
``Connection: close``), a POST answered 204 is counted once, the answers come
in request order, and requests the event loop must not write (too large,
invalid, keyed) are served by a worker as before.
"""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from collections.abc import Iterator

import pytest

from tests.support.etcd_process import EtcdProcess
from tests.support.service import Service, read_response, start_service

STAMP = "2021-11-09T21:38:09Z"


def batch(sensor: str, *values: float) -> bytes:
    return json.dumps([{"sensor": sensor, "timestamp": STAMP, "value": v} for v in values]).encode()


def post(body: bytes, extra: str = "") -> bytes:
    head = f"POST /data HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
    return head.encode() + body


def get(sensor: str) -> bytes:
    return f"GET /statistics/{sensor} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@pytest.fixture(scope="module")
def service(etcd: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {"SENSORSTATS_ETCD_ENDPOINTS": etcd.url, "SENSORSTATS_ETCD_PREFIX": "/write-ahead/"}
    with start_service(env, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


def connect(service: Service) -> socket.socket:
    host, port = service.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def answers(sock: socket.socket, how_many: int) -> list[tuple[int, dict[str, str], bytes]]:
    """The next `how_many` answers on `sock`, however the segments split them."""
    stream = sock.makefile("rb")
    read = []
    for _ in range(how_many):
        status = int(stream.readline().split()[1])
        headers = {}
        while (line := stream.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        read.append((status, headers, stream.read(int(headers.get("content-length", "0")))))
    return read


def count(service: Service, sensor: str) -> int:
    answer = service.get(f"/statistics/{sensor}")
    assert answer.status == 200
    counted: int = answer.json["count"]
    return counted


def test_pipelined_posts_are_each_answered_in_order_and_counted_once(service: Service) -> None:
    with connect(service) as sock:
        sock.sendall(
            post(batch("piped", 1)) + post(b"not json") + post(batch("piped", 2, 3)) + get("piped")
        )
        got = answers(sock, 4)
    assert [status for status, _, _ in got] == [204, 400, 204, 200]
    assert json.loads(got[3][2])["count"] == 3  # the GET sees both POSTs before it


def test_a_chunked_post_is_written_once(service: Service) -> None:
    body = batch("chunked", 1, 2)
    chunked = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n" for part in (body[:10], body[10:])
    )
    with connect(service) as sock:
        sock.sendall(
            b"POST /data HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + chunked
            + b"0\r\n\r\n"
        )
        status, _, _ = read_response(sock)
    assert status.split()[1] == b"204"
    assert count(service, "chunked") == 2


def test_a_post_expecting_100_continue_is_written_once(service: Service) -> None:
    body = batch("continued", 5)
    with connect(service) as sock:
        sock.sendall(post(body, extra="Expect: 100-continue\r\n").removesuffix(body))
        assert sock.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        status, _, _ = read_response(sock)
    assert status.split()[1] == b"204"
    assert count(service, "continued") == 1


def test_a_post_asking_to_close_is_answered_then_closed(service: Service) -> None:
    with connect(service) as sock:
        sock.sendall(post(batch("closing", 1), extra="Connection: close\r\n"))
        status, headers, _ = read_response(sock)
        assert sock.recv(1) == b""  # closed after the answer
    assert status.split()[1] == b"204"
    assert headers.get("connection") == "close"
    assert count(service, "closing") == 1


def test_a_batch_too_large_to_parse_on_the_loop_is_written_by_a_worker(service: Service) -> None:
    values = list(range(3000))  # over 128 KiB of JSON, under the body limit
    body = batch("large", *values)
    assert len(body) > 128 * 1024
    answer = service.post("/data", body)
    assert answer.status == 204
    stats = service.get("/statistics/large").json
    assert (stats["count"], stats["avg"]) == (3000, 1499.5)


def test_a_keyed_post_is_applied_once_however_often_it_is_sent(service: Service) -> None:
    keyed = {"Idempotency-Key": "write-ahead-keyed-1"}
    answers = [service.post("/data", batch("keyed", 7), headers=keyed).status for _ in range(3)]
    assert answers == [204, 204, 204]
    assert count(service, "keyed") == 1


def test_a_post_written_ahead_has_its_id_and_its_access_line(service: Service) -> None:
    answer = service.post("/data", batch("logged", 1), headers={"X-Request-ID": "wa-logged-1"})
    assert answer.status == 204
    assert answer.headers["x-request-id"] == "wa-logged-1"
    deadline = time.monotonic() + 10
    while '"wa-logged-1"' not in service.log():  # access lines are written in batches
        assert time.monotonic() < deadline, "no access line"
        time.sleep(0.05)
    (line,) = [json.loads(x) for x in service.log().splitlines() if '"wa-logged-1"' in x]
    assert (line["route"], line["status"]) == ("/data", 204)


TOKEN_SECRET = "early-writer-token-0123456789"


@pytest.fixture(scope="module")
def guarded(etcd: EtcdProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    env = {
        "SENSORSTATS_ETCD_ENDPOINTS": etcd.url,
        "SENSORSTATS_ETCD_PREFIX": "/write-ahead-tokens/",
        "SENSORSTATS_API_TOKENS": f"writer:{TOKEN_SECRET}",
    }
    with start_service(env, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


def test_with_tokens_a_post_is_written_early_only_with_a_valid_token(guarded: Service) -> None:
    """Writes start on the event loop with tokens too, and the token is checked first."""
    valid = f"Authorization: Bearer {TOKEN_SECRET}\r\n"
    with connect(guarded) as sock:
        # Pipelined: without a token, with a wrong one, with the right one, twice.
        sock.sendall(
            post(batch("guarded", 1.0))
            + post(batch("guarded", 2.0), "Authorization: Bearer not-a-valid-token-at-all\r\n")
            + post(batch("guarded", 3.0), valid)
            + post(batch("guarded", 4.0), valid)
            + get("guarded")
        )
        (none, wrong, first, second, read) = answers(sock, 5)
    assert [none[0], wrong[0], first[0], second[0], read[0]] == [401, 401, 204, 204, 200]
    statistics = json.loads(read[2])
    assert statistics["count"] == 2  # only the posts with the token were written
    assert statistics["avg"] == 3.5


def test_compressed_posts_are_counted_once_whichever_path_writes_them(service: Service) -> None:
    small = gzip.compress(batch("gz-small", 1, 2))  # inflates within the early write size
    # Small on the wire too, but over that size once inflated: a worker writes it.
    large = gzip.compress(batch("gz-large", 3) + b" " * (200 * 1024))
    with connect(service) as sock:
        sock.sendall(
            post(small, "Content-Encoding: gzip\r\n")
            + post(large, "Content-Encoding: gzip\r\n")
            + post(zlib.compress(batch("gz-small", 4)), "Content-Encoding: deflate\r\n")
        )
        got = answers(sock, 3)
    assert [status for status, _, _ in got] == [204, 204, 204]
    assert (count(service, "gz-small"), count(service, "gz-large")) == (3, 1)


def test_a_gzip_bomb_on_the_early_path_is_413_and_stores_nothing(service: Service) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    bomb = compressor.compress(batch("gz-bomb", 1)[:-1] + b"," + b" " * (64 << 20))
    bomb += compressor.flush()
    assert len(bomb) < 128 * 1024  # small enough to be looked at on the event loop
    with connect(service) as sock:
        sock.sendall(post(bomb, "Content-Encoding: gzip\r\n"))
        ((status, _, body),) = answers(sock, 1)
    assert status == 413
    assert "SENSORSTATS_MAX_BODY_BYTES" in json.loads(body)["detail"]
    assert count(service, "gz-bomb") == 0
