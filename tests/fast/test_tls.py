"""The session's mutual-TLS material (tls.py), checked with ``cryptography`` itself."""

from __future__ import annotations

import datetime
import io
import ipaddress
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pytest_isolated_docker import tls
from pytest_isolated_docker.coordination import claim_session, release_session, runtime_root
from pytest_isolated_docker.tls import (
    CertificateAuthority,
    ServerTLS,
    file_archive,
    joined_archives,
    server_archive,
)

SESSION = "20250101000000-0123abcd"


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    session = tmp_path / "session"
    session.mkdir(mode=0o700)
    return CertificateAuthority.load_or_create(session, SESSION)


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """Umask 0: a file or directory left to the umask would come out world-readable."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def _cert(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _validity(cert: x509.Certificate) -> tuple[datetime.datetime, datetime.datetime]:
    """notBefore and notAfter, aware, on cryptography 41 (naive only) and 42+ (``*_utc``)."""
    if hasattr(cert, "not_valid_after_utc"):
        return cert.not_valid_before_utc, cert.not_valid_after_utc
    utc = datetime.timezone.utc
    return cert.not_valid_before.replace(tzinfo=utc), cert.not_valid_after.replace(tzinfo=utc)


def _verify_signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> None:
    """Raise InvalidSignature unless ``issuer``'s key signed ``cert``."""
    public_key = issuer.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    algorithm = cert.signature_hash_algorithm
    assert algorithm is not None
    public_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))


def _private_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _same_public_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    public = cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    return key.public_key().public_numbers() == public.public_numbers()


def _extended_key_usage(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _is_ca(cert: x509.Certificate) -> bool:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


# ---- names and usages ---------------------------------------------------------------------------


def test_server_certificate_names_exactly_the_addresses_asked_for(
    ca: CertificateAuthority,
) -> None:
    hosts = ["127.0.0.1", "::1", "localhost", "dind-1.example", "10.0.2.15", "127.0.0.1"]
    cert = _cert(ca.server_tls(hosts).cert)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.0.2.15"),
    }
    assert sorted(sans.get_values_for_type(x509.DNSName)) == ["dind-1.example", "localhost"]
    assert len(sans) == 5  # the repeated address once, nothing else


def test_server_certificate_for_no_address_names_none(ca: CertificateAuthority) -> None:
    cert = _cert(ca.server_tls([]).cert)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_server_certificate_is_for_servers_only(ca: CertificateAuthority) -> None:
    cert = _cert(ca.server_tls(["127.0.0.1"]).cert)
    assert _extended_key_usage(cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not _is_ca(cert)


def test_client_certificate_is_for_clients_only(ca: CertificateAuthority, tmp_path: Path) -> None:
    client = ca.client_tls(tmp_path / "session" / "client")
    cert = _cert(client.client_cert.read_bytes())
    assert _extended_key_usage(cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not _is_ca(cert)
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_ca_can_sign_certificates_and_nothing_below_it_can(ca: CertificateAuthority) -> None:
    constraints = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    assert ca.cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert SESSION in ca.cert.subject.rfc4514_string()


# ---- signatures and keys ------------------------------------------------------------------------


def test_certificates_verify_against_the_session_ca_only(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    client = _cert(ca.client_tls(tmp_path / "session" / "client").client_cert.read_bytes())
    server = _cert(ca.server_tls(["127.0.0.1"]).cert)
    for cert in (client, server):
        assert cert.issuer == ca.cert.subject
        _verify_signed_by(cert, ca.cert)
        _verify_signed_by(ca.cert, ca.cert)  # self-signed
    other = tmp_path / "other"
    other.mkdir()
    stranger = CertificateAuthority.load_or_create(other, SESSION)
    for cert in (client, server):
        with pytest.raises(InvalidSignature):
            _verify_signed_by(cert, stranger.cert)


def test_server_material_is_one_consistent_set(ca: CertificateAuthority) -> None:
    server: ServerTLS = ca.server_tls(["127.0.0.1"])
    assert _cert(server.ca_cert) == ca.cert
    assert _same_public_key(_private_key(server.key), _cert(server.cert))
    assert not _same_public_key(_private_key(server.key), ca.cert)


def test_client_files_are_one_consistent_set(ca: CertificateAuthority, tmp_path: Path) -> None:
    client = ca.client_tls(tmp_path / "session" / "client")
    assert client.cert_dir == tmp_path / "session" / "client"
    assert _cert(client.ca_cert.read_bytes()) == ca.cert
    key = _private_key(client.client_key.read_bytes())
    assert _same_public_key(key, _cert(client.client_cert.read_bytes()))


def test_each_server_certificate_has_its_own_key(ca: CertificateAuthority) -> None:
    first, second = ca.server_tls(["127.0.0.1"]), ca.server_tls(["127.0.0.1"])
    assert first.key != second.key
    assert _cert(first.cert).serial_number != _cert(second.cert).serial_number


# ---- files on disk ------------------------------------------------------------------------------


@pytest.mark.usefixtures("permissive_umask")
def test_private_keys_are_0600_and_the_client_directory_0700(tmp_path: Path) -> None:
    session = tmp_path / "session"
    session.mkdir()
    ca = CertificateAuthority.load_or_create(session, SESSION)
    client = ca.client_tls(session / "client")
    assert _mode(session / "ca-key.pem") == 0o600
    assert _mode(client.client_key) == 0o600
    assert _mode(client.cert_dir) == 0o700
    # The certificates are public; only the keys are private.
    assert _mode(session / "ca.pem") & 0o044
    assert _mode(client.client_cert) & 0o044


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The per-user runtime directory's parent, in tmp_path (XDG_RUNTIME_DIR)."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


@pytest.mark.usefixtures("permissive_umask")
def test_session_directory_is_0700_and_keys_in_it_0600(runtime_dir: Path) -> None:
    """The session's own flow: its directory, the CA in it, the client files below it."""
    session = claim_session(SESSION)
    try:
        assert session.parent.parent == runtime_dir / "pytest-isolated-docker"
        ca = CertificateAuthority.load_or_create(session, SESSION)
        client = ca.client_tls(session / "client")
        for directory in (session.parent.parent, session.parent, session, client.cert_dir):
            assert _mode(directory) == 0o700, directory
        assert _mode(session / "ca-key.pem") == 0o600
        assert _mode(client.client_key) == 0o600
    finally:
        release_session(SESSION)


@pytest.mark.usefixtures("permissive_umask")
@pytest.mark.parametrize("xdg", [True, False])
def test_runtime_root_is_made_0700_even_when_it_was_not(
    xdg: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The per-user directory that holds every session's keys is made private (or fixed)."""
    if xdg:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
        expected = tmp_path / "pytest-isolated-docker"
    else:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
        expected = tmp_path / f"pytest-isolated-docker-{os.getuid()}"
    expected.mkdir(mode=0o755)
    assert runtime_root() == expected
    assert _mode(expected) == 0o700


def test_server_archive_keeps_the_key_private() -> None:
    server = ServerTLS(ca_cert=b"CA", cert=b"CERT", key=b"KEY")
    archive = server_archive(server, prefix="certs/", extra=[("daemon.json", b"{}")])
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        members = tar.getmembers()
        assert [(m.name, m.mode) for m in members] == [
            ("certs/ca.pem", 0o644),
            ("certs/cert.pem", 0o644),
            ("certs/key.pem", 0o600),
            ("certs/daemon.json", 0o644),
        ]
        contents = []
        for member in members:
            extracted = tar.extractfile(member)
            assert extracted is not None
            contents.append(extracted.read())
    assert contents == [b"CA", b"CERT", b"KEY", b"{}"]


def test_joined_archives_keep_order_modes_directories_and_contents() -> None:
    buffer = io.BytesIO(file_archive([("etc/docker/client.key", b"K", 0o600)]))
    with tarfile.open(fileobj=buffer, mode="a") as tar:
        directory = tarfile.TarInfo("etc/docker/certs.d")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
    first = buffer.getvalue()
    second = file_archive([("ca.pem", b"CA", 0o644), ("ready", b"", 0o644)], "certs/")
    with tarfile.open(fileobj=io.BytesIO(joined_archives(first, second))) as tar:
        members = tar.getmembers()
        assert [(m.name, m.mode, m.isdir()) for m in members] == [
            ("etc/docker/client.key", 0o600, False),
            ("etc/docker/certs.d", 0o755, True),
            ("certs/ca.pem", 0o644, False),
            ("certs/ready", 0o644, False),  # last, as the entrypoint waits for it
        ]
        files = [tar.extractfile(m) for m in members if m.isfile()]
        assert [f.read() for f in files if f is not None] == [b"K", b"CA", b""]


# ---- validity -----------------------------------------------------------------------------------


def test_certificates_are_valid_now_and_expire_within_the_window(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    client = _cert(ca.client_tls(tmp_path / "session" / "client").client_cert.read_bytes())
    server = _cert(ca.server_tls(["127.0.0.1"]).cert)
    now = datetime.datetime.now(datetime.timezone.utc)
    for cert in (ca.cert, client, server):
        not_before, not_after = _validity(cert)
        assert not_before <= now < not_after
        # Back-dated a little against clock skew, never by more than the window itself.
        assert now - not_before < datetime.timedelta(hours=1)
        assert not_after - now <= tls._VALIDITY
        assert not_after - now > tls._VALIDITY - datetime.timedelta(minutes=1)


# ---- one CA per session -------------------------------------------------------------------------


def test_second_load_returns_the_same_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    again = CertificateAuthority.load_or_create(tmp_path / "session", "another-session-id")
    assert again.cert.fingerprint(hashes.SHA256()) == ca.cert.fingerprint(hashes.SHA256())
    assert again.key.private_numbers() == ca.key.private_numbers()
    # What the reloaded CA issues verifies against the CA as first made.
    _verify_signed_by(_cert(again.server_tls(["127.0.0.1"]).cert), ca.cert)


def test_another_directory_gets_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = CertificateAuthority.load_or_create(elsewhere, SESSION)
    assert other.cert.fingerprint(hashes.SHA256()) != ca.cert.fingerprint(hashes.SHA256())


def test_client_certificate_is_made_once(ca: CertificateAuthority, tmp_path: Path) -> None:
    first = ca.client_tls(tmp_path / "session" / "client")
    cert, key = first.client_cert.read_bytes(), first.client_key.read_bytes()
    second = ca.client_tls(tmp_path / "session" / "client")
    assert (second.client_cert.read_bytes(), second.client_key.read_bytes()) == (cert, key)
