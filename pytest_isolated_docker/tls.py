"""Mutual-TLS material made in-process with ``cryptography`` (ECDSA P-256: milliseconds).

One CA per test session, shared by its xdist workers; one client certificate per session; one
server certificate per daemon, made for the addresses that daemon is reached at. Private keys on
disk are written mode 0600.

Beside a session's client files, :meth:`ClientTLS.ca_bundle` makes a CA bundle for subprocesses:
the session's CA plus the CAs the user's environment trusted. requests lets ``REQUESTS_CA_BUNDLE``
or ``CURL_CA_BUNDLE`` replace the CA that docker-py takes from ``DOCKER_CERT_PATH``; pointing both
at this bundle keeps docker-py based tools able to reach the daemon and every other HTTPS server.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import ipaddress
import os
import re
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import lazy
from .coordination import locked

if TYPE_CHECKING:
    import requests.utils
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509 import oid
else:
    x509 = lazy.module("cryptography.x509")
    hashes = lazy.module("cryptography.hazmat.primitives.hashes")
    serialization = lazy.module("cryptography.hazmat.primitives.serialization")
    ec = lazy.module("cryptography.hazmat.primitives.asymmetric.ec")
    oid = lazy.module("cryptography.x509.oid")
    requests = lazy.module("requests")

_VALIDITY = datetime.timedelta(days=2)

# The variables requests (and curl) read a CA bundle from, in the order requests tries them.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN (?:TRUSTED )?CERTIFICATE-----.+?-----END (?:TRUSTED )?CERTIFICATE-----", re.S
)
# In a CA directory OpenSSL reads only files named by subject hash: 1a2b3c4d.0 (.r0 are CRLs).
_HASHED_NAME = re.compile(r"[0-9a-f]{8}\.[0-9]+")
_bundle_lock = threading.Lock()


@dataclass(frozen=True)
class ClientTLS:
    """A directory laid out as the docker CLI expects: ``ca.pem``, ``cert.pem``, ``key.pem``."""

    cert_dir: Path

    @property
    def ca_cert(self) -> Path:
        return self.cert_dir / "ca.pem"

    @property
    def client_cert(self) -> Path:
        return self.cert_dir / "cert.pem"

    @property
    def client_key(self) -> Path:
        return self.cert_dir / "key.pem"

    @property
    def ca_bundle_path(self) -> Path:
        return self.cert_dir / "ca-bundle.pem"

    def ca_bundle(self, environment: Mapping[str, str] | None = None) -> Path:
        """``ca-bundle.pem``: ``ca.pem`` followed by the CAs ``environment`` trusted.

        Those are the CAs of the bundle named by ``REQUESTS_CA_BUNDLE``, else ``CURL_CA_BUNDLE``
        (a file, or a directory of hashed names), when set and readable, else requests' default
        bundle (certifi). ``environment`` defaults to ``os.environ``. Made on the first call,
        written atomically (mode 0644), and kept: later calls, from any process of the session,
        return the same file.
        """
        bundle = self.ca_bundle_path
        with _bundle_lock:
            if not bundle.exists():
                trusted = _trusted_certificates(os.environ if environment is None else environment)
                _write_atomically(bundle, _join_pem(self.ca_cert.read_bytes(), trusted), 0o644)
        return bundle


@dataclass(frozen=True)
class ServerTLS:
    """PEM bytes a daemon needs: the CA certificate, its certificate and its key."""

    ca_cert: bytes
    cert: bytes
    key: bytes


def server_archive(
    server: ServerTLS, prefix: str = "", extra: Sequence[tuple[str, bytes]] = ()
) -> bytes:
    """A daemon's TLS files (``ca.pem``, ``cert.pem``, ``key.pem`` 0600) as a tar, followed by
    ``extra`` files in order, for copying into a container or sending to a VM."""
    members = [
        ("ca.pem", server.ca_cert, 0o644),
        ("cert.pem", server.cert, 0o644),
        ("key.pem", server.key, 0o600),
        *((name, data, 0o644) for name, data in extra),
    ]
    return file_archive(members, prefix)


def file_archive(members: Sequence[tuple[str, bytes, int]], prefix: str = "") -> bytes:
    """A tar of ``(name, content, mode)`` files, each name under ``prefix``."""
    buffer = io.BytesIO()
    # USTAR: the small tar of a VM's initramfs reads no newer format.
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in members:
            info = tarfile.TarInfo(prefix + name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def joined_archives(*archives: bytes) -> bytes:
    """One tar with the members of each of ``archives``, in order: one copy into a container
    instead of several (each costs the engine a helper process)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as joined:
        for archive in archives:
            with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
                for member in tar.getmembers():
                    joined.addfile(member, tar.extractfile(member) if member.isfile() else None)
    return buffer.getvalue()


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _pem_certificates(location: Path) -> list[bytes]:
    """The PEM certificates of a bundle file, or of a directory as OpenSSL reads it (hashed names).

    Raises OSError when ``location`` cannot be read."""
    if location.is_dir():
        data = b"\n".join(
            entry.read_bytes()
            for entry in sorted(location.iterdir())
            if _HASHED_NAME.fullmatch(entry.name) and entry.is_file()
        )
    else:
        data = location.read_bytes()
    return _PEM_CERTIFICATE.findall(data)


def _trusted_certificates(environment: Mapping[str, str]) -> list[bytes]:
    """The CAs requests in ``environment`` would trust: the bundle its variables name, else
    requests' default (certifi)."""
    for name in CA_BUNDLE_VARIABLES:
        value = environment.get(name, "")
        if not value:
            continue
        try:
            return _pem_certificates(Path(value))
        except OSError:
            continue  # unreadable: as if unset
    return _pem_certificates(Path(requests.utils.DEFAULT_CA_BUNDLE_PATH))


def _join_pem(first: bytes, rest: Iterable[bytes]) -> bytes:
    """``first`` then each certificate of ``rest`` not already in it, one per paragraph."""
    blocks = dict.fromkeys([*_PEM_CERTIFICATE.findall(first), *rest])
    return b"\n\n".join(blocks) + b"\n"


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(oid.NameOID.ORGANIZATION_NAME, "pytest-isolated-docker"),
            x509.NameAttribute(oid.NameOID.COMMON_NAME, common_name),
        ]
    )


class CertificateAuthority:
    """A session's CA, kept in ``directory`` (``ca.pem`` and ``ca-key.pem``, the key 0600)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.cert = cert
        self.key = key

    @classmethod
    def create(cls, session_id: str) -> CertificateAuthority:
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        name = _name(f"pytest-isolated-docker CA {session_id}")
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
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
        return cls(cert, key)

    @classmethod
    def load_or_create(cls, directory: Path, session_id: str) -> CertificateAuthority:
        """The session's CA: made by the first worker that asks, read by the others."""
        cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
        with locked(directory / "ca.lock"):
            if cert_path.exists() and key_path.exists():
                cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
                key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
                assert isinstance(key, ec.EllipticCurvePrivateKey)
                return cls(cert, key)
            ca = cls.create(session_id)
            _write_private(key_path, _key_pem(ca.key))
            cert_path.write_bytes(_cert_pem(ca.cert))
            return ca

    def _issue(
        self,
        common_name: str,
        usage: x509.ObjectIdentifier,
        sans: list[x509.GeneralName],
    ) -> tuple[bytes, bytes]:
        key = _new_key()
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)

    def server_tls(self, hosts: Iterable[str]) -> ServerTLS:
        """A server certificate valid for each of ``hosts`` (IP addresses or DNS names)."""
        sans: list[x509.GeneralName] = []
        for host in dict.fromkeys(hosts):
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        cert, key = self._issue("dockerd", oid.ExtendedKeyUsageOID.SERVER_AUTH, sans)
        return ServerTLS(ca_cert=_cert_pem(self.cert), cert=cert, key=key)

    def client_tls(self, cert_dir: Path) -> ClientTLS:
        """The session's client certificate in ``cert_dir`` (made once, under a lock)."""
        tls = ClientTLS(cert_dir)
        cert_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with locked(cert_dir.parent / (cert_dir.name + ".lock")):
            if not tls.client_key.exists():
                cert, key = self._issue("client", oid.ExtendedKeyUsageOID.CLIENT_AUTH, [])
                _write_private(tls.client_key, key)
                tls.client_cert.write_bytes(cert)
                tls.ca_cert.write_bytes(_cert_pem(self.cert))
        return tls
