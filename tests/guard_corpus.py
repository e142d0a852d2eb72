"""The escape corpus of the guarded backend: each attempt as data, run against any engine.

An :class:`Escape` is one way code under test could reach the host through the Docker API. Its
``attempt`` runs against a raw HTTP client of an engine: the host engine itself (to show the case
is live) or the guard (to show it is refused). What "live" means is stated per case, honestly:

* ``writes``: on the raw engine the attempt writes a canary file on the host (outside any
  directory the guard allows);
* ``honoured``: the raw engine accepts the request and the container shows the dangerous property
  (host hostname, host interfaces, a host block device, ...), but this machine does not let it go
  further (a Firecracker VM's kernel refuses to open its mounted disk) or the property is exposure
  rather than a write;
* ``engine-refuses``: the raw engine accepts and records the setting, then its own runtime refuses
  to start the container here (``--privileged``: the engine's bounding set lacks
  CAP_SYS_RESOURCE); on an engine that allows it, it is root on the host.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import docker
import docker.errors

IMAGE = "debian:bookworm-slim"
TEST_LABEL = "pytest-isolated-docker-test"
LABELS = {TEST_LABEL: "guard-escape"}
V = "/v1.41"


@dataclass
class Answer:
    """An engine's (or the guard's) answer to the last request of an attempt."""

    status: int
    payload: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def message(self) -> str:
        if isinstance(self.payload, dict):
            return str(self.payload.get("message", ""))
        return str(self.payload)

    def inspect(self) -> dict[str, Any]:
        assert isinstance(self.payload, dict)
        info: dict[str, Any] = self.payload.get("Inspect") or {}
        return info

    @property
    def logs(self) -> str:
        return str((self.payload or {}).get("Logs", "")) if isinstance(self.payload, dict) else ""


class Api:
    """Raw requests (exact bytes of a body, any path) to one engine endpoint."""

    def __init__(self, base_url: str) -> None:
        self.client = docker.APIClient(base_url=base_url, version="1.41", timeout=120)
        self.client.trust_env = False

    def close(self) -> None:
        self.client.close()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        data: bytes | None = None
        headers = dict(headers or {})
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        elif isinstance(body, str):
            data = body.encode()
        elif isinstance(body, bytes):
            data = body
        if data is not None:
            headers.setdefault("Content-Type", "application/json")
        response = self.client.request(
            method, self.client.base_url + path, data=data, headers=headers
        )
        try:
            payload = response.json()
        except ValueError:
            payload = response.text
        return Answer(response.status_code, payload)

    def run(self, body: Any, path: str = f"{V}/containers/create") -> Answer:
        """Create, start and wait for a container; its inspection and logs; then remove it."""
        created = self.call("POST", path, body)
        if not created.ok:
            return created
        container = created.payload["Id"]
        try:
            started = self.call("POST", f"{V}/containers/{container}/start")
            info = self.call("GET", f"{V}/containers/{container}/json").payload
            if not started.ok:
                return Answer(started.status, {"message": started.message, "Inspect": info})
            waited = self.call("POST", f"{V}/containers/{container}/wait")
            logs = self.client.logs(container).decode(errors="replace")
            return Answer(
                201,
                {"Inspect": info, "Exit": (waited.payload or {}).get("StatusCode"), "Logs": logs},
            )
        finally:
            self.call("DELETE", f"{V}/containers/{container}?force=1&v=1")


@dataclass
class Scene:
    """What the attempts aim at: a host directory outside every allowed one (the canaries'),
    and objects made directly on the host engine (another job's, for the guard)."""

    canary_dir: Path
    victim: str  # a running container of the host engine, with canary_dir bound at /work
    foreign_volume: str
    foreign_volume_dir: Path
    basetemp: Path  # a directory the guard allows binds from
    host_hostname: str
    host_tag: str  # a tag of the host's (of IMAGE's image), put back after each attempt

    def host_tag_id(self) -> str | None:
        with contextlib.closing(docker.from_env()) as host:
            try:
                return str(host.api.inspect_image(self.host_tag)["Id"])
            except docker.errors.ImageNotFound:
                return None

    def restore_host_tag(self) -> None:
        with contextlib.closing(docker.from_env()) as host:
            host.api.tag(IMAGE, *self.host_tag.rsplit(":", 1), force=True)

    def canary(self, name: str) -> Path:
        return self.canary_dir / name


def create_body(cmd: list[str] | str, **host: Any) -> dict[str, Any]:
    command = ["sh", "-c", cmd] if isinstance(cmd, str) else cmd
    body: dict[str, Any] = {"Image": IMAGE, "Cmd": command, "Labels": dict(LABELS)}
    if host:
        body["HostConfig"] = host
    return body


def raw_body(cmd: list[str], host_json: str, top: str = "") -> str:
    """A create body written by hand: ``host_json`` is spliced in verbatim (odd keys, repeats)."""
    return (
        f'{{"Image": "{IMAGE}", "Cmd": {json.dumps(cmd)}, "Labels": {json.dumps(LABELS)}'
        f"{', ' + top if top else ''}{', ' + host_json if host_json else ''}}}"
    )


def touch_host(canary: Path, at: str = "/host") -> list[str]:
    return ["touch", f"{at}{canary}"]


def release_agent(canary: Path) -> str:
    """CAP_SYS_ADMIN on cgroup v1: a release agent the host runs as root."""
    return (
        "set -e; mkdir -p /tmp/cgrp; "
        "mount -t cgroup -o rdma cgroup /tmp/cgrp 2>/dev/null "
        "|| mount -t cgroup -o memory cgroup /tmp/cgrp; "
        "mkdir -p /tmp/cgrp/x; echo 1 > /tmp/cgrp/x/notify_on_release; "
        "upper=$(sed -n 's/.*upperdir=\\([^,]*\\).*/\\1/p' /proc/self/mountinfo | head -1); "
        'echo "$upper/cmd" > /tmp/cgrp/release_agent; '
        f"printf '#!/bin/sh\\ntouch {canary}\\n' > /cmd; chmod a+x /cmd; "
        "sh -c 'echo $$ > /tmp/cgrp/x/cgroup.procs'; sleep 1"
    )


def core_pattern(canary: Path) -> str:
    """A writable /proc/sys: the host runs the core dump helper as root."""
    return (
        f'echo "|/usr/bin/touch {canary}" > /proc/sys/kernel/core_pattern; '
        'sh -c "kill -SEGV \\$\\$"; true'
    )


Attempt = Callable[[Api, Scene, Path], Answer]
Live = Literal["writes", "honoured", "engine-refuses"]


@dataclass(frozen=True)
class Escape:
    """One escape attempt of the corpus."""

    name: str
    rule: str
    live: Live
    attempt: Attempt
    #: For ``honoured``/``engine-refuses``: what the raw engine's answer must show.
    shows: Callable[[Answer, Scene], bool] | None = None
    #: Where the canary lands (default: the scene's canary directory).
    canary_at: Callable[[Scene, str], Path] | None = None
    #: Which guard: "strict" (basetemp only) or "lax" (with an allow-list, see the test module).
    guard: Literal["strict", "lax"] = "strict"
    #: Host state the live attempt changes, restored afterwards.
    touches_core_pattern: bool = False
    #: Removes on the host what a live attempt leaves (run after each attempt).
    after: Callable[[], None] | None = None
    note: str = ""
    marks: tuple[Any, ...] = field(default=())


# ---- attempts -------------------------------------------------------------------------------


def run_host(**host: Any) -> Attempt:
    def attempt(api: Api, scene: Scene, canary: Path) -> Answer:
        return api.run(create_body(touch_host(canary), **host))

    return attempt


def run_raw(host_json: str, top: str = "", path: str = f"{V}/containers/create") -> Attempt:
    def attempt(api: Api, scene: Scene, canary: Path) -> Answer:
        return api.run(raw_body(touch_host(canary), host_json, top), path)

    return attempt


def run_script(script: Callable[[Path], str], **host: Any) -> Attempt:
    def attempt(api: Api, scene: Scene, canary: Path) -> Answer:
        return api.run(create_body(script(canary), **host))

    return attempt


def run_observing(cmd: str, **host: Any) -> Attempt:
    def attempt(api: Api, scene: Scene, canary: Path) -> Answer:
        return api.run(create_body(cmd, **{k: _victim(v, scene) for k, v in host.items()}))

    return attempt


def _victim(value: Any, scene: Scene) -> Any:
    if isinstance(value, str):
        return value.replace("VICTIM", scene.victim)
    if isinstance(value, list):
        return [_victim(v, scene) for v in value]
    return value


def symlink_bind(api: Api, scene: Scene, canary: Path) -> Answer:
    link = scene.basetemp / "to-root"
    if not link.is_symlink():
        link.symlink_to("/")
    return api.run(create_body(touch_host(canary), Binds=[f"{link}:/host"]))


def dotdot_bind(api: Api, scene: Scene, canary: Path) -> Answer:
    up = "/".join([".."] * (len(scene.basetemp.parts) + 2))
    return api.run(create_body(touch_host(canary), Binds=[f"{scene.basetemp}/{up}:/host"]))


def case_variant_binds(api: Api, scene: Scene, canary: Path) -> Answer:
    allowed = scene.basetemp / "allowed"
    allowed.mkdir(exist_ok=True)
    host = f'"HostConfig": {{"Binds": ["{allowed}:/host"], "binds": ["/:/host"]}}'
    return api.run(raw_body(touch_host(canary), host))


def volume_with_bind_options(api: Api, scene: Scene, canary: Path) -> Answer:
    made = api.call(
        "POST",
        f"{V}/volumes/create",
        {
            "Name": f"pid-guard-escape-{canary.name}",
            "Driver": "local",
            "DriverOpts": {"type": "none", "o": "bind", "device": "/"},
            "Labels": LABELS,
        },
    )
    if not made.ok:
        return made
    try:
        return api.run(create_body(touch_host(canary), Binds=[f"{made.payload['Name']}:/host"]))
    finally:
        api.call("DELETE", f"{V}/volumes/{made.payload['Name']}?force=1")


def engine_socket(api: Api, scene: Scene, canary: Path) -> Answer:
    """The engine's socket inside: a container that runs another one with ``-v /:/host``."""
    image = os.environ.get("PYTEST_DOCKER_DIND_IMAGE", "pytest-isolated-docker/dind:latest")
    label = f"{TEST_LABEL}=guard-escape"
    body = create_body(
        ["docker", "run", "--rm", "--label", label, "-v", "/:/host", IMAGE, *touch_host(canary)],
        Binds=["/var/run/docker.sock:/var/run/docker.sock"],
    )
    body["Image"] = image
    body["Entrypoint"] = []
    return api.run(body)


def old_api_start_body(api: Api, scene: Scene, canary: Path) -> Answer:
    created = api.call("POST", f"{V}/containers/create", create_body(touch_host(canary)))
    if not created.ok:
        return created
    container = created.payload["Id"]
    try:
        started = api.call("POST", f"/v1.23/containers/{container}/start", {"Binds": ["/:/host"]})
        if started.ok:
            api.call("POST", f"{V}/containers/{container}/wait")
        return started
    finally:
        api.call("DELETE", f"{V}/containers/{container}?force=1")


def exec_privileged(api: Api, scene: Scene, canary: Path) -> Answer:
    created = api.call("POST", f"{V}/containers/create", create_body(["sleep", "60"]))
    assert created.ok, created
    container = created.payload["Id"]
    try:
        assert api.call("POST", f"{V}/containers/{container}/start").ok
        made = api.call(
            "POST", f"{V}/containers/{container}/exec", {"Cmd": ["true"], "Privileged": True}
        )
        if not made.ok:
            return made
        return Answer(
            made.status, {"Inspect": api.call("GET", f"{V}/exec/{made.payload['Id']}/json").payload}
        )
    finally:
        api.call("DELETE", f"{V}/containers/{container}?force=1")


def exec_in_victim(api: Api, scene: Scene, canary: Path) -> Answer:
    made = api.call(
        "POST",
        f"{V}/containers/{scene.victim}/exec",
        {"Cmd": ["touch", f"/work/{canary.name}"]},
    )
    if not made.ok:
        return made
    started = api.call("POST", f"{V}/exec/{made.payload['Id']}/start", {"Detach": False})
    time.sleep(0.5)
    return started


def archive_into_victim(api: Api, scene: Scene, canary: Path) -> Answer:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(canary.name)
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    return api.call(
        "PUT",
        f"{V}/containers/{scene.victim}/archive?path=/work",
        buffer.getvalue(),
        headers={"Content-Type": "application/x-tar"},
    )


def foreign_volume(api: Api, scene: Scene, canary: Path) -> Answer:
    return api.run(
        create_body(["touch", f"/data/{canary.name}"], Binds=[f"{scene.foreign_volume}:/data"])
    )


def build_context(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        data = dockerfile.encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build(api: Api, query: str, dockerfile: str) -> Answer:
    return api.call(
        "POST",
        f"{V}/build?rm=1&forcerm=1&{query}",
        build_context(dockerfile),
        headers={"Content-Type": "application/x-tar"},
    )


def build_on_host_network(api: Api, scene: Scene, canary: Path) -> Answer:
    built = build(api, "networkmode=host&nocache=1", f"FROM {IMAGE}\nRUN ls /sys/class/net\n")
    for image in re.findall(r"Successfully built ([0-9a-f]+)", built.message):
        api.call("DELETE", f"{V}/images/{image}?force=1")
    return built


def build_over_host_tag(api: Api, scene: Scene, canary: Path) -> Answer:
    before = scene.host_tag_id()
    built = build(
        api, f"t={scene.host_tag}&labels=" + quote(json.dumps(LABELS)), f"FROM {IMAGE}\nRUN true\n"
    )
    try:
        return Answer(
            built.status, {"Moved": scene.host_tag_id() != before, "message": built.message}
        )
    finally:
        _drop_image_at(scene)


def _drop_image_at(scene: Scene) -> None:
    with contextlib.closing(docker.from_env()) as host:
        moved = host.api.inspect_image(scene.host_tag)["Id"]
        scene.restore_host_tag()
        if moved != host.api.inspect_image(IMAGE)["Id"]:
            with contextlib.suppress(docker.errors.APIError):
                host.api.remove_image(moved, force=True)


def tag_over_host_tag(api: Api, scene: Scene, canary: Path) -> Answer:
    own = f"pytest-isolated-docker-guard-own:{os.getpid()}"
    built = build(api, f"t={own}&labels=" + quote(json.dumps(LABELS)), f"FROM {IMAGE}\nRUN true\n")
    assert built.ok, built
    before = scene.host_tag_id()
    repository, tag = scene.host_tag.rsplit(":", 1)
    try:
        tagged = api.call("POST", f"{V}/images/{own}/tag?repo={repository}&tag={tag}")
        return Answer(tagged.status, {"Moved": scene.host_tag_id() != before, **_dict(tagged)})
    finally:
        scene.restore_host_tag()
        api.call("DELETE", f"{V}/images/{own}?force=1")


def _dict(answer: Answer) -> dict[str, Any]:
    return answer.payload if isinstance(answer.payload, dict) else {"message": answer.message}


def remove_host_tag(api: Api, scene: Scene, canary: Path) -> Answer:
    removed = api.call("DELETE", f"{V}/images/{scene.host_tag}")
    gone = scene.host_tag_id() is None
    scene.restore_host_tag()
    return Answer(removed.status, {"Gone": gone, **({} if removed.ok else _dict(removed))})


def commit_foreign(api: Api, scene: Scene, canary: Path) -> Answer:
    committed = api.call(
        "POST", f"{V}/commit?container={scene.victim}&repo=pytest-isolated-docker-guard-commit"
    )
    if committed.ok:
        api.call("DELETE", f"{V}/images/{committed.payload['Id']}?force=1")
    return committed


def connect_foreign(api: Api, scene: Scene, canary: Path) -> Answer:
    made = api.call(
        "POST",
        f"{V}/networks/create",
        {"Name": f"pytest-isolated-docker-guard-net-{os.getpid()}", "Labels": LABELS},
    )
    assert made.ok, made
    network = made.payload["Id"]
    try:
        return api.call("POST", f"{V}/networks/{network}/connect", {"Container": scene.victim})
    finally:
        api.call("POST", f"{V}/networks/{network}/disconnect", {"Container": scene.victim})
        api.call("DELETE", f"{V}/networks/{network}")


def copy_from_foreign(api: Api, scene: Scene, canary: Path) -> Answer:
    return api.call("GET", f"{V}/containers/{scene.victim}/archive?path=/etc/hostname")


# ---- what the raw engine shows for cases that write nothing here ----------------------------


def host_hostname(answer: Answer, scene: Scene) -> bool:
    return answer.logs.strip() == scene.host_hostname


def host_interfaces(answer: Answer, scene: Scene) -> bool:
    return "docker0" in answer.logs.split()


def same_network_as_victim(answer: Answer, scene: Scene) -> bool:
    with contextlib.closing(docker.from_env()) as host:
        victim = host.api.inspect_container(scene.victim)
    return bool(answer.logs.strip() == victim["NetworkSettings"]["MacAddress"])


def inspect_shows(path: str, expected: Any) -> Callable[[Answer, Scene], bool]:
    def shows(answer: Answer, scene: Scene) -> bool:
        value: Any = answer.inspect()
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return bool(value == expected)

    return shows


def contains(path: str, expected: str) -> Callable[[Answer, Scene], bool]:
    def shows(answer: Answer, scene: Scene) -> bool:
        value: Any = answer.inspect()
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        return expected in json.dumps(value)

    return shows


def privileged_refused_by_runtime(answer: Answer, scene: Scene) -> bool:
    return inspect_shows("HostConfig.Privileged", True)(answer, scene) and (
        "unable to apply caps" in answer.message
    )


def remove_volume(name: str) -> Callable[[], None]:
    def remove() -> None:
        with (
            contextlib.closing(docker.from_env()) as host,
            contextlib.suppress(docker.errors.NotFound),
        ):
            host.api.remove_volume(name, force=True)

    return remove


def remove_cgroups(name: str) -> Callable[[], None]:
    def remove() -> None:
        for directory in Path("/sys/fs/cgroup").glob(f"*/{name}"):
            with contextlib.suppress(OSError):
                directory.rmdir()

    return remove


def in_shm(scene: Scene, name: str) -> Path:
    return Path("/dev/shm") / f"{scene.canary_dir.name}-{name}"


def in_foreign_volume(scene: Scene, name: str) -> Path:
    return scene.foreign_volume_dir / name


ROOT_BIND = ["/:/host"]
BIND_JSON = '"HostConfig": {"Binds": ["/:/host"]}'
CAP_RECIPE = {
    "CapAdd": ["ALL"],
    "CapDrop": ["SYS_RESOURCE"],
    "SecurityOpt": ["seccomp=unconfined", "apparmor=unconfined"],
    "DeviceCgroupRules": ["a *:* rwm"],
}

CORPUS: tuple[Escape, ...] = (
    # -- host binds, and the ways of writing one that a guard reading exact keys would miss --
    Escape(
        "bind-root",
        "host-bind",
        "writes",
        run_host(Binds=ROOT_BIND),
        note="the classic docker run -v /:/host ... touch /host/i_was_here",
    ),
    Escape(
        "bind-lowercase-keys",
        "host-bind",
        "writes",
        run_raw('"hostconfig": {"binds": ["/:/host"]}'),
    ),
    Escape(
        "bind-mixed-case-keys",
        "host-bind",
        "writes",
        run_raw('"HOSTCONFIG": {"bInDs": ["/:/host"]}'),
    ),
    Escape(
        "bind-long-s-key",
        "host-bind",
        "writes",
        run_raw('"HostConfig": {"Bind\\u017f": ["/:/host"]}'),
        note="Go folds U+017F LATIN SMALL LETTER LONG S to 's' when matching a field",
    ),
    Escape(
        "bind-at-top-level",
        "hostconfig-at-top-level",
        "writes",
        run_raw("", top='"Binds": ["/:/host"]'),
        note="ContainerConfigWrapper embeds a legacy HostConfig at the top level",
    ),
    Escape(
        "bind-in-repeated-hostconfig",
        "ambiguous-json",
        "writes",
        run_raw('"HostConfig": {"Binds": null}, "HostConfig": {"Binds": ["/:/host"]}'),
        note="Go decodes a repeated object key into the same struct: the last Binds wins",
    ),
    Escape(
        "bind-case-variant-repeat",
        "ambiguous-json",
        "writes",
        case_variant_binds,
        note="an allowed Binds, then 'binds' with the root: Go keeps the last",
    ),
    Escape(
        "bind-through-symlink",
        "host-bind",
        "writes",
        symlink_bind,
        note="a symbolic link in an allowed directory pointing at /",
    ),
    Escape("bind-dotdot", "host-bind", "writes", dotdot_bind),
    Escape(
        "bind-percent-encoded-path",
        "host-bind",
        "writes",
        run_raw(BIND_JSON, path=f"{V}/containers%2Fcreate"),
        note="dockerd routes on the decoded path",
    ),
    Escape(
        "mount-bind-root",
        "host-bind",
        "writes",
        run_host(Mounts=[{"Type": "bind", "Source": "/", "Target": "/host"}]),
    ),
    Escape(
        "mount-bind-lowercase",
        "host-bind",
        "writes",
        run_raw('"hostconfig": {"mounts": [{"type": "bind", "source": "/", "target": "/host"}]}'),
    ),
    Escape(
        "mount-volume-with-bind-options",
        "volume-driver-options",
        "writes",
        run_host(
            Mounts=[
                {
                    "Type": "volume",
                    "Source": "pid-guard-escape-mount-opts",
                    "Target": "/host",
                    "VolumeOptions": {
                        "DriverConfig": {
                            "Name": "local",
                            "Options": {"type": "none", "o": "bind", "device": "/"},
                        }
                    },
                }
            ]
        ),
        after=remove_volume("pid-guard-escape-mount-opts"),
    ),
    Escape(
        "volume-create-with-bind-options",
        "volume-driver-options",
        "writes",
        volume_with_bind_options,
    ),
    Escape(
        "engine-socket",
        "host-bind",
        "writes",
        engine_socket,
        note="a container holding the engine's socket starts a container with -v /:/host",
    ),
    Escape(
        "engine-socket-allow-listed-dir",
        "engine-socket",
        "writes",
        engine_socket,
        guard="lax",
        note="even with /var/run allow-listed, the socket stays out",
    ),
    Escape(
        "bind-allow-listed-read-only-as-rw",
        "read-only-bind",
        "writes",
        lambda api, scene, canary: api.run(
            create_body(
                ["touch", f"/canaries/{canary.name}"], Binds=[f"{scene.canary_dir}:/canaries"]
            )
        ),
        guard="lax",
    ),
    Escape(
        "old-api-start-with-host-config",
        "old-api-version",
        "writes",
        old_api_start_body,
        note="API < 1.24 applies a HostConfig sent to start",
    ),
    # -- namespaces of the host or of another's container --
    Escape(
        "pid-host",
        "host-namespace",
        "writes",
        run_script(
            lambda c: f"for p in /proc/[0-9]*; do touch $p/root{c} 2>/dev/null && break; done",
            PidMode="host",
            CapAdd=["SYS_PTRACE"],
        ),
    ),
    Escape(
        "pid-host-lowercase",
        "host-namespace",
        "writes",
        lambda api, scene, canary: api.run(
            raw_body(
                [
                    "sh",
                    "-c",
                    f"for p in /proc/[0-9]*; do touch $p/root{canary} 2>/dev/null && break; done",
                ],
                '"hostconfig": {"pidmode": "host", "capadd": ["SYS_PTRACE"]}',
            )
        ),
    ),
    Escape(
        "ipc-host",
        "host-namespace",
        "writes",
        lambda api, scene, canary: api.run(
            create_body(["touch", f"/dev/shm/{canary.name}"], IpcMode="host")
        ),
        canary_at=in_shm,
        note="the host's /dev/shm",
    ),
    Escape(
        "pid-join-foreign-container",
        "join-foreign-container",
        "writes",
        lambda api, scene, canary: api.run(
            create_body(
                ["touch", f"/proc/1/root/work/{canary.name}"], PidMode=f"container:{scene.victim}"
            )
        ),
    ),
    Escape(
        "volumes-from-foreign-container",
        "join-foreign-container",
        "writes",
        lambda api, scene, canary: api.run(
            create_body(["touch", f"/work/{canary.name}"], VolumesFrom=[scene.victim])
        ),
    ),
    Escape(
        "network-host",
        "host-namespace",
        "honoured",
        run_observing("ls /sys/class/net", NetworkMode="host"),
        shows=host_interfaces,
        note="the host's interfaces and loopback services",
    ),
    Escape(
        "uts-host",
        "host-namespace",
        "honoured",
        run_observing("hostname", UTSMode="host"),
        shows=host_hostname,
    ),
    Escape(
        "network-join-foreign-container",
        "join-foreign-container",
        "honoured",
        run_observing("cat /sys/class/net/eth0/address", NetworkMode="container:VICTIM"),
        shows=same_network_as_victim,
    ),
    # -- capabilities, devices, confinement --
    Escape(
        "cap-add-sys-admin",
        "cap-add",
        "writes",
        run_script(release_agent, CapAdd=["SYS_ADMIN"]),
        note="a cgroup v1 release agent, run by the host as root",
    ),
    Escape(
        "cap-add-lowercase",
        "cap-add",
        "writes",
        lambda api, scene, canary: api.run(
            raw_body(["sh", "-c", release_agent(canary)], '"hostconfig": {"capadd": ["sys_admin"]}')
        ),
    ),
    Escape(
        "capability-recipe",
        "devices",
        "writes",
        run_script(release_agent, **CAP_RECIPE),
        note="the dind backend's fallback recipe, in a test's hands",
    ),
    Escape(
        "seccomp-unconfined",
        "security-opt",
        "honoured",
        run_observing("grep Seccomp: /proc/self/status", SecurityOpt=["seccomp=unconfined"]),
        shows=lambda answer, scene: answer.logs.split() == ["Seccomp:", "0"],
        note="every system call, with whatever capabilities the container holds",
    ),
    Escape(
        "masked-paths-emptied",
        "masked-paths",
        "writes",
        run_script(core_pattern, MaskedPaths=[], ReadonlyPaths=[]),
        touches_core_pattern=True,
        note="what the CLI's --security-opt systempaths=unconfined sends: a writable "
        "kernel.core_pattern",
    ),
    Escape(
        "device-host-disk",
        "devices",
        "honoured",
        run_observing(
            "stat -c %t:%T /dev/hostdisk",
            Devices=[
                {
                    "PathOnHost": "/dev/vda",
                    "PathInContainer": "/dev/hostdisk",
                    "CgroupPermissions": "rwm",
                }
            ],
        ),
        shows=lambda answer, scene: answer.logs.strip() == "fe:0",
        note="the host's disk as a device node; this VM's kernel refuses to open it mounted",
    ),
    Escape(
        "device-cgroup-rule",
        "devices",
        "honoured",
        run_observing("true", DeviceCgroupRules=["b *:* rwm"]),
        shows=contains("HostConfig.DeviceCgroupRules", "b *:* rwm"),
    ),
    Escape(
        "privileged",
        "privileged",
        "engine-refuses",
        run_host(Privileged=True),
        shows=privileged_refused_by_runtime,
    ),
    Escape(
        "privileged-lowercase",
        "privileged",
        "engine-refuses",
        run_raw('"hostconfig": {"privileged": true}'),
        shows=privileged_refused_by_runtime,
        note="the issue's own example: dockerd ignores key case",
    ),
    Escape(
        "exec-privileged",
        "exec-privileged",
        "honoured",
        exec_privileged,
        shows=inspect_shows("ProcessConfig.privileged", True),
    ),
    Escape(
        "cgroup-parent",
        "cgroup-parent",
        "honoured",
        run_observing("cat /proc/self/cgroup", CgroupParent="pid-guard-escape"),
        shows=lambda answer, scene: "pid-guard-escape" in answer.logs,
        after=remove_cgroups("pid-guard-escape"),
    ),
    Escape(
        "port-on-all-interfaces",
        "port-not-loopback",
        "honoured",
        run_observing("true", PortBindings={"80/tcp": [{"HostIp": "0.0.0.0", "HostPort": ""}]}),
        shows=contains("HostConfig.PortBindings", "0.0.0.0"),
    ),
    Escape(
        "publish-all-ports",
        "publish-all",
        "honoured",
        run_observing("true", PublishAllPorts=True),
        shows=inspect_shows("HostConfig.PublishAllPorts", True),
    ),
    # -- another's objects --
    Escape("exec-into-foreign-container", "foreign-container", "writes", exec_in_victim),
    Escape("archive-into-foreign-container", "foreign-container", "writes", archive_into_victim),
    Escape(
        "mount-foreign-volume",
        "foreign-volume",
        "writes",
        foreign_volume,
        canary_at=in_foreign_volume,
    ),
    Escape(
        "masked-paths-kelvin-and-long-s",
        "masked-paths",
        "writes",
        lambda api, scene, canary: api.run(
            raw_body(
                ["sh", "-c", core_pattern(canary)],
                '"HostConfig": {"Mas\\u212aedPaths": [], "ReadonlyPath\\u017f": []}',
            )
        ),
        touches_core_pattern=True,
        note="U+212A KELVIN SIGN and U+017F LONG S, which Go folds to k and s",
    ),
    Escape(
        "network-host-lowercase",
        "host-namespace",
        "honoured",
        lambda api, scene, canary: api.run(
            raw_body(["ls", "/sys/class/net"], '"hostconfig": {"networkmode": "host"}')
        ),
        shows=host_interfaces,
    ),
    Escape(
        "build-on-host-network",
        "build-network",
        "honoured",
        build_on_host_network,
        shows=lambda answer, scene: "docker0" in answer.message,
        note="a build's RUN steps in the host's network namespace",
    ),
    Escape(
        "build-over-host-image-tag",
        "image-read-only",
        "honoured",
        build_over_host_tag,
        shows=lambda answer, scene: bool(answer.payload["Moved"]),
        note="the host's tag moved to the build's image",
    ),
    Escape(
        "tag-over-host-image-tag",
        "image-read-only",
        "honoured",
        tag_over_host_tag,
        shows=lambda answer, scene: bool(answer.payload["Moved"]),
    ),
    Escape(
        "remove-host-image",
        "image-read-only",
        "honoured",
        remove_host_tag,
        shows=lambda answer, scene: bool(answer.payload["Gone"]),
        note="on a throw-away tag of the host's image, put back after",
    ),
    Escape(
        "commit-foreign-container",
        "foreign-container",
        "honoured",
        commit_foreign,
        shows=lambda answer, scene: answer.status == 201,
        note="another job's file system, as an image",
    ),
    Escape(
        "connect-foreign-container-to-own-network",
        "foreign-container",
        "honoured",
        connect_foreign,
        shows=lambda answer, scene: answer.ok,
    ),
    Escape(
        "copy-from-foreign-container",
        "foreign-container",
        "honoured",
        copy_from_foreign,
        shows=lambda answer, scene: answer.status == 200,
    ),
)
