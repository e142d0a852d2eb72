"""`make bench`: measured in one run, printed as a table, written to bench-results.json.

Rows (p50/p90 over at least 5 runs each):
  (a) floor: a bare dockerd on the host in its own network namespace to first /_ping, plus
      `docker run --rm` of a trivial container on the host engine;
  (b) the dind backend, request to a ready client;
  (c) the official docker:dind way in the same image: openssl RSA-4096 CA/server/client, then
      dockerd --tlsverify, to the first TLS handshake;
  (d) reset of an empty daemon and of one with 20 containers;
  (e) a session of container tests with -n 2 against -n 1 and without xdist (each pytest run with
      Python's bytecode cache, see _USER_ENV);
  (i) the same tests with a fresh daemon each;
  preload of a ~100 MB image against a raw `docker save | docker load` between the same engines;
  on-demand pull of the base image from the host mirror (cache cold and warm) against its preload;
  (g) the guarded backend: latency each API call gains through the guard (p50 of many calls,
      guard minus direct, same client), and `docker run --rm` through the guard against direct;
  the machine backend's rows when dev/bench_machine.py is present.

BENCH_ONLY=guard runs the (g) rows alone, BENCH_ONLY=engines the (h) rows (remote engines),
BENCH_ONLY=sessions the (e) and (i) rows (whole pytest runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pytest_isolated_docker.backends import BackendContext
from pytest_isolated_docker.backends.dind import CAPABILITY_RECIPE
from pytest_isolated_docker.daemon import DockerDaemon
from pytest_isolated_docker.engines import Engine
from pytest_isolated_docker.hostmirror import HostMirror
from pytest_isolated_docker.images import preload
from pytest_isolated_docker.labels import Identity, new_session_id
from pytest_isolated_docker.lifecycle import start_daemon
from pytest_isolated_docker.mirrorstore import Store
from pytest_isolated_docker.net import bridge_gateway
from pytest_isolated_docker.settings import resolve

RUNS = int(os.environ.get("BENCH_RUNS", "5"))
ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "debian:bookworm-slim"
PRELOAD_IMAGE = "pytest-isolated-docker-bench/hundred-mb:1"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def row(name: str, samples: list[float], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "runs": len(samples),
        "p50": statistics.median(samples),
        "p90": percentile(samples, 0.9),
        "samples": [round(s, 4) for s in samples],
        **extra,
    }


def timed(action: Callable[[], Any]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def settings_for_bench(**flags: Any) -> Any:
    return resolve(flags, os.environ, {})


def new_context(**flags: Any) -> BackendContext:
    return BackendContext(settings_for_bench(**flags), Identity(new_session_id(), "bench"))


# (a) -------------------------------------------------------------------------------------------
def bare_dockerd_to_ping() -> float:
    """A dockerd of its own (data, exec root, pidfile, socket) in a new network namespace."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-dockerd-", dir="/var/tmp"))
    sock = workdir / "docker.sock"
    start = time.perf_counter()
    process = subprocess.Popen(
        [
            "unshare",
            "--net",
            "dockerd",
            f"--data-root={workdir / 'data'}",
            f"--exec-root={workdir / 'x'}",
            f"--pidfile={workdir / 'pid'}",
            f"--host=unix://{sock}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = docker.APIClient(base_url=f"unix://{sock}", version="1.24", timeout=2)
        while True:
            if process.poll() is not None:
                raise RuntimeError("bare dockerd exited")
            with contextlib.suppress(Exception):
                if sock.exists() and client.get(client.base_url + "/_ping").status_code == 200:
                    break
            time.sleep(0.005)
        return time.perf_counter() - start
    finally:
        process.terminate()
        process.wait(timeout=30)
        subprocess.run(["umount", "-R", str(workdir / "data")], stderr=subprocess.DEVNULL)
        shutil.rmtree(workdir, ignore_errors=True)


def host_docker_run() -> float:
    return timed(
        lambda: subprocess.run(
            ["docker", "run", "--rm", BASE_IMAGE, "true"], check=True, stdout=subprocess.DEVNULL
        )
    )


# (b) -------------------------------------------------------------------------------------------
def timed_dind() -> float:
    seconds, daemon = dind_ready()
    daemon.stop()
    return seconds


def dind_ready(**flags: Any) -> tuple[float, DockerDaemon]:
    context = new_context(**flags)
    start = time.perf_counter()
    daemon = start_daemon(context)
    daemon.client.ping()
    return time.perf_counter() - start, daemon


# (c) -------------------------------------------------------------------------------------------
OFFICIAL_TLS = r"""
set -eu
d=/certs
mkdir -p $d/ca $d/server $d/client
openssl genrsa -out $d/ca/key.pem 4096 2>/dev/null
openssl req -new -key $d/ca/key.pem -out $d/ca/cert.pem -subj /CN=docker:dind-CA -x509 -days 825
for who in server client; do
    openssl genrsa -out $d/$who/key.pem 4096 2>/dev/null
    openssl req -new -key $d/$who/key.pem -out $d/$who/csr.pem -subj /CN=docker:dind-$who
    openssl x509 -req -in $d/$who/csr.pem -CA $d/ca/cert.pem -CAkey $d/ca/key.pem \
        -CAcreateserial -out $d/$who/cert.pem -days 825 2>/dev/null
done
"""


def official_image(host: docker.DockerClient, dind_image: str) -> str:
    """The same dind image plus openssl (the official entrypoint's key generator)."""
    tag = "pytest-isolated-docker-bench/dind-openssl:1"
    dockerfile = (
        f"FROM {dind_image}\nRUN apt-get update && apt-get install -y --no-install-recommends "
        "openssl && rm -rf /var/lib/apt/lists/*\n"
    )
    with contextlib.suppress(docker.errors.ImageNotFound):
        host.images.get(tag)
        return tag
    host.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True)
    return tag


def official_way(host: docker.DockerClient, image: str) -> float:
    script = OFFICIAL_TLS + textwrap.dedent(
        """
        exec dockerd --host=tcp://0.0.0.0:2376 --tlsverify --tlscacert=/certs/ca/cert.pem \
            --tlscert=/certs/server/cert.pem --tlskey=/certs/server/key.pem
        """
    )
    # The same cgroup preparation as ours, so that only the start-up way differs.
    from pytest_isolated_docker.backends.dind import ENTRYPOINT

    prepare = ENTRYPOINT.split("while [ ! -e /certs/ready ]")[0]
    api = host.api
    host_config = api.create_host_config(
        port_bindings={2376: ("127.0.0.1", None)},
        tmpfs={"/var/lib/docker": ""},
        **CAPABILITY_RECIPE["host_config"],
    )
    host_config.update(CAPABILITY_RECIPE["raw_host_config"])
    start = time.perf_counter()
    created = api.create_container(
        image,
        entrypoint=["sh", "-c", prepare + script],
        ports=[2376],
        host_config=host_config,
        labels={"pytest-isolated-docker-bench": "official"},
    )
    try:
        api.start(created["Id"])
        port = int(
            api.inspect_container(created["Id"])["NetworkSettings"]["Ports"]["2376/tcp"][0][
                "HostPort"
            ]
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                context.wrap_socket(raw),
            ):
                break  # dockerd answers TLS: its API listener is up
            time.sleep(0.01)
        return time.perf_counter() - start
    finally:
        api.remove_container(created["Id"], force=True, v=True)


# (d) -------------------------------------------------------------------------------------------
def reset_rows(daemon: DockerDaemon) -> list[dict[str, Any]]:
    empty = [timed(daemon.reset) for _ in range(max(RUNS, 10))]
    full = []
    client = daemon.client
    for _ in range(RUNS):
        for _ in range(20):
            client.containers.run(BASE_IMAGE, "sleep 300", detach=True)
        full.append(timed(daemon.reset))
    return [
        row("(d) reset, empty daemon", empty, target="<= 0.050 s"),
        row("(d) reset, 20 running containers", full),
    ]


RESET_SUITE = """
import time
import pytest

@pytest.mark.parametrize("i", range({tests}))
def test_many(docker_client, i):
    for _ in range(20):
        docker_client.containers.run("debian:bookworm-slim", "sleep 300", detach=True)
    time.sleep(3)  # a test's own work, during which the spare starts
"""


def swap_reset_row() -> dict[str, Any]:
    """The teardown of tests that leave 20 running containers, as pytest measures it: the first
    resets in place (and has a spare started), the later ones swap in the spare."""
    tests = RUNS + 1
    with tempfile.TemporaryDirectory() as directory:
        suite = Path(directory, "test_reset.py")
        suite.write_text(RESET_SUITE.format(tests=tests))
        output = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
             str(suite), "--docker-preload", BASE_IMAGE, "-c", os.devnull, "--rootdir", directory,
             "--durations=0", "--durations-min=0"],
            check=True, capture_output=True, text=True, cwd=directory,
        ).stdout  # fmt: skip
    teardowns = {
        int(line.rsplit("[", 1)[1].rstrip("]")): float(line.split("s", 1)[0])
        for line in output.splitlines()
        if " teardown " in line and "test_many[" in line
    }
    return row(
        "(d) reset, 20 running containers, on the critical path (swapped for a warm spare)",
        [teardowns[i] for i in range(1, tests)],
        first_reset_in_place=teardowns[0],
        target="<= 0.1 s",
    )


# (e) -------------------------------------------------------------------------------------------
SESSION_SUITE = """
import pytest

@pytest.mark.parametrize("i", range(8))
def test_container(docker_client, i):
    output = docker_client.containers.run("debian:bookworm-slim", ["echo", str(i)])
    assert output == f"{i}\\n".encode()
"""


FRESH_SUITE = SESSION_SUITE.replace(
    "@pytest.mark.parametrize", "@pytest.mark.docker_daemon(fresh=True)\n@pytest.mark.parametrize"
)


#: The environment of the measured pytest runs: with Python's bytecode cache, as users have it.
#: Under PYTHONDONTWRITEBYTECODE (set on this project's machines) an editable install has no
#: cached bytecode of the plugin, and every pytest process, each xdist worker among them,
#: compiled its modules again (about 0.1 s of CPU each).
_USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _compile_plugin() -> None:
    """Write the plugin's bytecode cache once, before the measured runs."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(ROOT / "pytest_isolated_docker")],
        check=True,
        stdout=subprocess.DEVNULL,
        env=_USER_ENV,
    )


def session_time(workers: int, suite: Path) -> float:
    """A whole pytest run of ``suite``: without xdist for 0 workers, else ``-n workers``.
    pytest-docker-tools, in the development environment for the compatibility tests, is kept
    out: it imports docker-py in every pytest process, which is not our plugin's cost."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:docker_tools"]
    args += [str(suite), "--docker-preload", BASE_IMAGE, "-c", os.devnull]
    args += ["--rootdir", str(suite.parent)]
    if workers:
        args += ["-n", str(workers)]
    start = time.perf_counter()
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, cwd=suite.parent, env=_USER_ENV)
    return time.perf_counter() - start


def session_rows() -> list[dict[str, Any]]:
    """(e) and (i): whole pytest runs of the 8-test suite, interleaved (a slow moment of the
    machine hits all four kinds)."""
    rows: list[dict[str, Any]] = []
    _compile_plugin()
    with tempfile.TemporaryDirectory() as suite_dir:
        suite = Path(suite_dir, "test_session.py")
        suite.write_text(SESSION_SUITE)
        fresh_suite = Path(suite_dir, "test_fresh.py")
        fresh_suite.write_text(FRESH_SUITE)
        one, xdist_one, two, fresh = [], [], [], []
        for _ in range(RUNS):
            one.append(session_time(0, suite))
            xdist_one.append(session_time(1, suite))
            two.append(session_time(2, suite))
            fresh.append(session_time(0, fresh_suite))
    rows.append(row("(e) session of 8 container tests, without xdist", one))
    rows.append(row("(e) session of 8 container tests, -n 1 (xdist, one worker)", xdist_one))
    rows.append(
        row(
            "(e) session of 8 container tests, -n 2",
            two,
            target="faster than without xdist",
            ratio_to_no_xdist=round(statistics.median(two) / statistics.median(one), 3),
            ratio_to_n1=round(statistics.median(two) / statistics.median(xdist_one), 3),
        )
    )
    rows.append(
        row(
            "(i) the same 8 tests, a fresh daemon each (warm spares, renewals), no xdist: added "
            "per test",
            [(f - o) / 8 for f, o in zip(fresh, one, strict=True)],
            target="<= 0.15 s",
        )
    )
    return rows


# preload ---------------------------------------------------------------------------------------
def hundred_mb_image(host: docker.DockerClient) -> str:
    with contextlib.suppress(docker.errors.ImageNotFound):
        host.images.get(PRELOAD_IMAGE)
        return PRELOAD_IMAGE
    with tempfile.TemporaryDirectory() as context:
        Path(context, "blob").write_bytes(os.urandom(100 * 1024 * 1024))
        Path(context, "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
        host.images.build(path=context, tag=PRELOAD_IMAGE, rm=True)
    return PRELOAD_IMAGE


def raw_save_load(daemon: DockerDaemon, image: str) -> float:
    env = {**os.environ, **daemon.env}
    start = time.perf_counter()
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "load", "-q"], stdin=save.stdout, env=env, check=True, stdout=subprocess.DEVNULL
    )
    assert save.wait() == 0
    return time.perf_counter() - start


def preload_rows(host: docker.DockerClient) -> list[dict[str, Any]]:
    image = hundred_mb_image(host)
    ours: list[float] = []
    raw: list[float] = []
    first_second: list[tuple[float, float]] = []
    with dind_daemons(2) as (one, two):
        for _ in range(RUNS):
            for daemon in (one, two):
                with contextlib.suppress(docker.errors.ImageNotFound):
                    daemon.client.images.remove(image, force=True)
            raw.append(raw_save_load(one, image))
            one.client.images.remove(image, force=True)
            ours.append(preload(host, one.client, [image]))
            first_second.append((ours[-1], preload(host, two.client, [image])))
    p50_ours, p50_raw = statistics.median(ours), statistics.median(raw)
    return [
        row(
            "preload ~100 MB: pytest-isolated-docker (API stream)",
            ours,
            ratio_to_raw=round(p50_ours / p50_raw, 3),
            target="<= 1.3 x raw",
        ),
        row("preload ~100 MB: raw docker save | docker load", raw),
        row(
            "preload ~100 MB: second daemon right after the first",
            [second for _, second in first_second],
            target="not slower than the first",
        ),
    ]


# (f) templates ---------------------------------------------------------------------------------
FIVE_IMAGES = [f"pytest-isolated-docker-bench/hundred-mb-{i}:1" for i in range(5)]


def five_images(host: docker.DockerClient) -> list[str]:
    """Five ~100 MB images with nothing in common (random content each)."""
    for image in FIVE_IMAGES:
        try:
            host.images.get(image)
        except docker.errors.ImageNotFound:
            with tempfile.TemporaryDirectory() as context:
                Path(context, "blob").write_bytes(os.urandom(100 * 1024 * 1024))
                Path(context, "Dockerfile").write_text("FROM scratch\nCOPY blob /blob\n")
                host.images.build(path=context, tag=image, rm=True)
    return FIVE_IMAGES


def started_with(**flags: Any) -> tuple[float, float]:
    """Request to ready client of a dind daemon with ``flags``, and its reported preload time."""
    seconds, daemon = dind_ready(**flags)
    preload_seconds = daemon.preload_seconds
    daemon.stop()
    return seconds, preload_seconds


def template_rows(host: docker.DockerClient, raw_p50: float) -> list[dict[str, Any]]:
    """Preloads from a template, each against an empty daemon started in the same loop."""
    image = hundred_mb_image(host)
    five = five_images(host)
    # A preload set of its own (a new name of the image), so that its template is made here.
    fresh = f"pytest-isolated-docker-bench/template-{new_session_id()}:1"
    host.images.get(image).tag(fresh)
    try:
        made, made_preload = started_with(preload=[fresh])
        again, again_preload = started_with(preload=[fresh])
    finally:
        host.images.remove(fresh)
    started_with(preload=[image])  # their templates, if this host has none yet
    started_with(preload=five)
    empty: list[float] = []
    one: list[float] = []
    five_added: list[float] = []
    for _ in range(RUNS):
        empty.append(started_with()[0])
        one.append(started_with(preload=[image])[0] - empty[-1])
        five_added.append(started_with(preload=five)[0] - empty[-1])
    one_p50 = statistics.median(one)
    return [
        row(
            "(f) template made for a new preload set (once per host)",
            [made],
            preload=round(made_preload, 3),
            next_daemon=round(again, 3),
            next_daemon_preload=round(again_preload, 3),
        ),
        row("(f) empty daemon, same loop as the template rows", empty),
        row(
            "(f) preload ~100 MB from its template: added per daemon",
            one,
            target="<= 0.25 s and <= 0.2 x raw",
            ratio_to_raw=round(one_p50 / raw_p50, 3),
        ),
        row(
            "(f) preload five ~100 MB images from their template: added per daemon",
            five_added,
            target="<= 0.5 s",
        ),
    ]


def host_mirror_rows(host: docker.DockerClient) -> list[dict[str, Any]]:
    """On-demand pull of the base image through the host mirror (issue 14, item 2), by two dind
    daemons started without preload: cold (the store empty: export, then pull) and warm (the
    store filled by the cold pull), next to a preload of the same image into the same daemon."""
    context = new_context()
    with tempfile.TemporaryDirectory() as cache:
        store = Store(Path(cache))
        address = bridge_gateway(host)
        mirror = HostMirror.start(context.engine, address, context.ca, store)
        mirrored = dataclasses.replace(context, host_mirror=mirror.url)
        cold: list[float] = []
        warm: list[float] = []
        preloaded: list[float] = []
        daemons = [start_daemon(mirrored) for _ in range(2)]
        try:
            for _ in range(RUNS):
                for daemon in daemons:
                    with contextlib.suppress(docker.errors.ImageNotFound):
                        daemon.client.images.remove(BASE_IMAGE, force=True)
                shutil.rmtree(store.root)
                cold.append(timed(lambda: daemons[0].client.images.pull(BASE_IMAGE)))
                warm.append(timed(lambda: daemons[1].client.images.pull(BASE_IMAGE)))
                daemons[1].client.images.remove(BASE_IMAGE, force=True)
                preloaded.append(preload(host, daemons[1].client, [BASE_IMAGE]))
        finally:
            for daemon in daemons:
                daemon.stop()
            mirror.close()
    return [
        row(f"on-demand pull of {BASE_IMAGE} from the host mirror: cold cache (export)", cold),
        row(
            f"on-demand pull of {BASE_IMAGE} from the host mirror: warm cache",
            warm,
            ratio_to_preload=round(statistics.median(warm) / statistics.median(preloaded), 3),
        ),
        row(f"preload of {BASE_IMAGE} (API stream), same daemons", preloaded),
    ]


@contextlib.contextmanager
def dind_daemons(count: int) -> Iterator[list[DockerDaemon]]:
    daemons = [start_daemon(new_context()) for _ in range(count)]
    try:
        yield daemons
    finally:
        for daemon in daemons:
            daemon.stop()


# (g) -------------------------------------------------------------------------------------------
API_CALLS = int(os.environ.get("BENCH_API_CALLS", "300"))


def _paired_samples(
    guarded: docker.APIClient, direct: docker.APIClient, path: str
) -> tuple[list[float], list[float]]:
    """Each call through the guard and directly, alternating, so that drift hits both alike."""
    for api in (guarded, direct) * 20:  # warm the connections (and the guard's ownership cache)
        api.get(api.base_url + path).raise_for_status()
    through: list[float] = []
    plain: list[float] = []
    for _ in range(API_CALLS):
        for api, samples in ((guarded, through), (direct, plain)):
            start = time.perf_counter()
            api.get(api.base_url + path).raise_for_status()
            samples.append(time.perf_counter() - start)
    return through, plain


def guard_rows() -> list[dict[str, Any]]:
    daemon = start_daemon(new_context(backend="guarded"))
    direct = docker.APIClient(version=daemon.api_version, timeout=60)
    guarded = daemon.new_client().api
    try:
        container = guarded.create_container(BASE_IMAGE, "sleep 300")["Id"]
        guarded.start(container)
        rows = []
        for what, path in (
            ("GET /_ping", "/_ping"),
            ("GET /version", "/version"),
            ("container inspect (ownership checked)", f"/containers/{container}/json"),
            ("container list (narrowed to own)", "/containers/json?all=1"),
        ):
            through, plain = _paired_samples(guarded, direct, path)
            added = statistics.median(through) - statistics.median(plain)
            rows.append(
                row(
                    f"(g) guard: added latency per API call, {what}",
                    [t - p for t, p in zip(through, plain, strict=True)],
                    added_p50_ms=round(added * 1000, 3),
                    direct_p50_ms=round(statistics.median(plain) * 1000, 3),
                    target="<= 2 ms p50",
                )
            )
        env = {**os.environ, **daemon.env}
        through_run: list[float] = []
        direct_run: list[float] = []
        for _ in range(max(RUNS, 10)):  # interleaved, so that drift hits both alike
            through_run.append(
                timed(
                    lambda: subprocess.run(
                        ["docker", "run", "--rm", BASE_IMAGE, "true"],
                        check=True,
                        env=env,
                        stdout=subprocess.DEVNULL,
                    )
                )
            )
            direct_run.append(host_docker_run())
        ratio = statistics.median(through_run) / statistics.median(direct_run)
        rows.append(
            row(
                "(g) docker run --rm through the guard",
                through_run,
                ratio_to_direct=round(ratio, 3),
                target="<= 1.1 x direct",
            )
        )
        rows.append(row("(g) docker run --rm direct (same runs, interleaved)", direct_run))
        return rows
    finally:
        direct.close()
        guarded.close()
        daemon.stop()


# (h) -------------------------------------------------------------------------------------------
def engine_rows(host: docker.DockerClient, local: list[float]) -> list[dict[str, Any]]:
    """The dind backend on another machine's engine (a network namespace with its own dockerd,
    as the tests make them), over TCP and through SSH, against the local engine's (b)."""
    sys.path.insert(0, str(ROOT))
    from tests.netns_hosts import netns_host

    image = settings_for_bench().dind_image
    rows: list[dict[str, Any]] = []
    with netns_host([image, BASE_IMAGE], host, ssh=True) as remote:
        os.environ["PATH"] = f"{remote.ssh_path}{os.pathsep}{os.environ['PATH']}"
        for kind, url in (("tcp", remote.url), ("ssh", remote.ssh_url)):
            engine = Engine(url, "bench")
            samples = []
            for _ in range(RUNS):
                context = dataclasses.replace(new_context(), engine=engine)
                start = time.perf_counter()
                daemon = start_daemon(context)
                daemon.client.ping()
                samples.append(time.perf_counter() - start)
                daemon.stop()
            rows.append(
                row(
                    f"(h) dind backend on a remote {kind} engine: request to ready client",
                    samples,
                    target="<= 2 x (b)",
                    ratio_to_local=round(statistics.median(samples) / statistics.median(local), 3),
                )
            )
    return rows


# -----------------------------------------------------------------------------------------------
def main() -> int:
    host = docker.from_env(timeout=600)
    dind_image = settings_for_bench().dind_image
    rows: list[dict[str, Any]] = []

    print(f"benchmarking on {os.cpu_count()} cores, {RUNS} runs per row ...", file=sys.stderr)
    if os.environ.get("BENCH_ONLY") == "engines":
        local = [timed_dind() for _ in range(RUNS)]
        rows = [row("(b) dind backend: request to ready client", local), *engine_rows(host, local)]
        print_table(rows)
        return 0
    if os.environ.get("BENCH_ONLY") == "sessions":
        print_table(session_rows())
        return 0
    if os.environ.get("BENCH_ONLY") == "guard":
        rows = guard_rows()
        print_table(rows)
        (ROOT / "bench-results-guard.json").write_text(
            json.dumps({"runs": RUNS, "rows": rows}, indent=1)
        )
        return 0
    bare = [bare_dockerd_to_ping() for _ in range(RUNS)]
    run = [host_docker_run() for _ in range(RUNS)]
    floor = [b + r for b, r in zip(bare, run, strict=False)]
    rows.append(row("(a) floor: bare dockerd in a netns to /_ping", bare))
    rows.append(row("(a) floor: docker run --rm on the host engine", run))
    rows.append(row("(a) floor: sum", floor))

    dind: list[float] = []
    for _ in range(RUNS):
        seconds, daemon = dind_ready()
        dind.append(seconds)
        daemon.stop()
    rows.append(
        row(
            "(b) dind backend: request to ready client",
            dind,
            target="<= 2 x (a)",
            ratio_to_floor=round(statistics.median(dind) / statistics.median(floor), 3),
        )
    )

    official = official_image(host, dind_image)
    official_runs = [official_way(host, official) for _ in range(RUNS)]
    rows.append(
        row(
            "(c) official docker:dind way (RSA-4096 openssl, same image + openssl)",
            official_runs,
            target=">= 3 x (b)",
            ratio_to_dind=round(statistics.median(official_runs) / statistics.median(dind), 3),
        )
    )

    with dind_daemons(1) as (daemon,):
        preload(host, daemon.client, [BASE_IMAGE])
        rows.extend(reset_rows(daemon))
    rows.append(swap_reset_row())

    rows.extend(session_rows())

    rows.extend(engine_rows(host, dind))
    preloads = preload_rows(host)
    rows.extend(preloads)
    raw = next(r for r in preloads if "raw docker save" in r["name"])
    rows.extend(template_rows(host, raw["p50"]))
    rows.extend(host_mirror_rows(host))
    rows.extend(guard_rows())

    machine_bench = ROOT / "dev" / "bench_machine.py"
    if machine_bench.exists() and os.environ.get("BENCH_MACHINE", "1") != "0":
        sys.path.insert(0, str(machine_bench.parent))
        import bench_machine  # type: ignore[import-not-found]

        rows.extend(bench_machine.rows())

    print_table(rows)
    (ROOT / "bench-results.json").write_text(json.dumps({"runs": RUNS, "rows": rows}, indent=1))
    print(f"\nwritten to {ROOT / 'bench-results.json'}")
    return 0


def print_table(rows: list[dict[str, Any]]) -> None:
    width = max(len(r["name"]) for r in rows)
    print(f"\n{'benchmark':<{width}}  {'p50 s':>8}  {'p90 s':>8}  runs  notes")
    for r in rows:
        notes = ", ".join(
            f"{k}={v}" for k, v in r.items() if k not in ("name", "p50", "p90", "runs", "samples")
        )
        print(f"{r['name']:<{width}}  {r['p50']:8.3f}  {r['p90']:8.3f}  {r['runs']:>4}  {notes}")


if __name__ == "__main__":
    sys.exit(main())
