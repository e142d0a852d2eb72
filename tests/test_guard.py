"""The guarded backend: the host engine behind a default-deny guard.

The escape corpus (``guard_corpus.CORPUS``): each attempt first runs on the raw host engine, where
it must work (the case is live; what "live" means is stated per case), then through the guard,
where it must be refused with a 4xx naming the expected rule, and its host canary never written.
Then: everyday use through the guard, objects made outside the session, images, routing and
framing, the report, xdist workers, and kill -9.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest

from pytest_isolated_docker import DockerDaemon, factories
from pytest_isolated_docker.coordination import locked, state_root
from pytest_isolated_docker.engines import Engine
from pytest_isolated_docker.labels import DAEMON, SESSION
from pytest_isolated_docker.lifecycle import start_daemon
from pytest_isolated_docker.session import session_of as session_of_config

from .conftest import labelled, session_of, spawn_pytest
from .guard_corpus import CORPUS, IMAGE, LABELS, TEST_LABEL, Answer, Api, Escape, Scene, V

#: Outside every directory the guard allows (and not under pytest's basetemp): canaries land here.
CANARY_DIR = Path(f"/var/tmp/pytest-isolated-docker-guard-canaries-{os.getpid()}")
CORE_PATTERN = Path("/proc/sys/kernel/core_pattern")

guarded = factories.docker_daemon(scope="module", backend="guarded")
dind_upstream = factories.docker_daemon(scope="module", backend="dind", preload=[IMAGE])
guarded_lax = factories.docker_daemon(
    scope="module", backend="guarded", guard_allow_bind=["/var/run", f"{CANARY_DIR}:ro"]
)


def host_url() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


@pytest.fixture(scope="module")
def host_api() -> Iterator[Api]:
    api = Api(host_url())
    yield api
    api.close()


@pytest.fixture(scope="module")
def scene(
    host_engine: docker.DockerClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scene]:
    """Canaries' directory, and another job's objects made directly on the host engine."""
    CANARY_DIR.mkdir(mode=0o777, exist_ok=True)
    victim = host_engine.containers.run(
        IMAGE,
        "sleep 900",
        detach=True,
        volumes={str(CANARY_DIR): {"bind": "/work", "mode": "rw"}},
        labels={"purpose": "guard-victim"},
    )
    volume = host_engine.volumes.create(labels={"purpose": "guard-victim"})
    network = host_engine.networks.create(
        f"guard-victim-{uuid.uuid4().hex[:8]}", labels={"purpose": "guard-victim"}
    )
    host_tag = f"pytest-isolated-docker-guard-victim:{os.getpid()}"
    host_engine.api.tag(IMAGE, *host_tag.rsplit(":", 1), force=True)
    try:
        yield Scene(
            canary_dir=CANARY_DIR,
            victim=victim.id,
            foreign_volume=volume.name,
            foreign_volume_dir=Path(volume.attrs["Mountpoint"]),
            basetemp=tmp_path_factory.mktemp("guard-scene"),
            host_hostname=socket.gethostname(),
            host_tag=host_tag,
        )
    finally:
        victim.remove(force=True)
        with contextlib.suppress(docker.errors.APIError):
            network.remove()
        volume.remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            host_engine.api.remove_image(host_tag)
        for container in host_engine.containers.list(
            all=True, filters={"label": f"{TEST_LABEL}=guard-escape"}
        ):
            container.remove(force=True)
        for leftover in host_engine.volumes.list(filters={"label": f"{TEST_LABEL}=guard-escape"}):
            leftover.remove(force=True)
        shutil.rmtree(CANARY_DIR, ignore_errors=True)


def assert_refused(answer: Answer, rule: str) -> None:
    """``answer`` is the guard's 403 naming ``rule``."""
    assert answer.status == 403, answer
    assert f"rule '{rule}'" in answer.message, answer


def _wait_for(path: Path, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@contextlib.contextmanager
def _host_global_state(escape: Escape) -> Iterator[None]:
    """Attempts that set host-wide kernel state (core_pattern, a release agent) run one at a time
    across workers, and core_pattern is put back."""
    if escape.touches_core_pattern or escape.name.startswith(("cap-add", "capability")):
        with locked(state_root() / "guard-test-host-global.lock"):
            saved = CORE_PATTERN.read_text()
            try:
                yield
            finally:
                time.sleep(0.5)
                CORE_PATTERN.write_text(saved)
    else:
        yield


def _canary(escape: Escape, scene: Scene) -> Path:
    return escape.canary_at(scene, escape.name) if escape.canary_at else scene.canary(escape.name)


def _show_live(escape: Escape, scene: Scene, host_api: Api, canary: Path) -> None:
    with _host_global_state(escape):
        try:
            live = escape.attempt(host_api, scene, canary)
            if escape.live == "writes":
                written = _wait_for(canary, 10)
        finally:
            if escape.after is not None:
                escape.after()
    if escape.live == "writes":
        assert written, f"not live: the raw engine answered {live} and {canary} was not written"
        canary.unlink()
    elif escape.live == "honoured":
        assert live.ok, f"not live: the raw engine refused: {live}"
        assert escape.shows is not None
        assert escape.shows(live, scene), live
    else:
        assert escape.shows is not None
        assert escape.shows(live, scene), live


def test_the_corpus_is_large_enough() -> None:
    assert len(CORPUS) >= 30
    assert len({escape.name for escape in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize("escape", CORPUS, ids=[escape.name for escape in CORPUS])
def test_escape_is_live_on_the_host_engine_and_refused_by_the_guard(
    escape: Escape, scene: Scene, host_api: Api, request: pytest.FixtureRequest
) -> None:
    canary = _canary(escape, scene)
    _show_live(escape, scene, host_api, canary)

    daemon: DockerDaemon = request.getfixturevalue(
        "guarded" if escape.guard == "strict" else "guarded_lax"
    )
    guard = Api(daemon.base_url)
    try:
        with _host_global_state(escape):
            refused = escape.attempt(guard, scene, canary)
            time.sleep(0.2 if escape.live != "writes" else 1.0)
    finally:
        guard.close()
        if escape.after is not None:
            escape.after()
    assert 400 <= refused.status < 500, refused
    assert f"refused by rule '{escape.rule}'" in refused.message, refused
    assert not canary.exists(), f"{canary} was written through the guard"


# ---- everyday use ---------------------------------------------------------------------------


def _cli(
    daemon: DockerDaemon, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args],
        env={**os.environ, **daemon.env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_everyday_use_works_through_the_guard(
    guarded: DockerDaemon, tmp_path: Path, host_engine: docker.DockerClient
) -> None:
    # A bind from the test's tmp_path, written from inside.
    run = _cli(
        guarded, "run", "--rm", "-v", f"{tmp_path}:/out", IMAGE, "sh", "-c", "echo hi > /out/f"
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "f").read_text() == "hi\n"
    # A published port lands on loopback only.
    started = _cli(guarded, "run", "-d", "-p", "80", "-v", "cache:/cache", IMAGE, "sleep", "60")
    assert started.returncode == 0, started.stderr
    container = started.stdout.strip()
    ports = host_engine.api.inspect_container(container)["NetworkSettings"]["Ports"]["80/tcp"]
    assert {binding["HostIp"] for binding in ports} == {"127.0.0.1"}
    # The implicitly named volume exists, labelled as the daemon's.
    labels = host_engine.volumes.get("cache").attrs["Labels"]
    assert (
        labels[DAEMON] == host_engine.api.inspect_container(container)["Config"]["Labels"][DAEMON]
    )
    # Hijacked streams: exec with stdin, attach through docker run.
    piped = _cli(guarded, "exec", "-i", container, "cat", stdin="through the guard\n")
    assert piped.stdout == "through the guard\n", piped.stderr
    attached = _cli(guarded, "run", "--rm", "-i", IMAGE, "tr", "a-z", "A-Z", stdin="shout\n")
    assert attached.stdout == "SHOUT\n", attached.stderr
    # Streaming logs, archive both ways.
    logs = _cli(
        guarded, "run", "--rm", IMAGE, "sh", "-c", "for i in 1 2 3; do echo $i; sleep 0.1; done"
    )
    assert logs.stdout.split() == ["1", "2", "3"]
    copied = _cli(guarded, "cp", f"{container}:/etc/hostname", str(tmp_path / "hostname"))
    assert copied.returncode == 0, copied.stderr
    assert _cli(guarded, "cp", str(tmp_path / "f"), f"{container}:/tmp/f").returncode == 0
    assert _cli(guarded, "exec", container, "cat", "/tmp/f").stdout == "hi\n"
    # docker-py, the same daemon.
    client = guarded.client
    assert client.containers.run(IMAGE, ["echo", "py"], remove=True) == b"py\n"
    exec_id = client.api.exec_create(container, ["echo", "exec"])["Id"]
    assert client.api.exec_start(exec_id) == b"exec\n"
    assert _cli(guarded, "rm", "-f", container).returncode == 0
    assert _cli(guarded, "volume", "rm", "cache").returncode == 0


def test_a_refusal_names_the_rule_and_the_option(guarded: DockerDaemon) -> None:
    result = _cli(guarded, "run", "--rm", "-v", "/etc:/host-etc", IMAGE, "true")
    assert result.returncode != 0
    assert "refused by rule 'host-bind'" in result.stderr
    assert "--docker-guard-allow-bind" in result.stderr


# ---- objects made outside the session -------------------------------------------------------


def test_objects_made_outside_the_session_are_out_of_reach(
    guarded: DockerDaemon, scene: Scene, host_engine: docker.DockerClient
) -> None:
    api = Api(guarded.base_url)
    victim = scene.victim
    short = victim[:12]
    name = host_engine.containers.get(victim).name
    try:
        attempts = {
            "inspect": api.call("GET", f"{V}/containers/{victim}/json"),
            "inspect by name": api.call("GET", f"{V}/containers/{name}/json"),
            "inspect by prefix": api.call("GET", f"{V}/containers/{short}/json"),
            "exec": api.call("POST", f"{V}/containers/{victim}/exec", {"Cmd": ["true"]}),
            "copy from": api.call("GET", f"{V}/containers/{victim}/archive?path=/etc"),
            "logs": api.call("GET", f"{V}/containers/{victim}/logs?stdout=1"),
            "kill": api.call("POST", f"{V}/containers/{victim}/kill"),
            "stop": api.call("POST", f"{V}/containers/{victim}/stop"),
            "remove": api.call("DELETE", f"{V}/containers/{victim}?force=1"),
            "rename": api.call("POST", f"{V}/containers/{victim}/rename?name=mine"),
            "commit": api.call("POST", f"{V}/commit?container={victim}"),
            "volume inspect": api.call("GET", f"{V}/volumes/{scene.foreign_volume}"),
            "volume remove": api.call("DELETE", f"{V}/volumes/{scene.foreign_volume}"),
        }
        for what, answer in attempts.items():
            assert answer.status == 403, (what, answer)
            assert "refused by rule 'foreign-" in answer.message, (what, answer)
        # Joined: its network namespace, and a network of another's.
        joined = api.call(
            "POST",
            f"{V}/containers/create",
            {"Image": IMAGE, "HostConfig": {"NetworkMode": f"container:{victim}"}},
        )
        assert_refused(joined, "join-foreign-container")
        foreign_networks = [
            n for n in host_engine.networks.list(filters={"label": "purpose=guard-victim"})
        ]
        assert foreign_networks
        own = api.call("POST", f"{V}/containers/create", {"Image": IMAGE, "Cmd": ["sleep", "30"]})
        assert own.status == 201, own
        connect = api.call(
            "POST",
            f"{V}/networks/{foreign_networks[0].id}/connect",
            {"Container": own.payload["Id"]},
        )
        assert_refused(connect, "foreign-network")
        victim_into_own = api.call("POST", f"{V}/networks/bridge/connect", {"Container": victim})
        assert_refused(victim_into_own, "foreign-container")
        # Lists, prunes and disk usage show and touch only own objects.
        listed = {c["Id"] for c in api.call("GET", f"{V}/containers/json?all=1").payload}
        assert own.payload["Id"] in listed
        assert victim not in listed
        volumes = api.call("GET", f"{V}/volumes").payload["Volumes"] or []
        assert scene.foreign_volume not in {v["Name"] for v in volumes}
        usage = api.call("GET", f"{V}/system/df").payload
        assert own.payload["Id"] in {c["Id"] for c in usage["Containers"]}
        assert victim not in {c["Id"] for c in usage["Containers"]}
        assert all(v["Labels"].get(DAEMON) for v in usage["Volumes"] or [])
        for kind in ("containers", "volumes", "networks"):
            assert api.call("POST", f"{V}/{kind}/prune").ok
        assert host_engine.containers.get(victim).status == "running"
        host_engine.volumes.get(scene.foreign_volume)
        host_engine.networks.get(foreign_networks[0].id)
        bridge = api.call("GET", f"{V}/networks/bridge").payload
        assert victim not in (bridge.get("Containers") or {})
    finally:
        api.close()


def test_events_show_only_own_objects(
    guarded: DockerDaemon, host_engine: docker.DockerClient
) -> None:
    since = int(time.time()) - 1
    outsider = host_engine.containers.run(IMAGE, "true", detach=True, labels=LABELS)
    mine = guarded.client.containers.run(IMAGE, "true", detach=True)
    outsider.wait()
    mine.wait()
    until = int(time.time()) + 1
    events = guarded.client.api.events(since=since, until=until, decode=True)
    seen = {event.get("id") for event in events if event.get("Type") == "container"}
    outsider.remove(force=True)
    assert mine.id in seen
    assert outsider.id not in seen


# ---- images ---------------------------------------------------------------------------------


def test_host_images_are_read_only_own_images_are_not(
    guarded: DockerDaemon, host_engine: docker.DockerClient
) -> None:
    api = Api(guarded.base_url)
    try:
        assert api.call("GET", f"{V}/images/{IMAGE}/json").ok
        removed = api.call("DELETE", f"{V}/images/{IMAGE}")
        assert_refused(removed, "image-read-only")
        retag = api.call("POST", f"{V}/images/{IMAGE}/tag?repo=mine&tag=1")
        assert_refused(retag, "image-read-only")
        loaded = api.call("POST", f"{V}/images/load", b"", {"Content-Type": "application/x-tar"})
        assert_refused(loaded, "image-load")
    finally:
        api.close()
    client = guarded.client
    dockerfile = f"FROM {IMAGE}\nRUN echo built > /built\n".encode()
    import io

    with pytest.raises(docker.errors.APIError, match="image-read-only"):
        client.images.build(fileobj=io.BytesIO(dockerfile), tag=IMAGE, rm=True)
    tag = f"pytest-isolated-docker-guard-built:{uuid.uuid4().hex[:8]}"
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    assert host_engine.images.get(tag).labels[DAEMON]
    assert client.containers.run(tag, ["cat", "/built"], remove=True) == b"built\n"
    assert image.tag(tag.split(":")[0], "retagged")
    client.images.remove(tag)
    client.images.remove(tag.split(":")[0] + ":retagged")
    with pytest.raises(docker.errors.ImageNotFound):
        host_engine.images.get(tag)
    host_engine.images.get(IMAGE)


# ---- routing, framing, JSON -----------------------------------------------------------------


def _raw(daemon: DockerDaemon, request: bytes) -> tuple[int, str]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(daemon.base_url[len("unix://") :])
    with sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@pytest.mark.parametrize(
    ("method", "path", "status", "text"),
    [
        ("GET", "/v1.41//containers//json", 200, ""),
        ("GET", "/v1.41/containers/json/", 200, ""),
        ("GET", "/v1.41/images/../info", 200, "ServerVersion"),
        ("GET", "/v1.41/%69nfo", 200, "ServerVersion"),
        ("GET", "/v1.23/info", 403, "old-api-version"),
        ("GET", "/v1.41/swarm", 403, "rule 'swarm'"),
        ("POST", "/v1.41/plugins/pull?remote=x", 403, "rule 'plugins'"),
        ("POST", "/session", 403, "rule 'buildkit'"),
        ("GET", "/v1.41/containers/x/attach/ws", 403, "unknown-endpoint"),
        ("POST", "/v1.41/containers/json", 403, "unknown-endpoint"),
        ("GET", "/v1.41/containers/json?filters=a&filters=b", 403, "ambiguous-query"),
        ("GET", "/v1.41/containers/json?all=1;filters=x", 403, "malformed-request"),
        ("GET", "/v1.41/info%zz", 403, "malformed-request"),
        ("POST", "/v1.41/build?version=2", 403, "rule 'buildkit'"),
        ("POST", "/v1.41/build?networkmode=host", 403, "build-network"),
        ("POST", "/v1.41/images/create?fromSrc=-&repo=debian", 403, "image-import"),
    ],
)
def test_routing_is_canonical_and_default_deny(
    guarded: DockerDaemon, method: str, path: str, status: int, text: str
) -> None:
    code, body = _raw(
        guarded, f"{method} {path} HTTP/1.1\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode()
    )
    assert code == status, body
    assert text in body


@pytest.mark.parametrize(
    ("headers", "body", "text"),
    [
        (
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json",
            b"0\r\n\r\n",
            "ambiguous-framing",
        ),
        ("Content-Type: application/x-www-form-urlencoded", b"Image=x", "form-body"),
        ("Content-Type: application/json", b'{"Image": "x"}{"HostConfig": {}}', "ambiguous-json"),
        ("Content-Type: application/json", b'{"Image": "x", "StopTimeout": NaN}', "ambiguous-json"),
        ("Content-Type: application/json", b'\xef\xbb\xbf{"Image": "x"}', "ambiguous-json"),
        ("Content-Type: application/json", b'{"Image": "x\xff"}', "ambiguous-json"),
        ("Content-Type: application/json", b'{"Image": "\\ud800"}', "ambiguous-json"),
        (
            "Content-Type: application/json",
            b'{"Image": "x", "HostConfig": {"NewField": true}}',
            "unknown-field",
        ),
        (
            "Content-Type: application/json",
            b'{"Image": "' + b"x" * (2 << 20) + b'"}',
            "body-too-large",
        ),
    ],
    ids=[
        "cl-and-te",
        "form",
        "trailing-json",
        "nan",
        "bom",
        "bad-utf8",
        "surrogate",
        "unknown",
        "cap",
    ],
)
def test_ambiguous_requests_are_refused(
    guarded: DockerDaemon, headers: str, body: bytes, text: str
) -> None:
    if "chunked" not in headers:
        headers += f"\r\nContent-Length: {len(body)}"
    request = (
        f"POST /v1.41/containers/create HTTP/1.1\r\nHost: docker\r\n{headers}\r\n\r\n".encode()
        + body
    )
    code, answer = _raw(guarded, request)
    assert code == 403, answer
    assert text in answer


def test_a_start_body_is_refused(guarded: DockerDaemon) -> None:
    api = Api(guarded.base_url)
    try:
        made = api.call("POST", f"{V}/containers/create", {"Image": IMAGE, "Cmd": ["true"]})
        started = api.call(
            "POST", f"{V}/containers/{made.payload['Id']}/start", {"Binds": ["/:/host"]}
        )
        assert_refused(started, "unexpected-body")
    finally:
        api.close()


def test_a_bind_swapped_for_a_symlink_after_create_is_refused_at_start(
    guarded: DockerDaemon, tmp_path: Path
) -> None:
    source = tmp_path / "data"
    source.mkdir()
    container = guarded.client.containers.create(
        IMAGE, ["touch", f"/host{CANARY_DIR}/swapped"], volumes={str(source): {"bind": "/host"}}
    )
    source.rmdir()
    source.symlink_to("/")
    with pytest.raises(docker.errors.APIError, match="rule 'host-bind'"):
        container.start()
    assert not (CANARY_DIR / "swapped").exists()


# ---- the report, workers, crashes -----------------------------------------------------------


def test_report_says_guarded_and_counts_refusals(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import docker, pytest

        def test_refused(docker_client):
            with pytest.raises(docker.errors.APIError, match="host-bind"):
                docker_client.containers.run(
                    "debian:bookworm-slim", "true", volumes={"/": {"bind": "/host"}}
                )
        """
    )
    result = pytester.runpytest_subprocess("--docker-backend=guarded", "-p", "no:randomly")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [
            "isolated-docker: backend=guarded *",
            "isolated-docker: GUARDED: *default-deny guard*",
            "main: guarded GUARDED: the host's engine at * behind a default-deny guard, "
            "1 request refused at unix://*leaks at teardown: 0",
        ]
    )
    assert "UNSAFE" not in result.stdout.str()


WORKER_TESTS = """
import os, pathlib, time, docker, pytest

@pytest.mark.parametrize("i", range(2))
def test_worker(docker_client, i):
    me = os.environ["PYTEST_XDIST_WORKER"]
    mine = docker_client.containers.run(
        "debian:bookworm-slim", "sleep 60", detach=True, name=f"guard-xdist-{me}-{time.time_ns()}"
    )
    pathlib.Path(f"{me}.id").write_text(mine.id)
    deadline = time.monotonic() + 60
    others = []
    while not others:
        others = [p for p in pathlib.Path().glob("gw*.id") if p.name != f"{me}.id"]
        assert time.monotonic() < deadline, "the other worker never started"
        time.sleep(0.1)
    theirs = others[0].read_text()
    seen = {c.id for c in docker_client.containers.list(all=True)}
    assert seen == {mine.id}, seen
    for call in (
        lambda: docker_client.containers.get(theirs),
        lambda: docker_client.api.kill(theirs),
        lambda: docker_client.api.remove_container(theirs, force=True),
        lambda: docker_client.api.exec_create(theirs, ["true"]),
    ):
        with pytest.raises(docker.errors.APIError) as refused:
            call()
        assert refused.value.status_code == 403, refused.value
    time.sleep(1)  # the other worker's checks run while this container exists
"""


def test_xdist_workers_never_see_each_others_containers(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(WORKER_TESTS)
    result = pytester.runpytest_subprocess(
        "-n", "2", "--docker-backend=guarded", "-p", "no:randomly", "--dist", "load"
    )
    result.assert_outcomes(passed=2)
    assert labelled(host_engine, session_of(result.stdout.str())) == []


SLOW_TEST = """
import io, time

def test_slow(docker_client):
    docker_client.networks.create("made-before-the-crash")
    docker_client.volumes.create()
    docker_client.containers.run(
        "debian:bookworm-slim", "sleep 300", detach=True, volumes={"named": {"bind": "/n"}}
    )
    docker_client.images.build(
        fileobj=io.BytesIO(b"FROM debian:bookworm-slim\\nRUN true\\n"), tag="guard-crash-built:1"
    )
    open("started", "w").close()
    time.sleep(300)
"""


def session_images(host_engine: docker.DockerClient, session: str) -> list[str]:
    """IDs of the host's images carrying the session's label, listed in one call: the high-level
    ``images.list`` inspects each image afterwards and fails on one the sweep removes meanwhile."""
    images = host_engine.api.images(filters={"label": f"{SESSION}={session}"}, quiet=True)
    return list(images)


def test_kill_9_of_a_guarded_session_leaves_nothing(
    pytester: pytest.Pytester, host_engine: docker.DockerClient
) -> None:
    pytester.makepyfile(SLOW_TEST)
    process = spawn_pytest(pytester.path, "-p", "no:randomly", "--docker-backend=guarded")
    assert process.stdout is not None
    session = ""
    for _, raw in zip(range(10), process.stdout, strict=False):
        line = raw.decode()
        if line.startswith("isolated-docker: backend="):
            session = line.rsplit("session=", 1)[1].strip()
            break
    try:
        deadline = time.monotonic() + 120
        while not (pytester.path / "started").exists():
            assert time.monotonic() < deadline, "the test never started"
            assert process.poll() is None, "the inner run ended before its test started"
            time.sleep(0.2)
        made = labelled(host_engine, session)
        assert len(made) >= 4, made
        assert session_images(host_engine, session)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stdout.close()
    killed = time.monotonic()
    session_dir = state_root() / "sessions" / session

    def gone() -> bool:
        return (
            labelled(host_engine, session) == []
            and not session_images(host_engine, session)
            and not session_dir.exists()
        )

    while not gone():
        assert time.monotonic() - killed < 15, (labelled(host_engine, session), session_dir)
        time.sleep(0.2)
    with pytest.raises(docker.errors.ImageNotFound):
        host_engine.images.get("guard-crash-built:1")


def test_the_guard_fronts_an_engine_over_tls(
    dind_upstream: DockerDaemon, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """DOCKER_HOST=tcp://... with DOCKER_TLS_VERIFY: the guard speaks TLS to the engine (here an
    isolated dind daemon standing in for a remote one), streams and hijacks included."""
    session = session_of_config(request.config)
    context = dataclasses.replace(
        session.context,
        settings=session.settings.replace(backend="guarded"),
        engine=Engine(
            dind_upstream.base_url,
            "a test",
            dind_upstream.env["DOCKER_CERT_PATH"],
            tls_verify=True,
        ),
    )
    daemon = start_daemon(context)
    try:
        client = daemon.client
        assert client.info()["ID"] == dind_upstream.client.info()["ID"]
        assert client.containers.run(IMAGE, ["echo", "tls"], remove=True) == b"tls\n"
        # Both directions of a hijacked stream at once, then the end of input as a close_notify.
        data = "".join(f"{i:08d} through TLS\n" for i in range(100_000))
        piped = _cli(daemon, "run", "--rm", "-i", IMAGE, "cat", stdin=data)
        assert piped.stdout == data, piped.stderr
        with pytest.raises(docker.errors.APIError, match="rule 'privileged'"):
            client.containers.run(IMAGE, "true", privileged=True)
    finally:
        assert daemon.stop() == []


def test_unknown_answers_of_the_guard_are_json(guarded: DockerDaemon) -> None:
    code, body = _raw(guarded, b"GARBAGE\r\n\r\n")
    assert code == 400
    assert "malformed HTTP" in json.loads(body)["message"]
