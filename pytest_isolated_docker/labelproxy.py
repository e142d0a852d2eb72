"""A labelling proxy in front of a shared engine (the socket backend).

Tests talk to a private unix socket; every ``containers/create``, ``networks/create`` and
``volumes/create`` passing through gets the worker's labels added to its JSON body. Cleanup can
then remove exactly what this worker's tests made, whether they used docker-py, the docker CLI or
compose, and never an object that existed before or belongs to another worker.

Each proxied request runs on its own upstream connection (``Connection: close`` is added), so the
proxy only has to read one request head per connection. Upgraded connections (attach, exec) are
piped through untouched in both directions.
"""

from __future__ import annotations

import json
import re
import socket
import socketserver
from collections.abc import Mapping
from pathlib import Path

from .proxying import Connector, PrivateUnixServer, connector_for, pipe_both_ways

_CREATE_PATH = re.compile(rb"^/(v[0-9.]+/)?(containers|networks|volumes)/create(\?|$)")
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024

__all__ = ["Connector", "LabelProxy", "connector_for"]


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed before sending a full request")
        data += chunk
        if len(data) > _MAX_HEAD:
            raise ConnectionError("request head too large")
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _read_exact(sock: socket.socket, buffered: bytes, size: int) -> tuple[bytes, bytes]:
    while len(buffered) < size:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("client closed in the middle of a request body")
        buffered += chunk
    return buffered[:size], buffered[size:]


def _read_chunked(sock: socket.socket, buffered: bytes) -> tuple[bytes, bytes]:
    body = b""
    while True:
        while b"\r\n" not in buffered:
            buffered += sock.recv(65536) or b""
        size_line, _, buffered = buffered.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        chunk, buffered = _read_exact(sock, buffered, size + 2)
        body += chunk[:size]
        if size == 0:
            return body, buffered
        if len(body) > _MAX_BODY:
            raise ConnectionError("request body too large")


def _add_labels(body: bytes, labels: Mapping[str, str]) -> bytes:
    try:
        payload = json.loads(body or b"{}")
    except json.JSONDecodeError:
        return body  # let the engine report its own error
    if isinstance(payload, dict):
        payload["Labels"] = {**(payload.get("Labels") or {}), **labels}
    return json.dumps(payload).encode()


class _Handler(socketserver.BaseRequestHandler):
    server: LabelProxy

    def handle(self) -> None:
        client: socket.socket = self.request
        try:
            head, rest = _read_head(client)
        except (ConnectionError, OSError):
            return
        lines = head.split(b"\r\n")
        request_line, header_lines = lines[0], lines[1:]
        parts = request_line.split(b" ")
        method, path = parts[0], parts[1] if len(parts) > 1 else b""
        headers = [h for h in header_lines if h]
        names = [h.split(b":", 1)[0].strip().lower() for h in headers]
        upgrade = b"upgrade" in names
        body_prefix = rest
        if method == b"POST" and _CREATE_PATH.match(path):
            try:
                if b"content-length" in names:
                    value = headers[names.index(b"content-length")].split(b":", 1)[1]
                    body, after = _read_exact(client, rest, int(value))
                elif b"transfer-encoding" in names:
                    body, after = _read_chunked(client, rest)
                else:
                    body, after = b"", rest
            except (ConnectionError, OSError, ValueError):
                return
            body = _add_labels(body, self.server.labels)
            keep = [
                h
                for h, n in zip(headers, names, strict=False)
                if n not in (b"content-length", b"transfer-encoding")
            ]
            headers = [*keep, b"Content-Length: " + str(len(body)).encode()]
            names = [h.split(b":", 1)[0].strip().lower() for h in headers]
            body_prefix = body + after
        if not upgrade:
            headers = [h for h, n in zip(headers, names, strict=False) if n != b"connection"]
            headers.append(b"Connection: close")
        try:
            upstream = self.server.connect()
        except OSError as exc:
            message = f"pytest-isolated-docker proxy: engine unreachable: {exc}".encode()
            client.sendall(
                b"HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: " + str(len(message)).encode() + b"\r\n\r\n" + message
            )
            return
        with upstream:
            upstream.sendall(b"\r\n".join([request_line, *headers]) + b"\r\n\r\n" + body_prefix)
            pipe_both_ways(client, upstream)


class LabelProxy(PrivateUnixServer):
    """Serve a private unix socket (mode 0600) forwarding to an engine and labelling creations."""

    def __init__(self, socket_path: Path, connect: Connector, labels: Mapping[str, str]) -> None:
        self.connect = connect
        self.labels = dict(labels)
        super().__init__(socket_path, _Handler, "pytest-isolated-docker-proxy")
