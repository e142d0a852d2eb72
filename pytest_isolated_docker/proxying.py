"""What every proxy in front of an engine shares: a private unix-socket server, connections to
the engine, and a byte pipe for connections that left HTTP (attach, exec).

Used by the socket backend's labelling proxy and by the guarded backend's guard. Nothing here
parses HTTP.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

Connector = Callable[[], socket.socket]

DEFAULT_HOST = "unix:///var/run/docker.sock"

_Server = TypeVar("_Server", bound="PrivateUnixServer")

#: How often a background server's loop checks whether it is asked to stop, in seconds: a stop
#: waits up to this long, on the way of every teardown (socketserver's default is 0.5 s).
SHUTDOWN_POLL_INTERVAL = 0.02


def serving_thread(server: socketserver.BaseServer, name: str) -> threading.Thread:
    """A daemon thread (not yet started) running ``server``'s loop, which ``server.shutdown()``
    ends within :data:`SHUTDOWN_POLL_INTERVAL`."""
    return threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": SHUTDOWN_POLL_INTERVAL},
        name=name,
        daemon=True,
    )


def host_engine_url(environment: Mapping[str, str]) -> str:
    """The host engine's URL, as the docker CLI reads it (``DOCKER_HOST``, else the socket)."""
    return environment.get("DOCKER_HOST") or DEFAULT_HOST


def host_tls(environment: Mapping[str, str]) -> ssl.SSLContext | None:
    """The client TLS context ``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` describe, if any."""
    if not environment.get("DOCKER_TLS_VERIFY"):
        return None
    cert_path = environment.get("DOCKER_CERT_PATH") or os.path.expanduser("~/.docker")
    context = ssl.create_default_context(cafile=os.path.join(cert_path, "ca.pem"))
    context.load_cert_chain(os.path.join(cert_path, "cert.pem"), os.path.join(cert_path, "key.pem"))
    return context


def connector_for(base_url: str, tls: ssl.SSLContext | None = None) -> Connector:
    """A function opening a fresh connection to ``unix://PATH`` or ``tcp://HOST:PORT``."""
    if base_url.startswith(("unix://", "http+unix://")):
        path = base_url.split("://", 1)[1]

        def connect_unix() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            return sock

        return connect_unix
    if base_url.startswith(("tcp://", "http://", "https://")):
        host, _, port = base_url.split("://", 1)[1].rstrip("/").rpartition(":")

        def connect_tcp() -> socket.socket:
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return tls.wrap_socket(sock, server_hostname=host) if tls else sock

        return connect_tcp
    raise ValueError(f"cannot proxy to {base_url!r}: only unix:// and tcp:// engines are supported")


def _copy(source: socket.socket, destination: socket.socket) -> None:
    try:
        while True:
            data = source.recv(65536)
            if not data:
                break
            destination.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            destination.shutdown(socket.SHUT_WR)


def pipe_both_ways(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until the engine's side ends (a hijacked attach or exec stream)."""
    if isinstance(upstream, ssl.SSLSocket):
        _pipe_tls(client, upstream)
        return
    to_upstream = threading.Thread(target=_copy, args=(client, upstream), daemon=True)
    to_upstream.start()
    _copy(upstream, client)
    # The engine has finished answering; a client still holding its side open must not keep this
    # thread alive.
    to_upstream.join(timeout=0.5)


_TLS_WAIT = (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError)
_PIPE_BUFFER = 1024 * 1024


def _pipe_tls(client: socket.socket, upstream: ssl.SSLSocket) -> None:
    """:func:`pipe_both_ways` for a TLS engine, in one thread.

    One TLS connection must not be read and written by two threads at once, and a TLS stream is
    half-closed with a close_notify alert (``socket.shutdown`` would drop the TLS layer and hand
    the other side raw records). So both directions go through one non-blocking loop with a
    buffer each; the test's end of input becomes a close_notify to the engine.
    """
    client.setblocking(False)
    upstream.setblocking(False)
    to_client = bytearray()
    to_upstream = bytearray()
    client_done = upstream_done = notified = False
    try:
        while not (upstream_done and not to_client):
            if client_done and not to_upstream and not notified:
                notified = True
                try:
                    upstream.unwrap()  # sends close_notify; keeps reading until the engine's
                    upstream_done = True  # ... its close_notify came too: nothing more to read
                except _TLS_WAIT:
                    pass
            readers = []
            if not client_done and len(to_upstream) < _PIPE_BUFFER:
                readers.append(client)
            if not upstream_done and len(to_client) < _PIPE_BUFFER:
                readers.append(upstream)
            writers = [
                sock for sock, buffer in ((client, to_client), (upstream, to_upstream)) if buffer
            ]
            pending = upstream in readers and upstream.pending() > 0
            readable, writable, _ = select.select(readers, writers, [], 0 if pending else None)
            if pending and upstream not in readable:
                readable.append(upstream)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except _TLS_WAIT:
                    continue
                except ssl.SSLError:
                    data = b""
                if sock is client:
                    client_done = not data
                    to_upstream += data
                else:
                    upstream_done = not data
                    to_client += data
            for sock in writable:
                buffer = to_client if sock is client else to_upstream
                try:
                    sent = sock.send(buffer)
                except _TLS_WAIT:
                    continue
                del buffer[:sent]
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            client.setblocking(True)
            client.shutdown(socket.SHUT_WR)


class PrivateUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A unix socket of mode 0600 served by one thread per connection, in the background."""

    daemon_threads = True

    def __init__(
        self, socket_path: Path, handler: type[socketserver.BaseRequestHandler], name: str
    ) -> None:
        self.socket_path = socket_path
        if socket_path.exists():
            socket_path.unlink()
        old_umask = os.umask(0o177)
        try:
            super().__init__(str(socket_path), handler)
        finally:
            os.umask(old_umask)
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._thread = serving_thread(self, name)

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket_path}"

    def process_request_thread(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        with self._connections_lock:
            self._connections.add(request)
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._connections_lock:
                self._connections.discard(request)

    def start(self: _Server) -> _Server:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, end the connections still open, remove the socket file."""
        if self._thread.is_alive():
            self.shutdown()
        self.server_close()
        with self._connections_lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
