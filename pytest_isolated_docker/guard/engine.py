"""HTTP/1.1 connections to the engine, spoken with h11 (no hand-written HTTP).

:class:`EngineConnection` carries the requests the guard forwards; :class:`EngineClient` asks the
engine the guard's own questions (who owns this container, does this volume exist) on a
keep-alive connection per thread.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from typing import Any

import h11

from ..proxying import Connector

_READ = 65536


class EngineConnection:
    """One connection to the engine and its h11 client state."""

    def __init__(self, connect: Connector) -> None:
        self.sock: socket.socket = connect()
        self.h11 = h11.Connection(h11.CLIENT)

    def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.sock.sendall(data)

    def next_event(self) -> h11.Event | type[h11.PAUSED]:
        """The next event from the engine, reading as needed."""
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(_READ))
                continue
            return event  # type: ignore[return-value]

    def recycle(self) -> bool:
        """Make the connection ready for the next request; False when it cannot be reused."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def request_headers(length: int | None, extra: list[tuple[str, str]] = ()) -> list[tuple[str, str]]:  # type: ignore[assignment]
    headers = [("Host", "docker"), *extra]
    if length is not None:
        headers.append(("Content-Length", str(length)))
    return headers


class EngineClient:
    """JSON requests of the guard's own to the engine (keep-alive, one connection per thread)."""

    def __init__(self, connect: Connector) -> None:
        self._connect = connect
        self._local = threading.local()

    def _connection(self) -> EngineConnection:
        connection: EngineConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = EngineConnection(self._connect)
            self._local.connection = connection
        return connection

    def release(self) -> None:
        """Close this thread's connection (a thread that ends must not leave it to the GC)."""
        self._drop()

    def _drop(self) -> None:
        connection: EngineConnection | None = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
        self._local.connection = None

    def request(self, method: str, target: str, payload: Any = None) -> tuple[int, Any]:
        """``(status, decoded JSON body or None)``. A stale keep-alive connection is replaced
        once."""
        body = None if payload is None else json.dumps(payload).encode()
        for attempt in (1, 2):
            connection = self._connection()
            try:
                status, raw = self._exchange(connection, method, target, body)
            except (OSError, h11.ProtocolError):
                self._drop()
                if attempt == 2:
                    raise
                continue
            if not connection.recycle():
                self._drop()
            try:
                return status, json.loads(raw) if raw else None
            except ValueError:
                return status, None
        raise AssertionError("unreachable")

    def get(self, target: str) -> tuple[int, Any]:
        return self.request("GET", target)

    @staticmethod
    def _exchange(
        connection: EngineConnection, method: str, target: str, body: bytes | None
    ) -> tuple[int, bytes]:
        extra = [("Content-Type", "application/json")] if body is not None else []
        connection.send(
            h11.Request(
                method=method,
                target=target,
                headers=request_headers(len(body) if body is not None else None, extra),
            )
        )
        if body:
            connection.send(h11.Data(data=body))
        connection.send(h11.EndOfMessage())
        status = 0
        chunks = []
        while True:
            event = connection.next_event()
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, b"".join(chunks)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                raise ConnectionError("the engine closed the connection mid-answer")


__all__ = ["EngineClient", "EngineConnection", "request_headers"]
