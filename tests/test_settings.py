"""Settings: defaults, ``SENSORSTATS_*`` variables, flags over both, precise errors.

`load_settings` is always given its argv and environment, so nothing here
reads the real ones.
"""

from __future__ import annotations

import dataclasses

import pytest

from sensorstats.settings import (
    OPTIONS,
    EtcdEndpoint,
    Settings,
    SettingsError,
    load_settings,
)

OPTION_BY_NAME = {option.name: option for option in OPTIONS}

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
    "shutdown_timeout": ("3.5", 3.5),
    "drain_delay": ("2", 2.0),
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
    assert getattr(load_settings([], env(**{name: text})), name) == value


@pytest.mark.parametrize("name", EXAMPLES)
def test_each_flag_sets_its_setting(name):
    text, value = EXAMPLES[name]
    flag = OPTION_BY_NAME[name].flag
    assert getattr(load_settings([flag, text], {}), name) == value
    assert getattr(load_settings([f"{flag}={text}"], {}), name) == value


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
    pytest.param("etcd_prefix", "", id="etcd-prefix-empty"),
    pytest.param("etcd_prefix", "/sensorstats", id="etcd-prefix-without-slash"),
    pytest.param("etcd_max_txn_ops", "1", id="etcd-max-txn-ops-no-room-for-marker"),
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

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
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
