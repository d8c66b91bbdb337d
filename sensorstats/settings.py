"""Configuration: read once, from flags over environment over defaults.

Each setting is a row of `OPTIONS`: its name (which gives the environment
variable ``SENSORSTATS_<NAME>`` and the flag ``--<name>``), a converter from
text, a default and a help line. Cross-field checks follow in `_check`.
"""

from __future__ import annotations

import argparse
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, NoReturn
from urllib.parse import urlsplit

from sensorstats.core.idempotency import DEFAULT_WINDOW_SECONDS
from sensorstats.core.tokens import TokenError, Tokens, read_tokens_file, tokens_from_list

ENV_PREFIX = "SENSORSTATS_"


class SettingsError(ValueError):
    """A setting has a value the service cannot run with; the text says which."""


@dataclass(frozen=True, slots=True)
class EtcdEndpoint:
    """One etcd member's client URL, split into what the client needs."""

    host: str
    port: int
    secure: bool = False

    @property
    def netloc(self) -> str:
        """``host:port``, with an IPv6 address in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.netloc}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the service can be told; see `OPTIONS` for meanings."""

    host: str = "0.0.0.0"  # noqa: S104 - a service in a container listens on all
    port: int = 8080
    etcd_endpoints: tuple[EtcdEndpoint, ...] = ()
    etcd_prefix: str = "/sensorstats/"
    etcd_timeout: float = 2.0
    etcd_max_txn_ops: int = 128
    write_timeout: float = 5.0
    # Not waitress's 4: with etcd, a request spends most of its time waiting
    # on the network, with the interpreter lock released.
    threads: int = 16
    connection_limit: int = 2048
    idle_timeout: float = 75.0
    receive_timeout: float = 30.0
    max_body_bytes: int = 1_048_576
    max_batch: int = 10_000
    max_sensor_id: int = 256
    max_sensors: int = 50_000
    idempotency_ttl: float = DEFAULT_WINDOW_SECONDS
    log_level: str = "INFO"
    log_format: str = "auto"
    shutdown_timeout: float = 20.0
    drain_delay: float = 0.0
    api_tokens: Tokens | None = None
    api_tokens_file: str = ""
    read_requires_token: bool = False
    etcd_ca_file: str = ""
    etcd_cert_file: str = ""
    etcd_key_file: str = ""
    etcd_user: str = ""
    etcd_password_file: str = ""


def _integer(low: int, high: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise SettingsError(f"must be an integer, got {text!r}") from None
        if not low <= value <= high:
            raise SettingsError(f"must be between {low} and {high}, got {value}")
        return value

    return convert


def _seconds(low: float, high: float) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise SettingsError(f"must be a number of seconds, got {text!r}") from None
        if not low <= value <= high:  # also rejects nan
            raise SettingsError(f"must be between {low} and {high} seconds, got {text}")
        return value

    return convert


def _host(text: str) -> str:
    host = text.strip()
    if not host or any(c.isspace() for c in host):
        raise SettingsError(f"must be a host name or address, got {text!r}")
    return host


def _endpoint(text: str) -> EtcdEndpoint:
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise SettingsError(f"{text!r} is not host:port ({error})") from None
    if parts.scheme not in ("http", "https"):
        raise SettingsError(f"{text!r}: the scheme must be http or https")
    if not parts.hostname or port is None or parts.path not in ("", "/"):
        raise SettingsError(f"{text!r} is not host:port or http(s)://host:port")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise SettingsError(f"{text!r}: credentials, queries and fragments are not allowed")
    return EtcdEndpoint(parts.hostname, port, parts.scheme == "https")


def _endpoints(text: str) -> tuple[EtcdEndpoint, ...]:
    if not text.strip():
        return ()
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise SettingsError(f"has an empty entry: {text!r}")
    return tuple(_endpoint(item) for item in items)


def _prefix(text: str) -> str:
    if not text.endswith("/"):
        raise SettingsError(f"must end with '/' so that keys read as a path, got {text!r}")
    return text


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise SettingsError(f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {text!r}")
    return level


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("auto", "json", "text"):
        raise SettingsError(f"must be auto, json or text, got {text!r}")
    return value


def _boolean(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise SettingsError(f"must be true or false, got {text!r}")


def _api_tokens(text: str) -> Tokens | None:
    if not text.strip():
        return None
    try:
        return tokens_from_list(text)
    except TokenError as error:  # names the entry, never the token
        raise SettingsError(str(error)) from None


def _api_tokens_file(text: str) -> str:
    path = text.strip()
    if path:
        try:
            read_tokens_file(path)
        except TokenError as error:
            raise SettingsError(str(error)) from None
    return path


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as error:
        raise SettingsError(f"cannot read {path}: {error.strerror}") from None


def _pem_file(label: str) -> Callable[[str], str]:
    """A readable file holding a PEM block whose label ends with `label`."""

    def convert(text: str) -> str:
        path = text.strip()
        if path and f"{label}-----".encode() not in _read(path):
            raise SettingsError(f"{path} holds no PEM {label} (-----BEGIN ...{label}-----)")
        return path

    return convert


def _ca_file(text: str) -> str:
    path: str = _pem_file("CERTIFICATE")(text)
    if path:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except ssl.SSLError as error:
            raise SettingsError(f"{path} is not a usable CA certificate: {error}") from None
    return path


def read_password(path: str) -> str:
    """The password a file holds: its text without the line break editors and tools append."""
    try:
        password = _read(path).decode().rstrip("\r\n")
    except UnicodeDecodeError:
        raise SettingsError(f"{path} is not UTF-8 text") from None
    if not password:
        raise SettingsError(f"{path} is empty")
    return password


def _password_file(text: str) -> str:
    path = text.strip()
    if path:
        read_password(path)
    return path


def _user(text: str) -> str:
    return text.strip()


@dataclass(frozen=True, slots=True)
class Option:
    """One row of the settings table.

    `required_if_set`: a variable or flag given with an empty value is an
    error instead of meaning "unset", for settings where an accidentally
    empty value (a missing Secret, a typo in a shell variable) would silently
    turn a protection off.
    """

    name: str
    convert: Callable[[str], Any]
    help: str
    required_if_set: bool = False

    @property
    def default(self) -> str:
        """The default as text, as a variable or flag would give it: `Settings`' own default."""
        return _as_text(_SETTINGS_DEFAULTS[self.name])

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("host", _host, "listen address"),
    Option("port", _integer(0, 65535), "listen port (0 picks a free one)"),
    Option(
        "etcd_endpoints",
        _endpoints,
        "comma-separated etcd members, host:port or http(s)://host:port; "
        "empty means the embedded in-memory store (one instance only)",
    ),
    Option("etcd_prefix", _prefix, "key namespace in etcd"),
    Option("etcd_timeout", _seconds(0.05, 60), "timeout of one etcd call, seconds"),
    Option(
        "etcd_max_txn_ops",
        # 4: a keyed chunk's one sensor, its marker and two guards (store/etcd/keyed.py).
        _integer(4, 1_000_000),
        "operations etcd allows per transaction (its --max-txn-ops); "
        "batches touching more sensors are split",
    ),
    Option(
        "write_timeout",
        _seconds(0.05, 300),
        "deadline for committing one POST, retries included, seconds",
    ),
    Option("threads", _integer(1, 1024), "waitress worker threads"),
    Option(
        "connection_limit",
        _integer(1, 1_000_000),
        "open client connections at most; at the limit a new connection displaces "
        "the one that has gone longest without a complete request",
    ),
    Option(
        "idle_timeout",
        _seconds(0.1, 86_400),
        "close a connection that has sent nothing for this long, seconds "
        "(longer than a load balancer's own idle timeout)",
    ),
    Option(
        "receive_timeout",
        _seconds(0.1, 86_400),
        "how long a client may take to send one request (line, headers and body) "
        "from its first byte, seconds; then 408 and the connection is closed",
    ),
    Option("max_body_bytes", _integer(1, 1 << 30), "request body limit (413)"),
    Option("max_batch", _integer(1, 10_000_000), "measurements per request (413)"),
    Option("max_sensor_id", _integer(1, 65_536), "characters per sensor id"),
    Option(
        "max_sensors",
        _integer(1, 1_000_000_000),
        "sensors the embedded in-memory store keeps at most (507 beyond); "
        "not used with etcd, whose quota bounds it",
    ),
    Option(
        "idempotency_ttl",
        _seconds(1, 7 * 86_400),
        "how long a POST's Idempotency-Key is remembered, seconds (kube/README.md, Capacity)",
    ),
    Option("log_level", _log_level, "DEBUG, INFO, WARNING, ERROR or CRITICAL"),
    Option(
        "log_format",
        _log_format,
        "json (one object a line), text, or auto: JSON unless stdout is a terminal",
    ),
    Option(
        "shutdown_timeout",
        _seconds(0, 3600),
        "after SIGTERM, how long in-flight requests may take to finish, seconds",
    ),
    Option(
        "drain_delay",
        _seconds(0, 3600),
        "after SIGTERM, how long to keep serving with /healthz at 503 before "
        "closing the listener, seconds",
    ),
    Option(
        "api_tokens",
        _api_tokens,
        "comma-separated bearer tokens (or name:token) that POST and DELETE require; "
        "unset means no token is needed (prefer the variable or the file: a command "
        "line is visible to every local user)",
        required_if_set=True,
    ),
    Option(
        "api_tokens_file",
        _api_tokens_file,
        "file with one bearer token (or name:token) a line, re-read when it changes; "
        "instead of SENSORSTATS_API_TOKENS",
        required_if_set=True,
    ),
    Option(
        "read_requires_token",
        _boolean,
        "whether GET /statistics needs a token too (true/false)",
    ),
    Option(
        "etcd_ca_file",
        _ca_file,
        "PEM CA certificate(s) that sign etcd's server certificates (https:// endpoints); "
        "unset means the system's CAs",
        required_if_set=True,
    ),
    Option(
        "etcd_cert_file",
        _pem_file("CERTIFICATE"),
        "PEM client certificate for etcd's --client-cert-auth",
        required_if_set=True,
    ),
    Option(
        "etcd_key_file",
        _pem_file("PRIVATE KEY"),
        "PEM private key of the client certificate (unencrypted)",
        required_if_set=True,
    ),
    Option("etcd_user", _user, "etcd user to authenticate as", required_if_set=True),
    Option(
        "etcd_password_file",
        _password_file,
        "file holding the etcd user's password (trailing line breaks are ignored)",
        required_if_set=True,
    ),
)


_SETTINGS_DEFAULTS: dict[str, Any] = {field.name: field.default for field in fields(Settings)}


def _as_text(value: Any) -> str:
    """A default as the text that means it: "" for none, "true"/"false", "2" for 2.0."""
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _named(name: str) -> str:
    option = next(option for option in OPTIONS if option.name == name)
    return f"{option.env} ({option.flag})"


def _check(settings: Settings) -> None:
    if settings.etcd_timeout > settings.write_timeout:
        raise SettingsError(
            f"the etcd timeout (SENSORSTATS_ETCD_TIMEOUT, --etcd-timeout: "
            f"{settings.etcd_timeout}) must not exceed the write timeout "
            f"(SENSORSTATS_WRITE_TIMEOUT, --write-timeout: {settings.write_timeout})"
        )
    _check_tokens(settings)
    _check_etcd_access(settings)


def _check_tokens(settings: Settings) -> None:
    if settings.api_tokens is not None and settings.api_tokens_file:
        raise SettingsError(
            f"{_named('api_tokens')} and {_named('api_tokens_file')} are both set; use one"
        )
    if settings.read_requires_token and not (settings.api_tokens or settings.api_tokens_file):
        raise SettingsError(
            f"{_named('read_requires_token')} is true, but no tokens are configured "
            f"({_named('api_tokens')} or {_named('api_tokens_file')})"
        )


def _check_etcd_access(settings: Settings) -> None:
    tls = [n for n in ("etcd_ca_file", "etcd_cert_file", "etcd_key_file") if getattr(settings, n)]
    auth = [n for n in ("etcd_user", "etcd_password_file") if getattr(settings, n)]
    if (tls or auth) and not settings.etcd_endpoints:
        raise SettingsError(
            f"{_named((tls + auth)[0])} is set, but {_named('etcd_endpoints')} is not"
        )
    plain = [str(e) for e in settings.etcd_endpoints if not e.secure]
    if tls and plain:
        # Certificates for a plain-text connection would be ignored: refuse
        # rather than let an operator believe the connection is encrypted.
        raise SettingsError(
            f"{_named(tls[0])} is set, but {plain[0]} in {_named('etcd_endpoints')} "
            "is not an https:// endpoint"
        )
    if bool(settings.etcd_cert_file) != bool(settings.etcd_key_file):
        raise SettingsError(
            f"{_named('etcd_cert_file')} and {_named('etcd_key_file')} go together; "
            "set both or neither"
        )
    if settings.etcd_cert_file:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                settings.etcd_cert_file, settings.etcd_key_file, password=_no_password
            )
        except (ssl.SSLError, _EncryptedKey) as error:
            raise SettingsError(
                f"the key in {settings.etcd_key_file} and the certificate in "
                f"{settings.etcd_cert_file} do not make a usable pair: {error}"
            ) from None
    if bool(settings.etcd_user) != bool(settings.etcd_password_file):
        raise SettingsError(
            f"{_named('etcd_user')} and {_named('etcd_password_file')} go together; "
            "set both or neither"
        )


class _EncryptedKey(Exception):
    def __str__(self) -> str:
        return "the key is encrypted; sensorstats needs it unencrypted (gRPC takes no passphrase)"


def _no_password() -> bytes:
    # Called by OpenSSL only for an encrypted key; without this callback it
    # would prompt on the terminal.
    raise _EncryptedKey


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise SettingsError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m sensorstats",
        allow_abbrev=False,
        description="Serve per-sensor statistics over HTTP. "
        "Every flag can also be set by the environment variable named in its help.",
    )
    for option in OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.name,
            metavar=option.name.upper(),
            help=f"{option.help} [env {option.env}, default {option.default!r}]",
        )
    return parser


def load_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Settings from flags, then ``SENSORSTATS_*`` variables, then defaults.

    Raises SettingsError naming the offending flag or variable.
    """
    environ = os.environ if environ is None else environ
    flags = _parser().parse_args(argv)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        flag_value = getattr(flags, option.name)
        if flag_value is not None:
            source, text = option.flag, flag_value
        elif option.env in environ:
            source, text = option.env, environ[option.env]
        else:
            source, text = "default", option.default
        if option.required_if_set and source != "default" and not text.strip():
            raise SettingsError(f"{source}: is set but empty; leave it unset to go without")
        try:
            values[option.name] = option.convert(text)
        except SettingsError as error:
            raise SettingsError(f"{source}: {error}") from None
    settings = Settings(**values)
    _check(settings)
    return settings


# Settings that hold secrets themselves (not paths to them): logged as set or not.
SECRET_SETTINGS = frozenset({"api_tokens"})


def loggable(settings: Settings) -> dict[str, Any]:
    """The settings as start-up logs them: every value, a secret only as whether it is set."""
    shown: dict[str, Any] = {}
    for name in (field.name for field in fields(settings)):
        value = getattr(settings, name)
        if name in SECRET_SETTINGS:
            value = "(set)" if value else "(unset)"
        elif isinstance(value, tuple):
            value = [str(item) for item in value]
        shown[name] = value
    return shown
