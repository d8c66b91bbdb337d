"""etcd with TLS and authentication for tests: certificates made here, members that demand them.

`make_pki` writes a throw-away certificate authority and certificates with
the `cryptography` package: one for etcd's server side (127.0.0.1 and
localhost), one for sensorstats as an etcd client, and a second, unrelated
authority that plays the wrong CA. `start_tls_etcd` runs a member that
serves only TLS and, by default, accepts only clients whose certificate the
CA signed (``--client-cert-auth``). `enable_auth` turns on etcd's RBAC
through its gRPC Auth API: a root user, then a user allowed exactly one
key prefix.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.etcd_process import EtcdProcess

ROOT_PASSWORD = "root-password-for-tests"
# etcd's authpb.Permission.Type
READWRITE = 2


@dataclass(frozen=True)
class Pki:
    """Where `make_pki` wrote each PEM file."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # signed nothing here: the wrong CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _authority(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _leaf(
    common_name: str,
    authority: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    *,
    server: bool,
    hosts: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_certificate, ca_key = authority
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if hosts:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def make_pki(
    directory: Path,
    *,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    client_name: str = "sensorstats",
) -> Pki:
    """A CA, a server and a client certificate signed by it, and an unrelated CA."""
    directory.mkdir(parents=True, exist_ok=True)
    authority = _authority("sensorstats test CA")
    other, _ = _authority("some other CA")
    server = _leaf("etcd", authority, server=True, hosts=hosts)
    client = _leaf(client_name, authority, server=False)
    pki = Pki(
        ca=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
        other_ca=directory / "other-ca.crt",
    )
    pki.ca.write_bytes(authority[0].public_bytes(serialization.Encoding.PEM))
    pki.other_ca.write_bytes(other.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server[0].public_bytes(serialization.Encoding.PEM))
    _write_key(pki.server_key, server[1])
    pki.client_cert.write_bytes(client[0].public_bytes(serialization.Encoding.PEM))
    _write_key(pki.client_key, client[1])
    return pki


class TlsEtcdProcess(EtcdProcess):
    """An etcd member whose client port speaks only TLS, with the `pki` server certificate."""

    def __init__(
        self,
        data_dir: Path,
        pki: Pki,
        *,
        client_cert_auth: bool = True,
        extra_args: Sequence[str] = (),
        **kwargs: Any,
    ) -> None:
        self.pki = pki
        tls = [
            f"--cert-file={pki.server_cert}",
            f"--key-file={pki.server_key}",
            f"--trusted-ca-file={pki.ca}",
        ]
        if client_cert_auth:
            tls.append("--client-cert-auth")
        super().__init__(data_dir, extra_args=[*tls, *extra_args], **kwargs)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.client_port}"

    def healthy(self, timeout: float = 1.0) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        # Whether the certificate names the host is for the tests to check.
        context.check_hostname = False
        context.load_cert_chain(str(self.pki.client_cert), str(self.pki.client_key))
        try:
            with urllib.request.urlopen(
                f"{self.url}/health", timeout=timeout, context=context
            ) as response:
                return b'"health":"true"' in response.read()
        except (OSError, urllib.error.URLError):
            return False


@contextmanager
def start_tls_etcd(
    directory: Path,
    pki: Pki,
    *,
    client_cert_auth: bool = True,
    extra_args: Sequence[str] = (),
) -> Iterator[TlsEtcdProcess]:
    """A running single-member etcd that speaks only TLS, stopped by PID on exit."""
    member = TlsEtcdProcess(
        directory / "etcd-tls",
        pki,
        client_cert_auth=client_cert_auth,
        extra_args=extra_args,
    )
    try:
        yield member.start()
    finally:
        member.stop()


def prefix_end(prefix: str) -> bytes:
    """The range end that covers every key starting with `prefix` (etcd's GetPrefixRangeEnd)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1  # prefixes here end in "/", never in 0xff
    return bytes(raw)


def enable_auth(channel: Any, *, user: str, password: str, prefix: str) -> None:
    """Turn on etcd's RBAC: root, and `user` allowed to read and write under `prefix` only.

    `channel` is a gRPC channel to the member with whatever TLS it needs.
    """
    import etcd3.etcdrpc as rpc

    auth = rpc.AuthStub(channel)
    auth.UserAdd(rpc.AuthUserAddRequest(name="root", password=ROOT_PASSWORD), timeout=5)
    auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user="root", role="root"), timeout=5)
    auth.RoleAdd(rpc.AuthRoleAddRequest(name="sensorstats"), timeout=5)
    permission = rpc.auth_pb2.Permission(
        permType=READWRITE, key=prefix.encode(), range_end=prefix_end(prefix)
    )
    auth.RoleGrantPermission(
        rpc.AuthRoleGrantPermissionRequest(name="sensorstats", perm=permission), timeout=5
    )
    auth.UserAdd(rpc.AuthUserAddRequest(name=user, password=password), timeout=5)
    auth.UserGrantRole(rpc.AuthUserGrantRoleRequest(user=user, role="sensorstats"), timeout=5)
    auth.AuthEnable(rpc.AuthEnableRequest(), timeout=5)
