"""Bearer tokens: parsing, constant-time checks, the token file, the middleware, end to end."""

from __future__ import annotations

import hmac
import json
import logging
import os
from pathlib import Path

import pytest
from falcon import testing

from sensorstats.core import tokens as token_module
from sensorstats.core.tokens import (
    TokenError,
    TokenFile,
    Tokens,
    parse_tokens,
    read_tokens_file,
    tokens_from_list,
)
from sensorstats.settings import Settings, load_settings
from sensorstats.store.memory import MemoryStore
from sensorstats.web.app import create_app
from tests.support.service import run_module, start_service, statistics_path

WRITER = "w7Kq2v9RfX3mZp8LtY4bNc6H"  # what a client of the service would hold
READER = "r5Tn8Gd2Lk9Qw3Zx7Vb4Mh6J"
SAMPLE = [{"sensor": "abc", "timestamp": "2021-11-09T21:38:09+01:00", "value": 3.14}]
BODY = json.dumps(SAMPLE)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def entries(*texts: str) -> list[tuple[str, str]]:
    return [(f"entry {n}", text) for n, text in enumerate(texts, 1)]


# --- parsing --------------------------------------------------------------------


def test_a_named_token_is_known_by_its_name() -> None:
    tokens = parse_tokens(entries(f"ci-runner:{WRITER}", f"dashboard:{READER}"))
    assert tokens.identify(WRITER) == "ci-runner"
    assert tokens.identify(READER) == "dashboard"


def test_an_unnamed_token_is_known_by_a_stable_digest_that_reveals_nothing() -> None:
    first = tokens_from_list(WRITER).identify(WRITER)
    assert first is not None
    assert first == tokens_from_list(f"{READER},{WRITER}").identify(WRITER)  # other process
    assert first != tokens_from_list(READER).identify(READER)
    assert first.startswith("token-")
    assert WRITER not in first
    assert WRITER[:6] not in first


def test_two_tokens_may_share_a_name_while_one_replaces_the_other() -> None:
    tokens = tokens_from_list(f"sensors:{WRITER}, sensors:{READER}")
    assert tokens.identify(WRITER) == tokens.identify(READER) == "sensors"


@pytest.mark.parametrize(
    "presented",
    ["", WRITER[:-1], WRITER + "x", WRITER.lower(), f" {WRITER}", READER, "Bearer " + WRITER],
)
def test_only_the_exact_token_is_accepted(presented: str) -> None:
    assert tokens_from_list(WRITER).identify(presented) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("short-token", "16 to 4096 characters, this one has 11"),
        ("0123456789abcdef ghijk", "only letters, digits and -._~+/"),
        ("0123456789abcdef\u00e9", "only letters, digits and -._~+/"),
        ("0123456789abcdef=x", "only letters, digits and -._~+/"),
        ("bad name:0123456789abcdef", "a name before ':'"),
        (":0123456789abcdef", "a name before ':'"),
        ("a" * 65 + ":0123456789abcdef", "a name before ':'"),
    ],
)
def test_malformed_entries_are_refused_without_quoting_them(text: str, message: str) -> None:
    with pytest.raises(TokenError) as refused:
        parse_tokens(entries(READER, text))
    assert str(refused.value).startswith("entry 2")
    assert message in str(refused.value)
    assert text.rpartition(":")[2] not in str(refused.value)


def test_a_token_given_twice_is_refused() -> None:
    with pytest.raises(TokenError, match="entry 3 repeats the token of entry 1"):
        parse_tokens(entries(WRITER, READER, f"again:{WRITER}"))


def test_padding_is_part_of_a_token() -> None:
    assert tokens_from_list("0123456789abcdef==").identify("0123456789abcdef==") is not None


def test_an_empty_list_entry_is_refused() -> None:
    with pytest.raises(TokenError, match="entry 2 is empty"):
        tokens_from_list(f"{WRITER},,{READER}")


def test_the_repr_of_tokens_shows_identities_only() -> None:
    text = repr(tokens_from_list(f"ci:{WRITER},{READER}"))
    assert "ci" in text
    assert WRITER not in text
    assert READER not in text


def test_every_token_is_compared_at_the_same_length_without_early_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Constant time: a match on the first token still compares the rest, digest against digest."""
    tokens = tokens_from_list(f"{WRITER},{READER},{'z' * 40}")
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(token_module.hmac, "compare_digest", spy)
    for presented in (WRITER, "x", "y" * 1000):
        compared.clear()
        tokens.identify(presented)
        assert compared == [(32, 32)] * 3


# --- the token file -------------------------------------------------------------------


def test_a_token_file_has_one_token_a_line_with_comments_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# rotated 2024-05-01\n\nci:{WRITER}\r\n  {READER}  \n")
    tokens = read_tokens_file(str(path))
    assert len(tokens) == 2
    assert tokens.identify(WRITER) == "ci"
    assert tokens.identify(READER) is not None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no token"),
        ("\n# only a comment\n  \n", "holds no token"),
        (f"{WRITER}\nshort\n", "line 2: a token must have 16"),
        (b"\xff\xfe", "not UTF-8 text"),
    ],
)
def test_an_unusable_token_file_is_an_error(
    tmp_path: Path, content: str | bytes, message: str
) -> None:
    path = tmp_path / "tokens"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(TokenError, match=message):
        read_tokens_file(str(path))


def test_a_missing_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TokenError, match=r"cannot read .*: No such file"):
        read_tokens_file(str(tmp_path / "nope"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rewrite(path: Path, text: str) -> None:
    """Replace the file as editors and `kubectl` do: a new file renamed over the old."""
    new = path.with_suffix(".new")
    new.write_text(text)
    new.replace(path)


def test_a_changed_token_file_is_read_again_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(WRITER + "\n")
    clock = Clock()
    source = TokenFile(str(path), clock=clock)
    assert source.current().identify(WRITER) is not None
    clock.now += 1.1
    assert source.current().identify(WRITER) is not None  # looked at: unchanged
    rewrite(path, READER + "\n")
    clock.now += 0.5
    assert source.current().identify(WRITER) is not None  # not looked at yet
    clock.now += 0.6
    assert source.current().identify(WRITER) is None
    assert source.current().identify(READER) is not None


def test_a_token_file_rewritten_in_place_with_the_same_size_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(WRITER + "\n")
    # Same length, same inode: only the modification time tells.
    os.utime(path, ns=(1, 1))
    clock = Clock()
    source = TokenFile(str(path), clock=clock)
    path.write_text(READER + "\n")
    clock.now += 1.1
    assert source.current().identify(READER) is not None


def test_a_kubernetes_secret_update_is_noticed(tmp_path: Path) -> None:
    """The kubelet swaps a `..data` link to a new directory; the file name stays a link."""
    volume = tmp_path / "volume"
    volume.mkdir()
    for version, token in (("v1", WRITER), ("v2", READER)):
        (volume / version).mkdir()
        (volume / version / "tokens").write_text(token + "\n")
    (volume / "..data").symlink_to("v1")
    (volume / "tokens").symlink_to("..data/tokens")
    clock = Clock()
    source = TokenFile(str(volume / "tokens"), clock=clock)
    assert source.current().identify(WRITER) is not None
    (volume / "..data_tmp").symlink_to("v2")
    (volume / "..data_tmp").replace(volume / "..data")
    clock.now += 1.1
    assert source.current().identify(WRITER) is None
    assert source.current().identify(READER) is not None


@pytest.mark.parametrize("damage", ["empty", "malformed", "missing", "directory"])
def test_a_broken_token_file_keeps_the_tokens_in_force_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(WRITER + "\n")
    clock = Clock()
    source = TokenFile(str(path), clock=clock)
    if damage == "empty":
        rewrite(path, "")
    elif damage == "malformed":
        rewrite(path, f"{READER}\nnot a token at all\n")
    elif damage == "missing":
        path.unlink()
    else:  # unreadable, even for root
        path.unlink()
        path.mkdir()
    with caplog.at_level(logging.ERROR, logger="sensorstats.core.tokens"):
        for _ in range(3):
            clock.now += 1.1
            assert source.current().identify(WRITER) is not None
            assert source.current().identify(READER) is None
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "the tokens read before stay in force" in errors[0]
    assert READER not in errors[0]
    assert WRITER not in errors[0]
    if path.is_dir():
        path.rmdir()
    rewrite(path, READER + "\n")
    clock.now += 1.1
    assert source.current().identify(READER) is not None  # repaired: read again


# --- the middleware -------------------------------------------------------------------------


def client(**settings: object) -> testing.TestClient:
    values: dict[str, object] = {"api_tokens": tokens_from_list(f"writer:{WRITER}")}
    values.update(settings)
    return testing.TestClient(create_app(Settings(**values), MemoryStore()))  # type: ignore[arg-type]


def assert_unauthorized(result: testing.Result, error: str | None) -> None:
    assert result.status_code == 401
    challenge = result.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="sensorstats"')
    assert ('error="invalid_token"' in challenge) == (error == "invalid_token")
    assert result.headers["content-type"] == "application/problem+json"
    if result.text:  # HEAD has none
        assert result.json["type"] == "urn:sensorstats:problem:unauthorized"
        assert result.json["status"] == 401


def test_without_tokens_configured_anyone_may_write() -> None:
    app = testing.TestClient(create_app(Settings(), MemoryStore()))
    assert app.simulate_post("/data", body=BODY).status_code == 204
    assert app.simulate_delete("/statistics/abc").status_code == 204


@pytest.mark.parametrize(
    ("headers", "error"),
    [
        ({}, None),
        ({"Authorization": f"Basic {WRITER}"}, None),
        ({"Authorization": ""}, None),
        (bearer(READER), "invalid_token"),
        (bearer(WRITER[:-1]), "invalid_token"),
        ({"Authorization": "Bearer"}, "invalid_token"),
        ({"Authorization": f"Bearer {WRITER} {WRITER}"}, "invalid_token"),
    ],
    ids=["none", "basic", "empty", "wrong", "truncated", "bearer-alone", "two-tokens"],
)
def test_writes_without_a_valid_token_are_401_and_store_nothing(
    headers: dict[str, str], error: str | None
) -> None:
    app = client()
    assert_unauthorized(app.simulate_post("/data", body=BODY, headers=headers), error)
    app.simulate_post("/data", body=BODY, headers=bearer(WRITER))
    assert_unauthorized(app.simulate_delete("/statistics/abc", headers=headers), error)
    assert app.simulate_get("/statistics/abc").json["count"] == 1


def test_writes_with_the_token_succeed_whatever_the_schemes_case() -> None:
    app = client()
    assert app.simulate_post("/data", body=BODY, headers=bearer(WRITER)).status_code == 204
    headers = {"Authorization": f"bearer  {WRITER} "}
    assert app.simulate_post("/data", body=BODY, headers=headers).status_code == 204
    assert app.simulate_get("/statistics/abc").json["count"] == 2
    assert app.simulate_delete("/statistics/abc", headers=bearer(WRITER)).status_code == 204
    assert app.simulate_get("/statistics/abc").json["count"] == 0


def test_the_401_tells_a_missing_token_from_a_wrong_one() -> None:
    app = client()
    missing = app.simulate_post("/data", body=BODY).json["detail"]
    wrong = app.simulate_post("/data", body=BODY, headers=bearer(READER)).json["detail"]
    assert "needs a bearer token" in missing
    assert wrong == "the bearer token is not valid"


def test_an_invalid_body_from_an_unknown_client_is_401_not_400() -> None:
    """Nothing about the request is looked at before the client is known."""
    result = client().simulate_post("/data", body="not json")
    assert result.status_code == 401


def test_reads_and_probes_stay_open_by_default() -> None:
    app = client()
    assert app.simulate_get("/statistics/abc").status_code == 200
    assert app.simulate_head("/statistics/abc").status_code == 200
    assert app.simulate_get("/healthz").status_code == 204
    assert app.simulate_get("/livez").status_code == 204


def test_reads_need_a_token_when_configured_but_probes_never() -> None:
    app = client(read_requires_token=True)
    assert_unauthorized(app.simulate_get("/statistics/abc"), None)
    assert_unauthorized(
        app.simulate_head("/statistics/abc", headers=bearer(READER)), "invalid_token"
    )
    assert app.simulate_get("/statistics/abc", headers=bearer(WRITER)).status_code == 200
    for probe in ("/healthz", "/livez"):
        assert app.simulate_get(probe).status_code == 204
        assert app.simulate_head(probe).status_code == 204


def test_options_never_needs_a_token() -> None:
    app = client(read_requires_token=True)
    for path in ("/data", "/statistics/abc", "/healthz", "/livez"):
        assert app.simulate_options(path).status_code == 204, path


def test_a_method_the_route_does_not_serve_is_still_405() -> None:
    app = client()
    assert app.simulate_put("/data").status_code == 405
    assert app.simulate_delete("/data").status_code == 405
    assert app.simulate_post("/statistics/abc").status_code == 405


def test_unknown_paths_are_404_whoever_asks() -> None:
    assert client().simulate_post("/nothing-here").status_code == 404


def test_tokens_never_reach_logs_or_answers(caplog: pytest.LogCaptureFixture) -> None:
    app = client()
    with caplog.at_level(logging.DEBUG):
        answers = [
            app.simulate_post("/data", body=BODY, headers=bearer(READER)),
            app.simulate_post("/data", body=BODY, headers=bearer(WRITER)),
            app.simulate_post("/data", body="[1]", headers=bearer(WRITER)),
            app.simulate_delete("/statistics/abc", headers=bearer(READER)),
        ]
    for answer in answers:
        text = answer.text + json.dumps(dict(answer.headers))
        assert WRITER not in text
        assert READER not in text
    assert WRITER not in caplog.text
    assert READER not in caplog.text


def test_idempotency_keys_are_scoped_per_client() -> None:
    app = client(api_tokens=tokens_from_list(f"a:{WRITER},b:{READER}"))
    key = {"Idempotency-Key": '"batch-1"'}
    first = app.simulate_post("/data", body=BODY, headers={**bearer(WRITER), **key})
    replay = app.simulate_post("/data", body=BODY, headers={**bearer(WRITER), **key})
    assert (first.status_code, replay.status_code) == (204, 204)
    other_payload = json.dumps([{**SAMPLE[0], "value": 1}])
    # Another client may use the same key for its own batch...
    other = app.simulate_post("/data", body=other_payload, headers={**bearer(READER), **key})
    assert other.status_code == 204
    # ...while the first client reusing it for another payload is refused.
    reused = app.simulate_post("/data", body=other_payload, headers={**bearer(WRITER), **key})
    assert reused.status_code == 422
    assert app.simulate_get("/statistics/abc").json["count"] == 2


def test_two_tokens_of_one_name_share_its_idempotency_scope() -> None:
    """A client that rotates its token mid-retry still gets its first outcome."""
    app = client(api_tokens=tokens_from_list(f"sensors:{WRITER},sensors:{READER}"))
    key = {"Idempotency-Key": '"batch-1"'}
    assert (
        app.simulate_post("/data", body=BODY, headers={**bearer(WRITER), **key}).status_code == 204
    )
    assert (
        app.simulate_post("/data", body=BODY, headers={**bearer(READER), **key}).status_code == 204
    )
    assert app.simulate_get("/statistics/abc").json["count"] == 1


def test_the_app_takes_its_tokens_from_the_file_setting(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"writer:{WRITER}\n")
    app = testing.TestClient(create_app(Settings(api_tokens_file=str(path)), MemoryStore()))
    assert_unauthorized(app.simulate_post("/data", body=BODY), None)
    assert app.simulate_post("/data", body=BODY, headers=bearer(WRITER)).status_code == 204


# --- end to end: real processes ---------------------------------------------------------------


def test_acceptance_from_outside(tmp_path: Path) -> None:
    """The HTTP contract's "Access control", checked against `python -m sensorstats` over HTTP."""
    env = {"SENSORSTATS_API_TOKENS": f"writer:{WRITER}"}
    with start_service(env=env, log_dir=tmp_path) as service:
        for headers in ({}, bearer(READER)):
            for answer in (
                service.post("/data", SAMPLE, headers=headers),
                service.delete(statistics_path("abc"), headers=headers),
            ):
                assert answer.status == 401
                assert answer.headers["www-authenticate"].startswith("Bearer")
                assert json.loads(answer.body)["status"] == 401
        assert service.post("/data", SAMPLE, headers=bearer(WRITER)).status == 204
        assert service.get(statistics_path("abc")).json["count"] == 1
        assert service.delete(statistics_path("abc"), headers=bearer(WRITER)).status == 204
        assert service.get("/healthz").status == 204
        assert service.get("/livez").status == 204
        log = service.log()
    assert WRITER not in log
    assert READER not in log


def test_tokens_rotate_through_the_file_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"old:{WRITER}\n")
    env = {"SENSORSTATS_API_TOKENS_FILE": str(path)}
    with start_service(env=env, log_dir=tmp_path) as service:
        assert service.post("/data", SAMPLE, headers=bearer(WRITER)).status == 204
        # Step 1 of a rotation: the new token next to the old one.
        rewrite(path, f"old:{WRITER}\nnew:{READER}\n")
        wait_for_status(service, READER, 204)
        assert service.post("/data", SAMPLE, headers=bearer(WRITER)).status == 204
        # Step 2, once clients use the new one: the old one goes.
        rewrite(path, f"new:{READER}\n")
        wait_for_status(service, WRITER, 401)
        assert service.post("/data", SAMPLE, headers=bearer(READER)).status == 204
        pid = service.pid
        assert service.process.poll() is None
        log = service.log()
    assert service.pid == pid
    assert "re-read: 2 token(s)" in log
    assert WRITER not in log
    assert READER not in log


def wait_for_status(service, token: str, status: int, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while service.post("/data", SAMPLE, headers=bearer(token)).status != status:
        assert time.monotonic() < deadline, f"still not {status} after {timeout} s"
        time.sleep(0.2)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("empty-file", "holds no token"),
        ("missing-file", "No such file"),
        ("directory", "cannot read"),
        ("both", "are both set"),
        ("empty-variable", "SENSORSTATS_API_TOKENS: is set but empty"),
        ("short-token", "SENSORSTATS_API_TOKENS: entry 2: a token must have 16"),
        ("reads-without-tokens", "SENSORSTATS_READ_REQUIRES_TOKEN"),
    ],
)
def test_unusable_token_settings_stop_start_up_with_exit_2(
    tmp_path: Path, setup: str, message: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text("")
    env = {
        "empty-file": {"SENSORSTATS_API_TOKENS_FILE": str(path)},
        "missing-file": {"SENSORSTATS_API_TOKENS_FILE": str(tmp_path / "nope")},
        "directory": {"SENSORSTATS_API_TOKENS_FILE": str(tmp_path)},
        "both": {"SENSORSTATS_API_TOKENS": WRITER, "SENSORSTATS_API_TOKENS_FILE": str(path)},
        "empty-variable": {"SENSORSTATS_API_TOKENS": ""},
        "short-token": {"SENSORSTATS_API_TOKENS": f"{WRITER},abc"},
        "reads-without-tokens": {"SENSORSTATS_READ_REQUIRES_TOKEN": "true"},
    }[setup]
    if setup == "both":
        path.write_text(READER + "\n")
    result = run_module("--port", "0", env=env)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("sensorstats: error: ")
    assert message in line
    assert WRITER not in line
    assert READER not in line


def test_the_settings_name_the_token_file_and_reads_flag() -> None:
    settings = load_settings(["--read-requires-token", "yes"], {"SENSORSTATS_API_TOKENS": WRITER})
    assert settings.read_requires_token is True
    assert isinstance(settings.api_tokens, Tokens)
    assert WRITER not in repr(settings)
