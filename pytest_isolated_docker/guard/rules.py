"""Refusals: each names its rule and what, if anything, would allow the request."""

from __future__ import annotations

#: What a refusal says when no option of the guard allows the request.
NO_OPTION = (
    "No option allows this through the guard; use --docker-backend=dind or "
    "--docker-backend=machine, whose daemon is not the host's engine."
)
ALLOW_BIND = (
    "Allow a host directory with --docker-guard-allow-bind PATH (PATH:ro for read-only; "
    "PYTEST_DOCKER_GUARD_ALLOW_BIND, ini docker_guard_allow_bind); the test's tmp_path "
    "(pytest's basetemp) is always allowed."
)


class Refused(Exception):
    """A request the guard does not pass on: answered with ``status`` and a JSON message."""

    status = 403

    def __init__(self, rule: str, detail: str, allow: str = NO_OPTION) -> None:
        self.rule = rule
        self.detail = detail
        self.allow = allow
        super().__init__(self.message)

    @property
    def message(self) -> str:
        return (
            f"pytest-isolated-docker guard: refused by rule '{self.rule}': {self.detail}. "
            f"{self.allow}"
        )


class NotFound(Refused):
    """The object a request names does not exist (answered as the engine would, with 404)."""

    status = 404

    def __init__(self, kind: str, reference: str) -> None:
        self.kind = kind
        self.reference = reference
        super().__init__("not-found", f"no such {kind}: {reference}", "")

    @property
    def message(self) -> str:
        return f"No such {self.kind}: {self.reference}"


__all__ = ["ALLOW_BIND", "NO_OPTION", "NotFound", "Refused"]
