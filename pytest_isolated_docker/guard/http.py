"""The guard's HTTP side: h11 on both connections, nothing parsed by hand.

Per test connection (keep-alive, one request at a time): h11 reads the request; the guard reads
its target canonically, matches a route, reads the body the route takes (JSON whole and capped,
streams not at all), runs the checks, and either answers with a refusal (403 JSON naming the rule)
or forwards the canonical request to the engine on a connection of its own, with h11 again. The
answer is streamed back (logs, events, build output), or read whole where the guard narrows it.
When the engine switches protocols (attach, exec start with ``Upgrade: tcp``), both sides are
switched with h11 and the bytes piped through.
"""

from __future__ import annotations

import collections
import contextlib
import json
import select
import socket
import socketserver
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import h11

from ..proxying import Connector, PrivateUnixServer, pipe_both_ways
from .canonical import parse_target
from .engine import EngineConnection
from .jsonread import dumps, load, resolve
from .routes import Call, Judge, Route
from .rules import Refused

#: Largest JSON body read for judging (a create body is a few kB).
JSON_LIMIT = 1024 * 1024
#: Largest body of a route that takes none (``{}`` or ``null`` are tolerated).
NO_BODY_LIMIT = 64
#: Largest answer read whole to be narrowed (inspections, disk usage).
ANSWER_LIMIT = 64 * 1024 * 1024
#: A refused stream (a build context) is read and dropped up to this size, so that the client
#: sees the refusal; past it the connection is closed.
DRAIN_LIMIT = 256 * 1024 * 1024
_READ = 65536
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
        b"expect",
    }
)
_FORM_TYPES = (b"application/x-www-form-urlencoded", b"multipart/form-data")


class ClientGone(Exception):
    """The test closed its connection."""


class _TestSide:
    """The test's connection and its h11 server state."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=256 * 1024)

    def next_event(self) -> Any:
        while True:
            event = self.h11.next_event()
            if event is h11.NEED_DATA:
                self.h11.receive_data(self.sock.recv(_READ))
                continue
            return event

    def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.sock.sendall(data)

    def answer(self, status: int, payload: dict[str, Any]) -> None:
        body = json.dumps(payload).encode()
        self.send(
            h11.Response(
                status_code=status,
                headers=[("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
            )
        )
        self.send(h11.Data(data=body))
        self.send(h11.EndOfMessage())


def _header(request: h11.Request, name: bytes) -> list[bytes]:
    return [value for key, value in request.headers if key == name]


class _Exchange:
    """One request through the guard."""

    def __init__(self, server: GuardProxy, test: _TestSide, request: h11.Request) -> None:
        self.server = server
        self.test = test
        self.request = request
        self.method = request.method.decode("ascii", "replace")
        self.body_done = False
        self.test_closed = False

    # ---- judging ------------------------------------------------------------------------------

    def judge(self) -> tuple[Route, Call, bytes | None]:
        request = self.request
        if _header(request, b"content-length") and _header(request, b"transfer-encoding"):
            raise Refused(
                "ambiguous-framing",
                "both Content-Length and Transfer-Encoding frame the body; readers disagree on "
                "where it ends",
            )
        content_type = b";".join(_header(request, b"content-type")).lower()
        if content_type.startswith(_FORM_TYPES):
            raise Refused(
                "form-body",
                "a form body (dockerd reads query parameters from it, which the guard does not)",
            )
        target = parse_target(request.target)
        route, match = self.server.judge.route(self.method, target)
        call = Call(self.method, target, match)
        raw: bytes | None = None
        if route.body != "stream":
            raw = self.read_body(JSON_LIMIT if route.body == "json" else NO_BODY_LIMIT)
            if route.body == "none":
                if raw.strip() not in (b"", b"{}", b"null"):
                    raise Refused(
                        "unexpected-body",
                        f"{self.method} {target.path} takes no body (old API versions read a host "
                        "configuration from it)",
                    )
                raw = b""
            elif raw.strip() and route.schema is not None:
                call.body = resolve(load(raw), route.schema)
        route.check(self.server.judge, call)
        return route, call, raw

    def read_body(self, limit: int) -> bytes:
        if self.test.h11.client_is_waiting_for_100_continue:
            self.test.send(h11.InformationalResponse(status_code=100, headers=[]))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self.test.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    raise Refused(
                        "body-too-large", f"the body is larger than {limit} bytes for this endpoint"
                    )
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return b"".join(chunks)
            else:
                raise ClientGone()

    def drain(self) -> None:
        """Read and drop the rest of a refused request's body, up to :data:`DRAIN_LIMIT`."""
        if self.body_done or self.test.h11.their_state is not h11.SEND_BODY:
            return
        if self.test.h11.client_is_waiting_for_100_continue:
            return  # it sends no body before a 100 Continue: answer, then close
        size = 0
        while size <= DRAIN_LIMIT:
            event = self.test.next_event()
            if isinstance(event, h11.Data):
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                self.body_done = True
                return
            else:
                raise ClientGone()

    # ---- forwarding ---------------------------------------------------------------------------

    def forward(
        self, route: Route, call: Call, raw: bytes | None, engine: EngineConnection
    ) -> bool:
        """Send the judged request to the engine and its answer back; True to keep both
        connections for another request."""
        request = self.request
        headers = [
            (name, value) for name, value in request.headers if name.lower() not in _HOP_BY_HOP
        ]
        headers.append((b"Host", b"docker"))
        upgrade = _header(request, b"upgrade")
        if route.hijack and upgrade:
            headers += [(b"Connection", b"Upgrade"), (b"Upgrade", upgrade[0])]
        body: bytes | None = None
        if route.body == "json":
            body = dumps(call.body) if call.body is not None else (raw or b"")
            headers = [(n, v) for n, v in headers if n.lower() != b"content-type"]
            headers.append((b"Content-Type", b"application/json"))
        if route.body == "stream":
            length = _header(request, b"content-length")
            headers.append(
                (b"Content-Length", length[0]) if length else (b"Transfer-Encoding", b"chunked")
            )
        else:
            headers.append((b"Content-Length", str(len(body or b"")).encode()))
        engine.send(
            h11.Request(method=request.method, target=call.target.upstream(), headers=headers)
        )
        if route.body == "stream":
            if self.test.h11.client_is_waiting_for_100_continue:
                self.test.send(h11.InformationalResponse(status_code=100, headers=[]))
            while True:
                event = self.test.next_event()
                if isinstance(event, h11.Data):
                    engine.send(h11.Data(data=event.data))
                elif isinstance(event, h11.EndOfMessage):
                    engine.send(h11.EndOfMessage())
                    break
                else:
                    raise ClientGone()
        else:
            if body:
                engine.send(h11.Data(data=body))
            engine.send(h11.EndOfMessage())
        return self.relay(call, engine)

    def next_from_engine(self, engine: EngineConnection) -> Any:
        """The engine's next event; meanwhile a test that hangs up ends the exchange."""
        while True:
            event = engine.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            pending = isinstance(engine.sock, ssl.SSLSocket) and engine.sock.pending()
            watched = [engine.sock] if self.test_closed else [engine.sock, self.test.sock]
            readable = [engine.sock] if pending else select.select(watched, [], [])[0]
            if self.test.sock in readable:
                data = self.test.sock.recv(_READ)
                # An end of input may be a half-close: the answer still goes out, and a test that
                # is really gone is noticed when writing to it fails.
                self.test_closed = not data
                self.test.h11.receive_data(data)  # a pipelined request, kept for later
            if engine.sock in readable:
                engine.h11.receive_data(engine.sock.recv(_READ))

    def relay(self, call: Call, engine: EngineConnection) -> bool:
        while True:
            event = self.next_from_engine(engine)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    self.switch(event, engine)
                    return False
                continue
            if isinstance(event, h11.Response):
                break
            raise ConnectionError("the engine closed the connection before answering")
        headers = [(n, v) for n, v in event.headers if n.lower() not in _HOP_BY_HOP]
        if call.answer is not None:
            self.relay_rewritten(call, event, headers, engine)
        else:
            length = [v for n, v in event.headers if n.lower() == b"content-length"]
            if length:
                headers.append((b"Content-Length", length[0]))
            self.test.send(
                h11.Response(status_code=event.status_code, headers=headers, reason=event.reason)
            )
            while True:
                part = self.next_from_engine(engine)
                if isinstance(part, h11.Data):
                    self.test.send(h11.Data(data=part.data))
                elif isinstance(part, h11.EndOfMessage):
                    break
                else:
                    break  # the engine closed a read-until-close body: end ours
            self.test.send(h11.EndOfMessage())
        return engine.recycle()

    def relay_rewritten(
        self,
        call: Call,
        response: h11.Response,
        headers: list[tuple[bytes, bytes]],
        engine: EngineConnection,
    ) -> None:
        assert call.answer is not None
        chunks = []
        size = 0
        while True:
            part = self.next_from_engine(engine)
            if isinstance(part, h11.Data):
                size += len(part.data)
                if size > ANSWER_LIMIT:
                    raise ConnectionError("the engine's answer is too large to narrow")
                chunks.append(bytes(part.data))
            else:
                break
        raw = b"".join(chunks)
        try:
            payload = json.loads(raw) if raw else None
        except ValueError:
            payload = None
        if payload is not None:
            rewritten = call.answer(response.status_code, payload)
            raw = json.dumps(rewritten).encode()
        headers.append((b"Content-Length", str(len(raw)).encode()))
        self.test.send(
            h11.Response(status_code=response.status_code, headers=headers, reason=response.reason)
        )
        if raw:
            self.test.send(h11.Data(data=raw))
        self.test.send(h11.EndOfMessage())

    def switch(self, response: h11.InformationalResponse, engine: EngineConnection) -> None:
        """Both sides leave HTTP: pipe the attach or exec stream."""
        self.test.send(
            h11.InformationalResponse(
                status_code=101, headers=response.headers, reason=response.reason
            )
        )
        to_engine, _ = self.test.h11.trailing_data
        to_test, _ = engine.h11.trailing_data
        if to_test:
            self.test.sock.sendall(to_test)
        if to_engine:
            engine.sock.sendall(to_engine)
        pipe_both_ways(self.test.sock, engine.sock)


class _GuardHandler(socketserver.BaseRequestHandler):
    server: GuardProxy

    def handle(self) -> None:
        test = _TestSide(self.request)
        engine: EngineConnection | None = None
        try:
            while True:
                try:
                    event = test.next_event()
                except h11.RemoteProtocolError as exc:
                    self.server.note(400, "-", "-", f"malformed HTTP: {exc}")
                    with contextlib.suppress(h11.ProtocolError, OSError):
                        test.answer(exc.error_status_hint, {"message": f"malformed HTTP: {exc}"})
                    return
                if not isinstance(event, h11.Request):
                    return
                keep, engine = self.exchange(test, event, engine)
                if not keep or test.h11.our_state is not h11.DONE:
                    return
                if test.h11.their_state is not h11.DONE:
                    return
                test.h11.start_next_cycle()
        except (ClientGone, OSError, h11.ProtocolError, ConnectionError):
            return
        finally:
            if engine is not None:
                engine.close()
            self.server.judge.own.engine.release()

    def exchange(
        self, test: _TestSide, request: h11.Request, engine: EngineConnection | None
    ) -> tuple[bool, EngineConnection | None]:
        exchange = _Exchange(self.server, test, request)
        try:
            try:
                route, call, raw = exchange.judge()
            except (TypeError, AttributeError, KeyError, ValueError) as exc:
                # A body of a shape the rules did not expect (a string where dockerd wants an
                # object, say): dockerd would refuse it too; the guard never passes it on.
                raise Refused(
                    "malformed-body", f"the body is not of the shape the endpoint takes ({exc!r})"
                ) from None
        except Refused as refusal:
            self.server.note(
                refusal.status,
                exchange.method,
                request.target.decode("ascii", "replace"),
                refusal.message,
            )
            keep = refusal.status != 403 or refusal.rule != "ambiguous-framing"
            try:
                exchange.drain()
            except ClientGone:
                return False, engine
            test.answer(refusal.status, {"message": refusal.message})
            return keep and exchange.body_done, engine
        reused = engine is not None
        while True:
            if engine is None:
                try:
                    engine = EngineConnection(self.server.connect)
                except OSError as exc:
                    message = f"pytest-isolated-docker guard: engine unreachable: {exc}"
                    test.answer(502, {"message": message})
                    return False, None
            try:
                keep = exchange.forward(route, call, raw, engine)
                break
            except (OSError, h11.ProtocolError, ConnectionError):
                engine.close()
                engine = None
                # A kept-alive engine connection may have been closed meanwhile: a request whose
                # body the guard holds, and of which the test has seen nothing yet, is sent again
                # once on a new connection.
                if not (
                    reused and route.body != "stream" and test.h11.our_state is h11.SEND_RESPONSE
                ):
                    raise
                reused = False
        if not keep:
            engine.close()
            engine = None
        return True, engine


class GuardProxy(PrivateUnixServer):
    """The guard in front of the host engine, on a private unix socket (mode 0600)."""

    def __init__(self, socket_path: Path, connect: Connector, judge: Judge) -> None:
        self.connect = connect
        self.judge = judge
        self.refusals = 0
        self._log: collections.deque[str] = collections.deque(maxlen=500)
        self._log_lock = threading.Lock()
        super().__init__(socket_path, _GuardHandler, "pytest-isolated-docker-guard")

    def note(self, status: int, method: str, target: str, message: str) -> None:
        """Record a refusal (404 answers for objects that do not exist are not refusals)."""
        with self._log_lock:
            if status != 404:
                self.refusals += 1
            stamp = time.strftime("%H:%M:%S")
            self._log.append(f"{stamp} {status} {method} {target}: {message}")

    def log_tail(self, tail: int) -> list[str]:
        with self._log_lock:
            return list(self._log)[-tail:]


__all__ = ["GuardProxy"]
