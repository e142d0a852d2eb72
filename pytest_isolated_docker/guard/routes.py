"""Default-deny routing: the endpoints the guard serves, each with its checks.

A request whose canonical method and path match no route is refused. A route says what body it
takes (none; JSON of a schema, read and judged whole; a stream such as a tar, never buffered), what
it checks (ownership of the objects it names, the body rules of :mod:`.policy`, query rules), and
how its answer is read back (ids of new objects learnt, lists and inspections narrowed to own
objects).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from . import schemas
from .canonical import Target
from .jsonread import Schema
from .ownership import Ownership
from .policy import Policy
from .rules import NotFound, Refused

BodyKind = Literal["none", "json", "stream"]
Rewrite = Callable[[int, Any], Any]


@dataclass
class Call:
    """One request as the guard handles it: canonical target, route captures, JSON body."""

    method: str
    target: Target
    match: re.Match[str]
    body: Any = None
    #: Reads (and may rewrite) the engine's JSON answer; None streams the answer through.
    answer: Rewrite | None = None
    replaced: dict[str, str] = field(default_factory=dict)

    def param(self, name: str) -> str:
        return self.replaced.get(name, self.match.group(name))

    def set_param(self, name: str, value: str) -> None:
        """Forward ``value`` (a full id) in place of what the path named."""
        self.replaced[name] = value
        path = self.match.string
        # Spans refer to the matched path: replace from the right so the others stay valid.
        for other in sorted(self.replaced, key=self.match.start, reverse=True):
            start, end = self.match.span(other)
            path = path[:start] + self.replaced[other] + path[end:]
        self.target.path = path


Check = Callable[["Judge", Call], None]


@dataclass(frozen=True)
class Route:
    """An endpoint the guard serves."""

    method: str
    pattern: re.Pattern[str]
    check: Check
    body: BodyKind = "none"
    schema: Schema | None = None
    hijack: bool = False


class Judge:
    """Matches requests to routes and runs their checks."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.own: Ownership = policy.own

    def route(self, method: str, target: Target) -> tuple[Route, re.Match[str]]:
        for prefix, (rule, what) in REFUSED_FAMILIES.items():
            if target.path == prefix or target.path.startswith(prefix + "/"):
                raise Refused(rule, f"{method} {target.path}: {what}")
        for route in ROUTES:
            if route.method != method:
                continue
            match = route.pattern.fullmatch(target.path)
            if match:
                return route, match
        raise Refused(
            "unknown-endpoint",
            f"{method} {target.path} is not an endpoint the guard serves (default deny)",
        )


# ---- checks ---------------------------------------------------------------------------------


def allow(judge: Judge, call: Call) -> None:
    """Nothing to check (read-only, no object of anybody's named)."""


def own_filters(judge: Judge, call: Call) -> None:
    """Lists, events and prunes: narrowed to own objects by the label filter."""
    call.target.replace("filters", judge.own.restrict_filters(call.target.value("filters")))


def own_container(judge: Judge, call: Call) -> None:
    call.set_param("id", judge.own.container(call.param("id")))


def start_container(judge: Judge, call: Call) -> None:
    info = judge.own.container_info(call.param("id"))
    judge.policy.bind_sources_still_allowed(info)
    call.set_param("id", str(info["Id"]))


def update_container(judge: Judge, call: Call) -> None:
    own_container(judge, call)
    judge.policy.container_update(call.body or {})


def learn_id(judge: Judge, kind: str) -> Rewrite:
    """Remember the id of the ``kind`` of object the answer reports made."""

    def read(status: int, answer: Any) -> Any:
        if status < 300 and isinstance(answer, dict) and isinstance(answer.get("Id"), str):
            judge.own.remember(kind, answer["Id"])
        return answer

    return read


def create_container(judge: Judge, call: Call) -> None:
    if call.body is None:
        call.body = {}
    judge.policy.container_create(call.body)
    call.answer = learn_id(judge, "containers")


def create_exec(judge: Judge, call: Call) -> None:
    own_container(judge, call)
    judge.policy.exec_create(call.body or {})
    call.answer = learn_id(judge, "exec")


def own_exec(judge: Judge, call: Call) -> None:
    call.set_param("id", judge.own.exec(call.param("id")))


def inspect_network(judge: Judge, call: Call) -> None:
    info = judge.own.network_info(call.param("id"))
    call.set_param("id", str(info["Id"]))
    if judge.own.is_own(info.get("Labels")):
        return
    mine = judge.own.own_container_ids()

    def narrow(status: int, answer: Any) -> Any:
        if isinstance(answer, dict) and isinstance(answer.get("Containers"), dict):
            answer["Containers"] = {k: v for k, v in answer["Containers"].items() if k in mine}
        return answer

    call.answer = narrow


def own_network(judge: Judge, call: Call) -> None:
    call.set_param("id", judge.own.network(call.param("id"), shared=False))


def create_network(judge: Judge, call: Call) -> None:
    if call.body is None:
        call.body = {}
    judge.policy.network_create(call.body)
    call.answer = learn_id(judge, "networks")


def connect_network(judge: Judge, call: Call) -> None:
    call.set_param("id", judge.own.network(call.param("id")))
    if call.body is None:
        call.body = {}
    judge.policy.network_connect(call.body)


def own_volume(judge: Judge, call: Call) -> None:
    if not judge.own.volume_exists(call.param("name")):
        raise NotFound("volume", call.param("name"))


def create_volume(judge: Judge, call: Call) -> None:
    if call.body is None:
        call.body = {}
    judge.policy.volume_create(call.body)


def narrow_disk_usage(judge: Judge, call: Call) -> None:
    def narrow(status: int, answer: Any) -> Any:
        if isinstance(answer, dict):
            for key in ("Containers", "Volumes"):
                if isinstance(answer.get(key), list):
                    answer[key] = [o for o in answer[key] if judge.own.is_own(o.get("Labels"))]
        return answer

    call.answer = narrow


def create_image(judge: Judge, call: Call) -> None:
    if call.target.value("fromSrc") is not None:
        raise Refused(
            "image-import",
            "importing a file system as an image can take any name, a host image's among them",
        )
    if not call.target.value("fromImage"):
        raise Refused("image-import", "images/create without fromImage")


def _repository_tag(repository: str, tag: str | None) -> str:
    return f"{repository}:{tag}" if tag else repository


def tag_image(judge: Judge, call: Call) -> None:
    judge.own.own_image(call.param("name"), "re-tagged")
    repository = call.target.value("repo") or ""
    judge.own.free_image_name(_repository_tag(repository, call.target.value("tag")))


def remove_image(judge: Judge, call: Call) -> None:
    judge.own.own_image(call.param("name"), "removed")


def _labels_value(judge: Judge, raw: str | None) -> str:
    try:
        labels = json.loads(raw, object_pairs_hook=_unique_pairs) if raw else {}
    except ValueError as exc:
        raise Refused("ambiguous-query", f"the build labels are not a JSON map ({exc})") from None
    if not isinstance(labels, dict):
        raise Refused("ambiguous-query", "the build labels are not a JSON map")
    return json.dumps(judge.own.labelled(labels))


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("a key is repeated")
    return dict(pairs)


def build(judge: Judge, call: Call) -> None:
    query = call.target
    if (query.value("version") or "1") != "1" or query.value("session") or query.value("outputs"):
        raise Refused(
            "buildkit",
            "BuildKit builds run through the /session and /grpc tunnels, which reach the host's "
            "files and entitlements; the classic builder is served (DOCKER_BUILDKIT=0)",
        )
    if query.value("remote"):
        raise Refused("build-remote", "a build context fetched by the engine from a URL")
    if (query.value("networkmode") or "default") not in ("default", "bridge", "none"):
        raise Refused(
            "build-network",
            f"the build network {query.value('networkmode')!r} (host or another container's)",
        )
    if query.value("cgroupparent"):
        raise Refused("cgroup-parent", "a build in a host cgroup")
    if (query.value("isolation") or "default") != "default":
        raise Refused("runtime", f"the build isolation {query.value('isolation')!r}")
    for tag in query.values("t"):
        judge.own.free_image_name(tag)
    query.replace("labels", _labels_value(judge, query.value("labels")))
    # Intermediate containers carry no label: they must never outlive the build.
    query.replace("rm", "1")
    query.replace("forcerm", "1")


def commit(judge: Judge, call: Call) -> None:
    query = call.target
    query.replace("container", judge.own.container(query.value("container") or ""))
    if query.value("repo"):
        judge.own.free_image_name(_repository_tag(query.value("repo") or "", query.value("tag")))
    body = call.body if isinstance(call.body, dict) else {}
    body["Labels"] = judge.own.labelled(body.get("Labels"))
    call.body = body


def refuse(rule: str, what: str) -> Check:
    def check(judge: Judge, call: Call) -> None:
        raise Refused(rule, f"{call.method} {call.target.path}: {what}")

    return check


# ---- the table ------------------------------------------------------------------------------

_ID = r"(?P<id>[^/]+)"
_NAME = r"(?P<name>.+)"


def _route(
    method: str,
    path: str,
    check: Check,
    body: BodyKind = "none",
    schema: Schema | None = None,
    hijack: bool = False,
) -> Route:
    return Route(method, re.compile(path), check, body, schema, hijack)


ROUTES: tuple[Route, ...] = (
    _route("GET", "/_ping", allow),
    _route("HEAD", "/_ping", allow),
    _route("GET", "/version", allow),
    _route("GET", "/info", allow),
    _route("GET", "/events", own_filters),
    _route("GET", "/system/df", narrow_disk_usage),
    # containers
    _route("GET", "/containers/json", own_filters),
    _route("POST", "/containers/create", create_container, "json", schemas.CONTAINER_CREATE),
    _route("POST", "/containers/prune", own_filters),
    _route("GET", f"/containers/{_ID}/(json|top|logs|changes|export|stats)", own_container),
    _route("GET", f"/containers/{_ID}/archive", own_container),
    _route("HEAD", f"/containers/{_ID}/archive", own_container),
    _route("PUT", f"/containers/{_ID}/archive", own_container, "stream"),
    _route(
        "POST", f"/containers/{_ID}/(stop|kill|pause|unpause|wait|resize|rename)", own_container
    ),
    _route("POST", f"/containers/{_ID}/(start|restart)", start_container),
    _route("POST", f"/containers/{_ID}/update", update_container, "json", schemas.CONTAINER_UPDATE),
    _route("POST", f"/containers/{_ID}/attach", own_container, hijack=True),
    _route("DELETE", f"/containers/{_ID}", own_container),
    _route("POST", f"/containers/{_ID}/exec", create_exec, "json", schemas.EXEC_CREATE),
    # exec
    _route("POST", f"/exec/{_ID}/start", own_exec, "json", schemas.EXEC_START, hijack=True),
    _route("POST", f"/exec/{_ID}/resize", own_exec),
    _route("GET", f"/exec/{_ID}/json", own_exec),
    # images: the host's are read-only, those built here are own
    _route("GET", "/images/json", allow),
    _route("GET", "/images/get", allow),
    _route("GET", f"/images/{_NAME}/(json|history|get)", allow),
    _route("POST", "/images/create", create_image),
    _route("POST", "/images/load", refuse("image-load", "a loaded archive can re-tag host images")),
    _route("POST", "/images/prune", own_filters),
    _route("POST", f"/images/{_NAME}/tag", tag_image),
    _route("POST", f"/images/{_NAME}/push", refuse("registry", "pushing to a registry")),
    _route("DELETE", f"/images/{_NAME}", remove_image),
    _route("POST", "/build", build, "stream"),
    _route("POST", "/build/prune", refuse("build-cache", "the build cache is the host's")),
    _route("POST", "/commit", commit, "json", schemas.CONFIG),
    # networks
    _route("GET", "/networks", own_filters),
    _route("POST", "/networks/create", create_network, "json", schemas.NETWORK_CREATE),
    _route("POST", "/networks/prune", own_filters),
    _route("GET", f"/networks/{_ID}", inspect_network),
    _route("POST", f"/networks/{_ID}/connect", connect_network, "json", schemas.NETWORK_CONNECT),
    _route(
        "POST", f"/networks/{_ID}/disconnect", connect_network, "json", schemas.NETWORK_DISCONNECT
    ),
    _route("DELETE", f"/networks/{_ID}", own_network),
    # volumes
    _route("GET", "/volumes", own_filters),
    _route("POST", "/volumes/create", create_volume, "json", schemas.VOLUME_CREATE),
    _route("POST", "/volumes/prune", own_filters),
    _route("GET", "/volumes/(?P<name>[^/]+)", own_volume),
    _route("DELETE", "/volumes/(?P<name>[^/]+)", own_volume),
)

#: Families of endpoints refused whole, with the rule and why.
REFUSED_FAMILIES: dict[str, tuple[str, str]] = {
    "/plugins": ("plugins", "engine plugins run as root on the host"),
    "/swarm": ("swarm", "swarm mode changes the host engine for everyone"),
    "/services": ("swarm", "swarm services"),
    "/tasks": ("swarm", "swarm tasks"),
    "/nodes": ("swarm", "swarm nodes"),
    "/secrets": ("swarm", "swarm secrets"),
    "/configs": ("swarm", "swarm configs"),
    "/session": ("buildkit", "the BuildKit session tunnel reaches the client's files and more"),
    "/grpc": ("buildkit", "the BuildKit gRPC tunnel"),
    "/auth": ("registry", "registry logins"),
    "/distribution": ("registry", "registry queries"),
}

__all__ = ["ROUTES", "Call", "Judge", "Route"]
