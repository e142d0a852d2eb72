"""``docker_env`` drives docker-py based subprocesses where ``REQUESTS_CA_BUNDLE`` is set.

requests lets ``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``), which many CI images set, replace the
CA that docker-py takes from ``DOCKER_CERT_PATH``. ``docker_env`` therefore points both at a bundle
of the session's CA plus the CAs the environment trusted. These tests run docker-py in a real
subprocess against a real isolated daemon, and show that without those two variables the same
subprocess fails: the case is live, not hypothetical.
"""

from __future__ import annotations

import collections.abc
import http.server
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from requests.utils import DEFAULT_CA_BUNDLE_PATH

from pytest_isolated_docker.daemon import DockerDaemon, Endpoint
from pytest_isolated_docker.tls import CA_BUNDLE_VARIABLES, CertificateAuthority, ClientTLS

from .conftest import api_daemon

ENGINE_ID = "import docker; print(docker.from_env().info()['ID'])"
PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def certificates(path: Path | str) -> list[bytes]:
    return PEM.findall(Path(path).read_bytes())


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    """A CA unrelated to the session's: the CA of some other HTTPS server the tests talk to."""
    return CertificateAuthority.create("some other server")


@pytest.fixture(scope="module")
def user_bundle(tmp_path_factory: pytest.TempPathFactory, other_ca: CertificateAuthority) -> Path:
    """What a CI image's ``REQUESTS_CA_BUNDLE`` names: certifi's CAs, plus one of its own."""
    bundle = tmp_path_factory.mktemp("user") / "ca-certificates.crt"
    bundle.write_bytes(Path(DEFAULT_CA_BUNDLE_PATH).read_bytes() + other_ca.server_tls([]).ca_cert)
    return bundle


@pytest.fixture(scope="module")
def daemon() -> collections.abc.Iterator[DockerDaemon]:
    """A dind daemon started through the engine API, without pytest's plugin layer."""
    with api_daemon() as started:
        yield started


@pytest.fixture(scope="module")
def daemon_env(daemon: DockerDaemon, user_bundle: Path) -> dict[str, str]:
    """``daemon.env``, asked first where ``REQUESTS_CA_BUNDLE`` names ``user_bundle``."""
    tls = daemon.endpoint.tls
    assert tls is not None
    assert not tls.ca_bundle_path.exists(), "the bundle is made lazily, on the first env()"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("REQUESTS_CA_BUNDLE", str(user_bundle))
        patch.delenv("CURL_CA_BUNDLE", raising=False)
        return daemon.env


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_env_points_requests_and_curl_at_a_bundle_with_the_session_ca(
    daemon: DockerDaemon, daemon_env: dict[str, str], user_bundle: Path
) -> None:
    tls = daemon.endpoint.tls
    assert tls is not None
    bundle = tls.cert_dir / "ca-bundle.pem"
    assert daemon_env["REQUESTS_CA_BUNDLE"] == daemon_env["CURL_CA_BUNDLE"] == str(bundle)
    assert daemon_env["DOCKER_CERT_PATH"] == str(tls.cert_dir)
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o644
    found = certificates(bundle)
    (session_ca,) = certificates(tls.ca_cert)
    assert found[0] == session_ca
    mine = certificates(user_bundle)
    assert len(mine) > 100  # certifi's CAs and the other server's
    assert set(mine) <= set(found)
    assert len(found) == len(set(found)) == len(mine) + 1
    # Made once: later calls, in another environment, return the same file unchanged.
    before = bundle.stat()
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        patch.delenv("CURL_CA_BUNDLE", raising=False)
        again = daemon.env
    assert again == daemon_env
    after = bundle.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_docker_py_subprocess_reaches_the_daemon_with_requests_ca_bundle_set(
    daemon: DockerDaemon, daemon_env: dict[str, str]
) -> None:
    env = {**os.environ, "REQUESTS_CA_BUNDLE": DEFAULT_CA_BUNDLE_PATH, **daemon_env}
    result = run_python(ENGINE_ID, env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == daemon.client.info()["ID"]


def test_without_the_bundle_variables_docker_py_fails_the_handshake(
    daemon_env: dict[str, str],
) -> None:
    docker_only = {k: v for k, v in daemon_env.items() if k not in CA_BUNDLE_VARIABLES}
    env = {**os.environ, "REQUESTS_CA_BUNDLE": DEFAULT_CA_BUNDLE_PATH, **docker_only}
    result = run_python(ENGINE_ID, env)
    assert result.returncode != 0, result.stdout
    assert "CERTIFICATE_VERIFY_FAILED" in result.stderr, result.stderr


@pytest.fixture
def other_https_server(
    other_ca: CertificateAuthority, tmp_path: Path
) -> collections.abc.Iterator[str]:
    """An HTTPS server on 127.0.0.1 with a certificate of ``other_ca``; its URL."""
    import ssl

    server_tls = other_ca.server_tls(["127.0.0.1"])
    (tmp_path / "cert.pem").write_bytes(server_tls.cert)
    (tmp_path / "key.pem").write_bytes(server_tls.key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")

    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"hello from the other server"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hello)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_the_same_subprocess_still_trusts_the_environments_cas(
    daemon: DockerDaemon, daemon_env: dict[str, str], other_https_server: str
) -> None:
    code = f"import requests; {ENGINE_ID}; print(requests.get({other_https_server!r}).text)"
    result = run_python(code, {**os.environ, **daemon_env})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        daemon.client.info()["ID"],
        "hello from the other server",
    ]


# --- where the bundle's other CAs come from (no daemon needed) -----------------------------------


@pytest.fixture
def client_tls(tmp_path: Path) -> ClientTLS:
    ca = CertificateAuthority.create("bundle test")
    ca_dir = tmp_path / "session"
    ca_dir.mkdir()
    return ca.client_tls(ca_dir / "client")


def test_bundle_without_variables_adds_requests_default(client_tls: ClientTLS) -> None:
    found = certificates(client_tls.ca_bundle({}))
    assert found == certificates(client_tls.ca_cert) + certificates(DEFAULT_CA_BUNDLE_PATH)


def test_bundle_skips_an_unreadable_requests_ca_bundle_for_curl_ca_bundle(
    client_tls: ClientTLS, tmp_path: Path
) -> None:
    curl = tmp_path / "curl.pem"
    curl.write_bytes(CertificateAuthority.create("curl's").server_tls([]).ca_cert)
    environment = {"REQUESTS_CA_BUNDLE": str(tmp_path / "missing.pem"), "CURL_CA_BUNDLE": str(curl)}
    found = certificates(client_tls.ca_bundle(environment))
    assert found == certificates(client_tls.ca_cert) + certificates(curl)


def test_bundle_reads_a_ca_directory_as_openssl_does(client_tls: ClientTLS, tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    directory.mkdir()
    hashed = CertificateAuthority.create("hashed").server_tls([]).ca_cert
    (directory / "0123abcd.0").write_bytes(hashed)
    # Not read by OpenSSL from a CA directory: neither is it here.
    (directory / "unhashed.pem").write_bytes(
        CertificateAuthority.create("x").server_tls([]).ca_cert
    )
    shutil.copy(DEFAULT_CA_BUNDLE_PATH, directory / "bundle.crt")
    found = certificates(client_tls.ca_bundle({"REQUESTS_CA_BUNDLE": str(directory)}))
    assert found == [*certificates(client_tls.ca_cert), hashed.strip()]


def test_no_bundle_variables_without_tls() -> None:
    env = Endpoint("unix:///run/some.sock").env()
    assert env == {
        "DOCKER_HOST": "unix:///run/some.sock",
        "DOCKER_TLS_VERIFY": "",
        "DOCKER_CERT_PATH": "",
        "DOCKER_CONTEXT": "",
    }


# --- through the plugin: the docker_env fixture in an inner pytest run ---------------------------

INNER_TEST = f"""
import os, subprocess, sys

def test_docker_py_subprocess(docker_env, docker_client):
    assert os.environ["REQUESTS_CA_BUNDLE"]
    result = subprocess.run(
        [sys.executable, "-c", {ENGINE_ID!r}],
        env={{**os.environ, **docker_env}},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == docker_client.info()["ID"]
"""


def test_docker_env_fixture_with_requests_ca_bundle_set(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", DEFAULT_CA_BUNDLE_PATH)
    monkeypatch.setenv("CURL_CA_BUNDLE", DEFAULT_CA_BUNDLE_PATH)
    pytester.makepyfile(test_inner=INNER_TEST)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", timeout=300)
    result.assert_outcomes(passed=1)
