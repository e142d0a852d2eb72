"""The host mirror: a registry v2 mirror serving the host engine's images to isolated daemons.

A dind daemon starts with an empty image store. Given this mirror (``--registry-mirror``), a pull
of a Docker Hub name the host engine has (``debian:bookworm-slim``, ``library/debian``,
``docker.io/...``, or a locally built ``me/app:1``) is answered from the host engine: the image is
exported once per host into :class:`~pytest_isolated_docker.mirrorstore.Store` and its blobs are
served from there. A name the host lacks gets the registry's 404, and dockerd goes on to its next
mirror (``--docker-pull-through-cache``) or to the upstream registry, as without this mirror.
dockerd asks mirrors for Docker Hub names only: other registries' images are not served.

It listens on the host engine's bridge gateway, which dind containers reach, with mutual TLS:
everything on the bridge can connect, so only clients holding a certificate of the session's CA
(the session's daemons, through ``/etc/docker/certs.d/<host:port>/``) are served. One mirror runs
per session, in a thread of the process that owns the session: it ends with that process, however
it ends, and leaves only the store (a cache) behind.
"""

from __future__ import annotations

import contextlib
import http.server
import io
import ipaddress
import json
import os
import re
import socket
import ssl
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import engines, lazy
from .coordination import locked, read_json, write_json
from .engines import Engine
from .errors import StartupError
from .mirrorstore import DIGEST, MANIFEST_TYPE, ExportError, Store
from .net import bridge_gateway
from .proxying import serving_thread
from .tls import CertificateAuthority, ClientTLS

if TYPE_CHECKING:
    import docker
    import docker.errors
else:
    docker = lazy.module("docker")

# The reference grammar of the distribution spec (lower-case path components, tags).
_NAME = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"sha256:[0-9a-f]{64}"
_MANIFEST = re.compile(rf"/v2/(?P<name>{_NAME})/manifests/(?P<reference>{_TAG}|{_DIGEST})")
_BLOB = re.compile(rf"/v2/(?P<name>{_NAME})/blobs/(?P<digest>{_DIGEST})")
_CHUNK = 1 << 20
# An idle connection (or a peer that never finishes its TLS handshake) is dropped after this.
_IDLE_TIMEOUT = 60.0


class HostImages:
    """Registry names → the host engine's images, exported into ``store`` on first use."""

    def __init__(self, engine: Engine, store: Store) -> None:
        self.engine = engine
        self.store = store

    def manifest(self, name: str, reference: str) -> tuple[str, bytes] | None:
        """Digest and content of the manifest for ``name:reference``, or None (not served)."""
        if DIGEST.fullmatch(reference):
            data = self.store.manifest(reference)  # only manifests made here have our digests
            return None if data is None else (reference, data)
        familiar = name.removeprefix("library/") if name.count("/") == 1 else name
        wanted = f"{familiar}:{reference}"
        with contextlib.closing(engines.client(self.engine, timeout=600)) as host:
            try:
                attrs = host.api.inspect_image(wanted)
            except docker.errors.NotFound:
                return None
            # Tags only: the engine also resolves ID prefixes, which a registry name never means.
            if wanted not in (attrs.get("RepoTags") or []):
                return None
            image_id = str(attrs["Id"])
            found = self.store.image_manifest(image_id)
            if found is not None:
                return found
            return self.store.add_image(image_id, lambda: host.api.get_image(image_id), wanted)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.address_string()} {format % args}")

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/v2", "/v2/"):
            self._send(200, b"{}", "application/json", body)
            return
        if match := _MANIFEST.fullmatch(path):
            try:
                found = self.server.images.manifest(match["name"], match["reference"])
            except (docker.errors.DockerException, ExportError, OSError) as exc:
                self.server.log(f"cannot serve {path}: {exc}")
                found = None
            if found is None:
                self._error("MANIFEST_UNKNOWN", f"the host engine has no {path}", body)
                return
            digest, data = found
            self._send(200, data, MANIFEST_TYPE, body, digest)
            return
        if match := _BLOB.fullmatch(path):
            self._send_blob(match["digest"], body)
            return
        self._error("NAME_UNKNOWN", "not served by the host mirror", body)

    def _send_blob(self, digest: str, body: bool) -> None:
        blob = self.server.images.store.blob(digest)
        if blob is None:
            self._error("BLOB_UNKNOWN", f"blob {digest} unknown", body)
            return
        with blob.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            self._head(200, "application/octet-stream", size, digest)
            while body and (chunk := handle.read(_CHUNK)):
                self.wfile.write(chunk)

    def _error(self, code: str, message: str, body: bool) -> None:
        data = json.dumps({"errors": [{"code": code, "message": message}]}).encode()
        self._send(404, data, "application/json", body)

    def _send(self, status: int, data: bytes, kind: str, body: bool, digest: str = "") -> None:
        self._head(status, kind, len(data), digest)
        if body:
            self.wfile.write(data)

    def _head(self, status: int, kind: str, size: int, digest: str) -> None:
        self.send_response(status)
        self.send_header("Docker-Distribution-API-Version", "registry/2.0")
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(size))
        if digest:
            self.send_header("Docker-Content-Digest", digest)
        self.end_headers()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_port = True  # the session's processes share one port (see serve)

    def __init__(
        self, address: tuple[str, int], tls: ssl.SSLContext, images: HostImages, log: Path | None
    ) -> None:
        self.tls = tls
        self.images = images
        self._log_path = log
        self._log_lock = threading.Lock()
        super().__init__(address, _Handler)

    def log(self, line: str) -> None:
        if self._log_path is None:
            return
        with self._log_lock, self._log_path.open("a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The handshake runs in the connection's own thread, not in the accepting one: a peer
        # that stalls it delays nobody else.
        request.settimeout(_IDLE_TIMEOUT)
        try:
            connection = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.log(f"{client_address[0]} refused: {exc}")  # no certificate of the session
            return
        try:
            super().finish_request(connection, client_address)
        finally:
            connection.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.log(f"{client_address[0]} connection error (peer gone?)")


class HostMirror:
    """A running mirror: its URL, the registry's ``host:port``, and :meth:`close`."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        host, port = server.server_address[:2]
        self.port = int(port)
        self.registry = f"{host!s}:{port}"
        self.url = f"https://{self.registry}"

    @classmethod
    def start(
        cls,
        engine: Engine,
        address: str,
        ca: CertificateAuthority,
        store: Store | None = None,
        log: Path | None = None,
        port: int = 0,
    ) -> HostMirror:
        """Serve ``engine``'s images on ``address:port`` (0: picked by the kernel) to clients with
        a certificate of ``ca``. Raises OSError when that cannot be bound."""
        tls = _server_context(ca, address)
        images = HostImages(engine, store or Store.default())
        server = _Server((address, port), tls, images, log)
        thread = serving_thread(server, "pytest-isolated-docker-host-mirror")
        thread.start()
        return cls(server, thread)

    def close(self) -> None:
        """Stop serving (connections being served finish on their own threads)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


class MirrorUnavailable(Exception):
    """No host mirror can serve this engine's images (the reason is the message)."""


def serve(engine: Engine, ca: CertificateAuthority, session_dir: Path) -> HostMirror:
    """This process's listener of the session's host mirror for ``engine``, on its bridge gateway.

    Every process of the session listens on the same port (``SO_REUSEPORT``; the first picks it,
    recorded in the session directory): the kernel hands each connection to a live listener, so
    the mirror outlives the process that started a daemon shared by the workers. Raises
    :class:`MirrorUnavailable` when the engine's bridge is not on this machine (a remote or
    rootless engine).
    """
    try:
        with contextlib.closing(engines.client(engine, timeout=30)) as host:
            address = bridge_gateway(host)
    except (docker.errors.DockerException, StartupError) as exc:
        raise MirrorUnavailable(f"the host engine's bridge is unknown ({exc})") from exc
    if not bindable(address):
        raise MirrorUnavailable(
            f"the host engine's bridge gateway {address} is not an address of this machine "
            "(a remote or rootless engine)"
        )
    state_file = session_dir / "host-mirror.json"
    with locked(session_dir / "host-mirror.lock"):
        state = read_json(state_file)
        port = int(state.get("port", 0)) if state.get("address") == address else 0
        log = session_dir / "host-mirror.log"
        try:
            mirror = HostMirror.start(engine, address, ca, port=port, log=log)
        except OSError:  # the recorded port went to another program meanwhile
            mirror = HostMirror.start(engine, address, ca, log=log)
        write_json(state_file, {"address": address, "port": mirror.port})
    return mirror


def _server_context(ca: CertificateAuthority, address: str) -> ssl.SSLContext:
    server = ca.server_tls([address])
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=server.ca_cert.decode())
    # load_cert_chain reads files only: the key lives on disk (0600) for the time of the call.
    with tempfile.TemporaryDirectory(prefix="pytest-isolated-docker-mirror-") as directory:
        cert, key = Path(directory) / "cert.pem", Path(directory) / "key.pem"
        cert.write_bytes(server.cert)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(server.key)
        context.load_cert_chain(cert, key)
    return context


def certs_d_archive(client: ClientTLS, registries: tuple[str, ...]) -> bytes:
    """``etc/docker/certs.d/<host:port>/`` for each of ``registries``, as a tar for ``/``: the
    CA dockerd verifies the registry with, and the client certificate it shows (key 0600)."""
    buffer = io.BytesIO()
    files = (
        ("ca.crt", client.ca_cert, 0o644),
        ("client.cert", client.client_cert, 0o644),
        ("client.key", client.client_key, 0o600),
    )
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for directory in ("etc", "etc/docker", "etc/docker/certs.d"):
            tar.addfile(_directory(directory))
        for registry in registries:
            tar.addfile(_directory(f"etc/docker/certs.d/{registry}"))
            for name, path, mode in files:
                data = path.read_bytes()
                info = tarfile.TarInfo(f"etc/docker/certs.d/{registry}/{name}")
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _directory(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
    return info


def bindable(address: str) -> bool:
    """True when ``address`` is one of this machine's (the engine's bridge is local)."""
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    except ValueError:
        return False
    with contextlib.closing(socket.socket(family, socket.SOCK_STREAM)) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


__all__ = [
    "HostImages",
    "HostMirror",
    "MirrorUnavailable",
    "bindable",
    "certs_d_archive",
    "serve",
]
