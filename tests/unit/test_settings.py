"""Settings: defaults, ``SENSORSTATS_*`` variables, flags over both, precise errors.

`load_settings` is always given its argv and environment, so nothing here
reads the real ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sensorstats.core.tokens import tokens_from_list
from sensorstats.settings import (
    OPTIONS,
    EtcdEndpoint,
    Settings,
    SettingsError,
    load_settings,
    loggable,
)

OPTION_BY_NAME = {option.name: option for option in OPTIONS}
TOKEN = "0123456789abcdefXYZ"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def example_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files that EXAMPLES and COMPANIONS name: a CA, a client pair, tokens, a password."""
    from tests.support.etcd_tls import make_pki

    directory = tmp_path_factory.mktemp("settings-files")
    make_pki(directory)  # ca.crt, client.crt, client.key, server.*, other-ca.crt
    (directory / "tokens").write_text(f"ci:{TOKEN}\n")
    (directory / "password").write_text(PASSWORD + "\r\n")
    (directory / "empty").write_text("")
    (directory / "latin-1").write_bytes("pässword".encode("latin-1"))
    return directory


@pytest.fixture(autouse=True)
def _in_the_example_files_directory(example_files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(example_files)


# For each setting: a text other than the default, and what it means.
EXAMPLES = {
    "host": ("127.0.0.1", "127.0.0.1"),
    "port": ("9000", 9000),
    "etcd_endpoints": ("etcd-0:2379", (EtcdEndpoint("etcd-0", 2379),)),
    "etcd_prefix": ("/tenant-a/", "/tenant-a/"),
    "etcd_timeout": ("0.5", 0.5),
    "etcd_max_txn_ops": ("1024", 1024),
    "write_timeout": ("30", 30.0),
    "threads": ("4", 4),
    "connection_limit": ("10000", 10_000),
    "idle_timeout": ("620", 620.0),
    "receive_timeout": ("2.5", 2.5),
    "max_body_bytes": ("4096", 4096),
    "max_batch": ("20", 20),
    "max_sensor_id": ("64", 64),
    "max_sensors": ("1000000", 1_000_000),
    "idempotency_ttl": ("86400", 86_400.0),
    "log_level": ("debug", "DEBUG"),
    "log_format": ("JSON", "json"),
    "shutdown_timeout": ("3.5", 3.5),
    "drain_delay": ("2", 2.0),
    "api_tokens": (f"ci:{TOKEN}", tokens_from_list(f"ci:{TOKEN}")),
    "api_tokens_file": ("tokens", "tokens"),
    "read_requires_token": ("true", True),
    "etcd_ca_file": ("ca.crt", "ca.crt"),
    "etcd_cert_file": ("client.crt", "client.crt"),
    "etcd_key_file": ("client.key", "client.key"),
    "etcd_user": ("sensorstats", "sensorstats"),
    "etcd_password_file": ("password", "password"),
}
# What a setting needs beside it to be accepted at all (see `_check`).
COMPANIONS = {
    "read_requires_token": {"api_tokens": TOKEN},
    "etcd_ca_file": {"etcd_endpoints": "https://etcd-0:2379"},
    "etcd_cert_file": {"etcd_endpoints": "https://etcd-0:2379", "etcd_key_file": "client.key"},
    "etcd_key_file": {"etcd_endpoints": "https://etcd-0:2379", "etcd_cert_file": "client.crt"},
    "etcd_user": {"etcd_endpoints": "etcd-0:2379", "etcd_password_file": "password"},
    "etcd_password_file": {"etcd_endpoints": "etcd-0:2379", "etcd_user": "sensorstats"},
}


def env(**values: str) -> dict[str, str]:
    return {f"SENSORSTATS_{name.upper()}": text for name, text in values.items()}


# --- the table ---------------------------------------------------------------------


def test_every_setting_has_exactly_one_option():
    assert [option.name for option in OPTIONS] == [f.name for f in dataclasses.fields(Settings)]


@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: o.name)
def test_each_option_names_its_variable_and_flag(option):
    assert option.env == "SENSORSTATS_" + option.name.upper()
    assert option.flag == "--" + option.name.replace("_", "-")
    assert option.help


@pytest.mark.parametrize("field", dataclasses.fields(Settings), ids=lambda f: f.name)
def test_each_options_default_text_means_the_settings_default(field):
    assert OPTION_BY_NAME[field.name].convert(OPTION_BY_NAME[field.name].default) == field.default


def test_every_setting_has_an_example_here():
    assert set(EXAMPLES) == set(OPTION_BY_NAME)


def test_help_lists_every_flag_and_variable(capsys):
    with pytest.raises(SystemExit) as exited:
        load_settings(["--help"], {})
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in OPTIONS:
        assert option.flag in text
        assert option.env in text


# --- where values come from ----------------------------------------------------------


def test_defaults():
    settings = load_settings([], {})
    assert settings == Settings()
    assert settings.host == "0.0.0.0"
    assert settings.port == 8080
    assert settings.etcd_endpoints == ()
    assert settings.etcd_prefix == "/sensorstats/"
    assert settings.max_body_bytes == 1_048_576
    assert settings.max_batch == 10_000
    assert settings.max_sensor_id == 256
    assert settings.log_level == "INFO"
    assert settings.connection_limit == 2048
    assert settings.idle_timeout == 75.0
    assert settings.receive_timeout == 30.0
    assert settings.max_sensors == 50_000


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_variable_sets_its_setting(name):
    text, value = EXAMPLES[name]
    companions = COMPANIONS.get(name, {})
    assert getattr(load_settings([], env(**companions, **{name: text})), name) == value


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_flag_sets_its_setting(name):
    text, value = EXAMPLES[name]
    flag = OPTION_BY_NAME[name].flag
    companions = env(**COMPANIONS.get(name, {}))
    assert getattr(load_settings([flag, text], companions), name) == value
    assert getattr(load_settings([f"{flag}={text}"], companions), name) == value


def test_flags_override_variables():
    settings = load_settings(
        ["--port", "9001", "--log-level", "warning"],
        env(port="9000", log_level="debug", max_batch="7"),
    )
    assert settings.port == 9001
    assert settings.log_level == "WARNING"
    assert settings.max_batch == 7


def test_other_variables_are_ignored():
    assert (
        load_settings([], {"PORT": "1", "SENSORSTATS": "x", "sensorstats_port": "2"}) == Settings()
    )


def test_values_may_carry_surrounding_spaces():
    settings = load_settings([], env(port=" 9000 ", threads="4\n", etcd_timeout=" 1 "))
    assert (settings.port, settings.threads, settings.etcd_timeout) == (9000, 4, 1.0)


def test_an_empty_endpoint_list_means_the_embedded_store():
    assert load_settings(["--etcd-endpoints", ""], env(etcd_endpoints="h:1")).etcd_endpoints == ()


# --- bad values --------------------------------------------------------------------------

BAD_VALUES = [
    pytest.param("port", "x", id="port-x"),
    pytest.param("port", "", id="port-empty"),
    pytest.param("port", "8080.5", id="port-fraction"),
    pytest.param("port", "70000", id="port-70000"),
    pytest.param("port", "-1", id="port-negative"),
    pytest.param("host", "", id="host-empty"),
    pytest.param("host", "my host", id="host-space"),
    pytest.param("threads", "0", id="threads-0"),
    pytest.param("threads", "many", id="threads-words"),
    pytest.param("max_body_bytes", "-1", id="max-body-bytes-negative"),
    pytest.param("max_body_bytes", "0", id="max-body-bytes-0"),
    pytest.param("max_batch", "0", id="max-batch-0"),
    pytest.param("max_sensor_id", "0", id="max-sensor-id-0"),
    pytest.param("log_level", "LOUD", id="log-level-loud"),
    pytest.param("log_level", "", id="log-level-empty"),
    pytest.param("log_format", "yaml", id="log-format-yaml"),
    pytest.param("etcd_prefix", "", id="etcd-prefix-empty"),
    pytest.param("etcd_prefix", "/sensorstats", id="etcd-prefix-without-slash"),
    pytest.param("etcd_max_txn_ops", "1", id="etcd-max-txn-ops-no-room-for-marker"),
    pytest.param("etcd_max_txn_ops", "3", id="etcd-max-txn-ops-no-room-for-a-keyed-sensor"),
    pytest.param("etcd_endpoints", "ftp://x:1", id="endpoint-ftp"),
    pytest.param("etcd_endpoints", "host-without-port", id="endpoint-without-port"),
    pytest.param("etcd_endpoints", "a:1,,b:2", id="endpoint-empty-entry"),
    pytest.param("etcd_endpoints", "a:1,", id="endpoint-trailing-comma"),
    pytest.param("etcd_endpoints", "h:port", id="endpoint-port-name"),
    pytest.param("etcd_endpoints", "h:99999", id="endpoint-port-too-big"),
    pytest.param("etcd_endpoints", "http://h:1/v3", id="endpoint-path"),
    pytest.param("etcd_endpoints", "http://user:pw@h:1", id="endpoint-credentials"),
    pytest.param("etcd_endpoints", "http://h:1?x=1", id="endpoint-query"),
    pytest.param("etcd_endpoints", "http://:1", id="endpoint-without-host"),
    pytest.param("etcd_timeout", "nan", id="etcd-timeout-nan"),
    pytest.param("etcd_timeout", "-1", id="etcd-timeout-negative"),
    pytest.param("etcd_timeout", "0", id="etcd-timeout-0"),
    pytest.param("write_timeout", "inf", id="write-timeout-inf"),
    pytest.param("shutdown_timeout", "nan", id="shutdown-timeout-nan"),
    pytest.param("shutdown_timeout", "-1", id="shutdown-timeout-negative"),
    pytest.param("drain_delay", "soon", id="drain-delay-words"),
    pytest.param("drain_delay", "-1", id="drain-delay-negative"),
    pytest.param("connection_limit", "0", id="connection-limit-0"),
    pytest.param("connection_limit", "lots", id="connection-limit-words"),
    pytest.param("idle_timeout", "0", id="idle-timeout-0"),
    pytest.param("idle_timeout", "nan", id="idle-timeout-nan"),
    pytest.param("receive_timeout", "0", id="receive-timeout-0"),
    pytest.param("receive_timeout", "inf", id="receive-timeout-inf"),
    pytest.param("max_sensors", "0", id="max-sensors-0"),
    pytest.param("max_sensors", "1e6", id="max-sensors-float"),
    pytest.param("api_tokens", "", id="api-tokens-empty"),
    pytest.param("api_tokens", " , ", id="api-tokens-blank-entries"),
    pytest.param("api_tokens", "short", id="api-tokens-short"),
    pytest.param("api_tokens", "a b:0123456789abcdef", id="api-tokens-bad-name"),
    pytest.param("api_tokens_file", "", id="api-tokens-file-empty-name"),
    pytest.param("api_tokens_file", "missing", id="api-tokens-file-missing"),
    pytest.param("api_tokens_file", "empty", id="api-tokens-file-empty"),
    pytest.param("api_tokens_file", ".", id="api-tokens-file-directory"),
    pytest.param("read_requires_token", "maybe", id="read-requires-token-maybe"),
    pytest.param("etcd_ca_file", "", id="etcd-ca-file-empty-name"),
    pytest.param("etcd_ca_file", "missing", id="etcd-ca-file-missing"),
    pytest.param("etcd_ca_file", "tokens", id="etcd-ca-file-not-pem"),
    pytest.param("etcd_ca_file", "client.key", id="etcd-ca-file-a-key"),
    pytest.param("etcd_cert_file", "client.key", id="etcd-cert-file-a-key"),
    pytest.param("etcd_key_file", "client.crt", id="etcd-key-file-a-certificate"),
    pytest.param("etcd_user", " ", id="etcd-user-blank"),
    pytest.param("etcd_password_file", "empty", id="etcd-password-file-empty"),
    pytest.param("etcd_password_file", "missing", id="etcd-password-file-missing"),
    pytest.param("etcd_password_file", "latin-1", id="etcd-password-file-not-utf8"),
]


@pytest.mark.parametrize(("name", "text"), BAD_VALUES)
def test_a_bad_variable_is_named_in_the_error(name, text):
    variable = OPTION_BY_NAME[name].env
    with pytest.raises(SettingsError) as caught:
        load_settings([], {variable: text})
    message = str(caught.value)
    assert message.startswith(f"{variable}: ")
    assert "\n" not in message


@pytest.mark.parametrize(("name", "text"), BAD_VALUES)
def test_a_bad_flag_is_named_in_the_error(name, text):
    flag = OPTION_BY_NAME[name].flag
    with pytest.raises(SettingsError) as caught:
        load_settings([flag, text], {})
    message = str(caught.value)
    assert message.startswith(f"{flag}: ")
    assert "\n" not in message


def test_a_bad_variable_overridden_by_a_good_flag_is_no_error():
    assert load_settings(["--port", "1"], env(port="x")).port == 1


def test_errors_say_what_is_expected():
    with pytest.raises(SettingsError, match="between 0 and 65535, got 70000"):
        load_settings([], env(port="70000"))
    with pytest.raises(SettingsError, match="the scheme must be http or https"):
        load_settings([], env(etcd_endpoints="ftp://x:1"))
    with pytest.raises(SettingsError, match="DEBUG, INFO, WARNING, ERROR or CRITICAL"):
        load_settings([], env(log_level="LOUD"))


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--no-such-flag"], id="unknown-flag"),
        pytest.param(["--port"], id="missing-value"),
        pytest.param(["serve"], id="positional"),
        pytest.param(["--etcd-endpionts=h:1"], id="misspelt"),
    ],
)
def test_unusable_command_lines_are_settings_errors(argv):
    with pytest.raises(SettingsError):
        load_settings(argv, {})


def test_the_etcd_timeout_must_not_exceed_the_write_timeout():
    with pytest.raises(SettingsError) as caught:
        load_settings(["--etcd-timeout", "10", "--write-timeout", "5"], {})
    assert "SENSORSTATS_ETCD_TIMEOUT" in str(caught.value)
    assert "SENSORSTATS_WRITE_TIMEOUT" in str(caught.value)
    with pytest.raises(SettingsError):
        load_settings([], env(write_timeout="1"))  # below the default etcd timeout of 2
    assert load_settings([], env(etcd_timeout="5", write_timeout="5")).etcd_timeout == 5.0


# --- etcd endpoints ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "endpoints"),
    [
        ("etcd:2379", (EtcdEndpoint("etcd", 2379),)),
        ("http://etcd:2379", (EtcdEndpoint("etcd", 2379),)),
        ("http://etcd:2379/", (EtcdEndpoint("etcd", 2379),)),
        ("https://etcd:2379", (EtcdEndpoint("etcd", 2379, secure=True),)),
        ("10.0.0.1:2379", (EtcdEndpoint("10.0.0.1", 2379),)),
        ("[::1]:2379", (EtcdEndpoint("::1", 2379),)),
        (
            " a:1 , http://b:2,https://c:3 ",
            (EtcdEndpoint("a", 1), EtcdEndpoint("b", 2), EtcdEndpoint("c", 3, secure=True)),
        ),
        ("", ()),
    ],
)
def test_etcd_endpoints_are_parsed(text, endpoints):
    assert load_settings([], env(etcd_endpoints=text)).etcd_endpoints == endpoints


@pytest.mark.parametrize(
    "endpoint",
    [
        EtcdEndpoint("etcd", 2379),
        EtcdEndpoint("etcd", 2379, secure=True),
        EtcdEndpoint("10.0.0.1", 1),
        EtcdEndpoint("::1", 2379),
    ],
    ids=["http", "https", "ipv4", "ipv6"],
)
def test_an_endpoints_url_reads_back_as_the_same_endpoint(endpoint):
    # The start-up log shows `str(endpoint)`; an operator pasting it back must get the same.
    assert load_settings([], env(etcd_endpoints=str(endpoint))).etcd_endpoints == (endpoint,)


def test_an_endpoint_url_has_its_scheme():
    assert str(EtcdEndpoint("etcd-0", 2379)) == "http://etcd-0:2379"
    assert str(EtcdEndpoint("etcd-0", 2379, secure=True)) == "https://etcd-0:2379"


def test_the_readme_configuration_table_lists_every_option_with_its_default():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")
        for line in readme.splitlines()
        if line.startswith("| `SENSORSTATS_")
    }
    for option in OPTIONS:
        assert option.env in rows, f"{option.env} is missing from README.md's Configuration table"
        row = rows[option.env]
        assert row[2].strip(" `") == option.flag
        assert row[3].strip(" `") == (option.default or "unset"), f"{option.env}: default"


# --- access control -------------------------------------------------------------------------


def test_a_bad_token_is_reported_without_quoting_it():
    secret = "0123456789abcdef"
    with pytest.raises(SettingsError) as caught:
        load_settings([], env(api_tokens=f"{secret},{secret}x y"))
    assert "entry 2" in str(caught.value)
    assert secret not in str(caught.value)
    assert secret not in repr(load_settings([], env(api_tokens=secret)))


@pytest.mark.parametrize(
    ("values", "names"),
    [
        pytest.param(
            {"api_tokens": TOKEN, "api_tokens_file": "tokens"},
            ("SENSORSTATS_API_TOKENS", "SENSORSTATS_API_TOKENS_FILE", "both set"),
            id="both-token-sources",
        ),
        pytest.param(
            {"read_requires_token": "true"},
            ("SENSORSTATS_READ_REQUIRES_TOKEN", "no tokens are configured"),
            id="reads-protected-without-tokens",
        ),
        pytest.param(
            {"etcd_ca_file": "ca.crt"},
            ("SENSORSTATS_ETCD_CA_FILE", "SENSORSTATS_ETCD_ENDPOINTS", "is not"),
            id="tls-without-etcd",
        ),
        pytest.param(
            {"etcd_user": "u", "etcd_password_file": "password"},
            ("SENSORSTATS_ETCD_USER", "SENSORSTATS_ETCD_ENDPOINTS"),
            id="user-without-etcd",
        ),
        pytest.param(
            {"etcd_endpoints": "https://a:1,http://b:2", "etcd_ca_file": "ca.crt"},
            ("SENSORSTATS_ETCD_CA_FILE", "http://b:2", "not an https:// endpoint"),
            id="tls-with-a-plain-endpoint",
        ),
        pytest.param(
            {"etcd_endpoints": "https://a:1", "etcd_cert_file": "client.crt"},
            ("SENSORSTATS_ETCD_CERT_FILE", "SENSORSTATS_ETCD_KEY_FILE", "set both or neither"),
            id="certificate-without-key",
        ),
        pytest.param(
            {"etcd_endpoints": "https://a:1", "etcd_key_file": "client.key"},
            ("SENSORSTATS_ETCD_CERT_FILE", "SENSORSTATS_ETCD_KEY_FILE", "set both or neither"),
            id="key-without-certificate",
        ),
        pytest.param(
            {
                "etcd_endpoints": "https://a:1",
                "etcd_cert_file": "client.crt",
                "etcd_key_file": "server.key",
            },
            ("server.key", "client.crt", "do not make a usable pair"),
            id="key-of-another-certificate",
        ),
        pytest.param(
            {"etcd_endpoints": "a:1", "etcd_user": "sensorstats"},
            ("SENSORSTATS_ETCD_USER", "SENSORSTATS_ETCD_PASSWORD_FILE", "set both or neither"),
            id="user-without-password",
        ),
        pytest.param(
            {"etcd_endpoints": "a:1", "etcd_password_file": "password"},
            ("SENSORSTATS_ETCD_USER", "SENSORSTATS_ETCD_PASSWORD_FILE", "set both or neither"),
            id="password-without-user",
        ),
    ],
)
def test_access_settings_that_do_not_fit_together_are_refused(values, names):
    with pytest.raises(SettingsError) as caught:
        load_settings([], env(**values))
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


def test_an_encrypted_client_key_is_refused_without_prompting(example_files: Path):
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key((example_files / "client.key").read_bytes(), None)
    (example_files / "encrypted.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    values = {
        "etcd_endpoints": "https://a:1",
        "etcd_cert_file": "client.crt",
        "etcd_key_file": "encrypted.key",
    }
    with pytest.raises(SettingsError, match="the key is encrypted"):
        load_settings([], env(**values))


def test_a_ca_file_with_a_broken_certificate_is_refused(example_files: Path):
    (example_files / "broken.crt").write_text(
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(SettingsError, match=r"broken\.crt is not a usable CA certificate"):
        load_settings([], env(etcd_endpoints="https://a:1", etcd_ca_file="broken.crt"))


def test_the_password_file_loses_only_its_trailing_line_break():
    from sensorstats.settings import read_password

    assert read_password("password") == PASSWORD


def test_a_complete_etcd_access_configuration_loads():
    settings = load_settings(
        [],
        env(
            etcd_endpoints="https://etcd-0:2379,https://etcd-1:2379",
            etcd_ca_file="ca.crt",
            etcd_cert_file="client.crt",
            etcd_key_file="client.key",
            etcd_user="sensorstats",
            etcd_password_file="password",
        ),
    )
    assert settings.etcd_key_file == "client.key"
    assert PASSWORD not in repr(settings)


def test_the_start_up_line_shows_every_setting_but_no_secret():
    settings = load_settings([], env(api_tokens=f"ci:{TOKEN}"))
    shown = loggable(settings)
    assert set(shown) == {option.name for option in OPTIONS}
    assert shown["api_tokens"] == "(set)"
    assert TOKEN not in repr(shown)
    assert loggable(Settings())["api_tokens"] == "(unset)"
    assert loggable(Settings(etcd_endpoints=(EtcdEndpoint("e", 2379),)))["etcd_endpoints"] == [
        "http://e:2379"
    ]
