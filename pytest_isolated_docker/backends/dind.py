"""The ``dind`` backend: a Docker daemon in a container of the host engine, mutual TLS only.

The plugin owns the start command, so any image with ``dockerd`` and a POSIX shell works. The
container is started, its server certificate (made for the addresses it is reached at) is copied
in, and only then does dockerd start, listening with ``--tlsverify`` on a port published on
127.0.0.1 only, picked by the engine.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import subprocess
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import lazy
from ..coordination import die_with_parent, locked, read_json, state_root, write_json
from ..daemon import Endpoint, phase
from ..errors import DaemonUnavailable, StartupError
from ..images import ensure_on_host, image_exists
from ..net import answers, free_port
from ..tls import file_archive, joined_archives, server_archive
from . import dind_templates as templates
from .base import Backend, BackendContext

if TYPE_CHECKING:
    import docker
    import docker.errors
    from docker.models.containers import Container
else:
    docker = lazy.module("docker")

DOCKERD_PORT = 2376

# Runs as PID 1 of the dind container. Cgroup v1 hierarchies docker gives an unprivileged
# container are read-only bind mounts that cannot be remounted read-write ("busy"), so each one is
# unmounted and mounted fresh inside the container's private cgroup namespace. Then it waits for the
# certificates the plugin copies in after start, and runs dockerd with the arguments it was given,
# staying PID 1 itself so that it can renew the daemon in place (see renew_in_place).
ENTRYPOINT = r"""
set -eu
mode=""
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    mount -o remount,rw /sys/fs/cgroup 2>/dev/null || true
    mkdir -p /sys/fs/cgroup/init
    xargs -rn1 < /sys/fs/cgroup/cgroup.procs > /sys/fs/cgroup/init/cgroup.procs 2>/dev/null || true
    sed -e 's/ / +/g' -e 's/^/+/' < /sys/fs/cgroup/cgroup.controllers \
        > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || true
elif ! awk '$1 == 0 && $2 == 0 && $3 == 4294967295 { found = 1 } END { exit !found }' \
        /proc/self/uid_map; then
    # A user namespace (a rootless engine): cgroup v1 hierarchies can be neither mounted nor
    # written; dockerd's rootless mode runs its containers without cgroups.
    mode=--rootless
else
    awk '$0 ~ / - cgroup / { print $5, $NF }' /proc/self/mountinfo |
    while read -r point options; do
        options=${options#rw,}
        umount "$point" 2>/dev/null || continue
        mount -t cgroup -o "$options" cgroup "$point" ||
            echo "pytest-isolated-docker: could not mount cgroup $options on $point" >&2
    done
fi
store=/pytest-isolated-docker-store
links=$(ls /sys/class/net)
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }
layer_mounts() { awk '$5 ~ "^/var/lib/docker/overlay2/" { print $5 }' /proc/self/mountinfo; }
clone_template() {
    template=$store/templates/$1
    if [ ! -e "$template/ready" ]; then
        echo "pytest-isolated-docker: template $1 is not in the store: starting empty"
        return 0
    fi
    started=$(now_ms)
    cp -a "$template/root/." /var/lib/docker/ || return 1
    rm -f /var/lib/docker/engine-id  # each daemon its own identity (dockerd 23 and later)
    for layer in "$template"/layers/*; do
        [ -d "$layer" ] || continue
        diff=/var/lib/docker/overlay2/${layer##*/}/diff
        mount --bind "$layer" "$diff" && mount -o remount,bind,ro "$diff" || return 1
    done
    echo "pytest-isolated-docker: cloned template $1 in $(( $(now_ms) - started )) ms"
}
fresh_data_root() {
    [ -n "${PYTEST_ISOLATED_DOCKER_TEMPLATE:-}" ] || return 0
    if ! clone_template "$PYTEST_ISOLATED_DOCKER_TEMPLATE"; then
        echo "pytest-isolated-docker: cloning template $PYTEST_ISOLATED_DOCKER_TEMPLATE failed:" \
            "starting empty" >&2
        for point in $(layer_mounts); do umount "$point"; done
        find /var/lib/docker -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    fi
}
# dockerd runs in a mount namespace of its own without the store, so that neither it nor its
# containers see the other templates; this shell keeps the store, to renew the data root.
start_dockerd() {
    unshare --mount --propagation slave sh -c '
        if grep -q " /pytest-isolated-docker-store " /proc/self/mountinfo; then
            umount /pytest-isolated-docker-store ||
                echo "pytest-isolated-docker: the template store stays mounted" >&2
        fi
        cd / && exec dockerd "$@"' dockerd $mode "$@" &
    dockerd=$!
}
others_alive() {
    for stat in /proc/[0-9]*/stat; do
        read -r line 2>/dev/null < "$stat" || continue
        case $line in "1 "*) continue ;; esac
        state=${line##*) }
        [ "${state%% *}" = Z ] || return 0
    done
    return 1
}
# What the daemon's containers wrote into this container's own file system (through bind mounts
# of its paths: a compose file's relative bind mounts, say), which no renewal could tell from the
# image's files; dockerd's own files are known. A directory not changed since the daemon started
# holds no change either (overlayfs copies a file's directories up before the file is written, and
# the only files copied up before are dockerd's), so the walk skips what did not change.
own_writes() {
    set -- -path /run -o -path /certs -o -path /etc/docker -o -path /opt/containerd
    for point in $(awk '$5 != "/" { print $5 }' /proc/self/mountinfo); do
        set -- "$@" -o -path "$point"  # the data root, the store, /etc/hosts...
    done
    find / -xdev \( "$@" \) -prune -o -type d ! -cnewer /certs/epoch -prune -o \
        -cnewer /certs/epoch \
        ! \( -type d \( -path / -o -path /etc -o -path /opt -o -path /var -o -path /var/lib \) \) \
        -print 2>/dev/null | head -n 3
}
# Renewal (SIGUSR1): everything the daemon and its containers left in this container goes (their
# processes, mounts, data root, interfaces, firewall rules, cgroups, identity); then a new dockerd
# starts from a fresh data root. A container whose own files were written to ends instead (the
# plugin then starts a new one).
renew_in_place() {
    kill -KILL -1 2>/dev/null || true
    while others_alive; do sleep 0.005; done
    written=$(own_writes)
    if [ -n "$written" ]; then
        echo "pytest-isolated-docker: not renewable in place (written by a container:" $written")"
        exit 75
    fi
    for point in $(layer_mounts | sort -r); do umount -l "$point"; done
    find /var/lib/docker -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    rm -rf /run/docker /run/docker.pid /run/docker.sock /run/containerd /etc/docker/key.json
    find /dev/shm -mindepth 1 -delete 2>/dev/null || true
    for link in $(ls /sys/class/net); do
        case " $(echo $links) " in
            *" $link "*) ;;
            *) ip link delete "$link" 2>/dev/null || true ;;
        esac
    done
    # Flushes both tables and deletes their chains in one run (four iptables runs took 60 ms).
    printf '*nat\nCOMMIT\n*filter\nCOMMIT\n' | iptables-restore 2>/dev/null || true
    find /sys/fs/cgroup -mindepth 2 -depth -type d -path "*/docker/*" \
        -exec rmdir {} + 2>/dev/null || true
}
serve() {
    renew=""
    trap 'renew=1' USR1
    trap 'kill -TERM "$dockerd" 2>/dev/null || true' TERM INT
    if command -v ip >/dev/null; then echo "pytest-isolated-docker: renewable in place"; fi
    while :; do
        : > /certs/epoch
        start_dockerd "$@"
        while [ -z "$renew" ]; do
            status=0
            wait "$dockerd" || status=$?
            [ -n "$renew" ] || kill -0 "$dockerd" 2>/dev/null || exit "$status"
        done
        renew=""
        renewal_started=$(now_ms)
        renew_in_place
        fresh_data_root
        echo "pytest-isolated-docker: renewed in $(( $(now_ms) - renewal_started )) ms"
    done
}
if [ -n "${PYTEST_ISOLATED_DOCKER_MAKE:-}" ]; then
    mkdir -p "$store/build" "$store/templates"
    for key in ${PYTEST_ISOLATED_DOCKER_EVICT:-}; do rm -rf "${store:?}/templates/$key"; done
    # A template without a marker (its maker was killed after publishing it, or its marker was
    # removed by hand) can never be used: removed once it is old enough not to be one just made.
    for template in "$store"/templates/*; do
        [ -d "$template" ] || continue
        case " ${PYTEST_ISOLATED_DOCKER_KEEP:-} $PYTEST_ISOLATED_DOCKER_MAKE " in
            *" ${template##*/} "*) ;;
            *) find "$template" -maxdepth 0 -mmin +10 -exec rm -rf {} + ;;
        esac
    done
    # A build takes seconds: one older than ten minutes was killed half-way.
    find "$store/build" -mindepth 1 -maxdepth 1 -mmin +10 -exec rm -rf {} + || true
    build=$store/build/$PYTEST_ISOLATED_DOCKER_MAKE-$(cat /etc/hostname)
    mkdir -p "$build/root" "$build/layers"
    mount --bind "$build/root" /var/lib/docker
else
    fresh_data_root
fi
while [ ! -e /certs/ready ]; do sleep 0.01; done
[ -n "${PYTEST_ISOLATED_DOCKER_MAKE:-}" ] || serve "$@"
# Making a template: once the images are loaded (/certs/finish), stop dockerd cleanly, move each
# layer out of the data root, and publish the template under its key in one rename.
dockerd $mode "$@" &
dockerd=$!
while [ ! -e /certs/finish ]; do
    kill -0 "$dockerd" 2>/dev/null || exit 3
    sleep 0.05
done
kill -TERM "$dockerd"
wait "$dockerd" || true
umount /var/lib/docker
for diff in "$build"/root/overlay2/*/diff; do
    [ -d "$diff" ] || continue
    layer=${diff%/diff}
    mv "$diff" "$build/layers/${layer##*/}"
    mkdir "$diff"
done
: > "$build/ready"
template=$store/templates/$PYTEST_ISOLATED_DOCKER_MAKE
if [ -e "$template" ]; then
    rm -rf "$build"  # made meanwhile through another runtime directory or machine
else
    mv "$build" "$template"
fi
echo "pytest-isolated-docker: template $PYTEST_ISOLATED_DOCKER_MAKE made"
"""

PRIVILEGED_REFUSED_HINTS = ("unable to apply caps", "operation not permitted")

# How long a "--privileged was refused" memo is trusted. It lives in the runtime directory (gone
# at reboot) and names the engine, its version and the kernel, so an upgrade or a new engine is
# asked again; the expiry covers what none of those show (a changed bounding set, say).
PRIVILEGE_MEMO_TTL = 24 * 3600.0

# The recipe that works where --privileged is refused (see ENVIRONMENT.md of the project).
PRIVILEGED: dict[str, Any] = {"host_config": {"privileged": True}}
CAPABILITY_RECIPE: dict[str, Any] = {
    "host_config": {
        "cap_add": ["ALL"],
        "cap_drop": ["SYS_RESOURCE"],
        "security_opt": ["seccomp=unconfined", "apparmor=unconfined"],
        "device_cgroup_rules": ["a *:* rwm"],
    },
    # systempaths=unconfined, and a cgroup namespace of its own so that the hierarchies can be
    # mounted fresh inside.
    "raw_host_config": {"MaskedPaths": [], "ReadonlyPaths": [], "CgroupnsMode": "private"},
}


def _dockerd_args(settings_mirrors: tuple[str, ...]) -> list[str]:
    args = [
        f"--host=tcp://0.0.0.0:{DOCKERD_PORT}",
        "--host=unix:///var/run/docker.sock",
        "--tlsverify",
        "--tlscacert=/certs/ca.pem",
        "--tlscert=/certs/cert.pem",
        "--tlskey=/certs/key.pem",
    ]
    args += [f"--registry-mirror={mirror}" for mirror in settings_mirrors]
    return args


def _volume_options(storage: str) -> dict[str, str]:
    """A labelled volume either way, so that teardown and the reaper treat both alike."""
    kind, _, size = storage.partition(":")
    if kind == "tmpfs":
        return {"type": "tmpfs", "device": "tmpfs", "o": f"size={size}"}
    return {}


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
REACHABLE_TIMEOUT = 5.0
TUNNEL_TIMEOUT = 15.0


@dataclass(frozen=True)
class EngineMachine:
    """Where the engine runs, as the dind backend must reach what it publishes there."""

    kind: str  # "local" (this machine), "tcp" (another machine), "ssh" (another, through SSH)
    host: str = ""
    user: str = ""
    port: int | None = None

    @classmethod
    def of(cls, url: str) -> EngineMachine:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme == "ssh":
            return cls("ssh", parts.hostname or "", parts.username or "", parts.port)
        if parts.scheme in ("tcp", "http", "https") and parts.hostname not in LOOPBACK_NAMES:
            return cls("tcp", parts.hostname or "")
        return cls("local")


def _check_reachable(address: str, port: int, engine: str) -> None:
    """Fail within seconds, not after the start-up timeout, when the published port cannot be
    reached from this machine. dockerd is not listening yet (it waits for its certificates), so
    a refusal proves the path works: the engine's machine answered."""
    try:
        socket.create_connection((address, port), timeout=REACHABLE_TIMEOUT).close()
    except ConnectionRefusedError:
        return
    except OSError as exc:
        raise StartupError(
            "start",
            f"the dind daemon is published at {address}:{port} by the engine {engine}, but this "
            f"machine cannot connect there ({exc}). Likely a firewall or NAT between this "
            "machine and the engine's; run pytest where it can reach the engine's addresses.",
        ) from exc


def own_container(host: docker.DockerClient) -> Container | None:
    """The container this process runs in, if it is one of the host engine's.

    Docker sets a container's hostname to its short ID and creates ``/.dockerenv``; asking the
    engine for that ID confirms it instead of trusting either heuristic alone.
    """
    if not os.path.exists("/.dockerenv"):
        return None
    try:
        container = host.containers.get(socket.gethostname())
    except docker.errors.DockerException:
        return None
    return container


@dataclass(frozen=True)
class EngineFacts:
    """What a privilege memo is keyed by: which engine, which version, on which kernel."""

    engine_id: str
    version: str
    kernel: str

    @classmethod
    def of(cls, host: docker.DockerClient) -> EngineFacts:
        info = host.info()
        return cls(
            str(info.get("ID") or "unknown"),
            str(info.get("ServerVersion") or "unknown"),
            str(info.get("KernelVersion") or "unknown"),
        )

    def as_dict(self) -> dict[str, str]:
        return {"engine_id": self.engine_id, "version": self.version, "kernel": self.kernel}


def privilege_memo_path(engine: EngineFacts, root: Path | None = None) -> Path:
    """Where the memo for ``engine`` lives: the runtime directory, named by a hash of the facts."""
    key = "\0".join((engine.engine_id, engine.version, engine.kernel))
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return (root if root is not None else state_root()) / f"privileged-refused-{digest}.json"


def write_privilege_memo(
    engine: EngineFacts, reason: str, now: float | None = None, root: Path | None = None
) -> Path:
    """Record that ``engine`` refused a privileged container, why, and when."""
    path = privilege_memo_path(engine, root)
    memo = {
        **engine.as_dict(),
        "reason": reason,
        "recorded": time.time() if now is None else now,
    }
    with locked(path.with_suffix(".lock")):
        write_json(path, memo)
    return path


def read_privilege_memo(
    engine: EngineFacts, now: float | None = None, root: Path | None = None
) -> dict[str, Any] | None:
    """The live memo for ``engine``, or None. An expired or unreadable one is removed."""
    path = privilege_memo_path(engine, root)
    memo = read_json(path)
    if not memo:
        return None
    if _memo_is_live(memo, engine, time.time() if now is None else now):
        return memo
    with locked(path.with_suffix(".lock")):
        # Another process may have written a fresh memo since it was read.
        if not _memo_is_live(read_json(path), engine, time.time() if now is None else now):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    return None


def _memo_is_live(memo: dict[str, Any], engine: EngineFacts, now: float) -> bool:
    recorded = memo.get("recorded")
    if not isinstance(recorded, (int, float)) or isinstance(recorded, bool):
        return False
    if any(memo.get(key) != value for key, value in engine.as_dict().items()):
        return False
    return 0 <= now - recorded < PRIVILEGE_MEMO_TTL


def describe_privilege_memo(memo: dict[str, Any], path: Path, now: float | None = None) -> str:
    """The doctor's line about a live memo."""
    age = (time.time() if now is None else now) - float(memo["recorded"])
    left = max(PRIVILEGE_MEMO_TTL - age, 0.0)
    return (
        f"--privileged was refused by this engine (engine {memo['engine_id']} "
        f"{memo['version']}) {int(age // 60)} min ago: dind containers use the capability "
        f"recipe; the memo expires in {left / 3600:.1f} h (remove {path} to retry now)"
    )


@dataclass(frozen=True)
class StorePlan:
    """How a dind container uses the template store: ``clone`` starts from the template of
    ``key``; ``make`` loads the images into a data root that becomes that template, and first
    removes the templates of ``evict`` and those (old enough) neither in ``keep`` nor recorded."""

    mode: str  # "clone" or "make"
    key: templates.TemplateKey
    evict: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()

    def environment(self) -> dict[str, str]:
        if self.mode == "make":
            return {
                "PYTEST_ISOLATED_DOCKER_MAKE": self.key.key,
                "PYTEST_ISOLATED_DOCKER_EVICT": " ".join(self.evict),
                "PYTEST_ISOLATED_DOCKER_KEEP": " ".join(self.keep),
            }
        return {"PYTEST_ISOLATED_DOCKER_TEMPLATE": self.key.key}


CLONED = re.compile(rb"pytest-isolated-docker: cloned template \S+ in (\d+) ms")
RENEWED = b"pytest-isolated-docker: renewed in "
#: The entrypoint's word that it can renew its daemon in place (it has the tools).
RENEWABLE = b"pytest-isolated-docker: renewable in place"

TEMPLATE_TIMEOUT = 120.0


class DindBackend(Backend):
    """A dockerd in a container of the host engine, reached over mutual TLS on 127.0.0.1."""

    name = "dind"
    roles = ("dind", "dind-data", "dind-template-maker")
    shareable = True
    cheap_to_replace = True
    renewable = True
    #: The role label of its container.
    container_role = "dind"
    uses_host_mirror = True

    _host: docker.DockerClient | None = None
    _machine = EngineMachine("local")
    _tunnel: subprocess.Popen[bytes] | None = None
    _container: Container | None = None
    _volume: str | None = None
    _mode = ""
    _plan: StorePlan | None = None
    _endpoint: Endpoint | None = None
    #: The daemon was renewed in place: its log starts at the last renewal.
    _renewed = False
    _can_renew: bool | None = None
    #: Spent making the template this daemon starts from (reported as preload time).
    _template_seconds = 0.0

    @classmethod
    def problems(cls, context: BackendContext) -> list[str]:
        found = super().problems(context)
        if found:
            return found
        image = context.settings.dind_image
        with contextlib.closing(context.host_client()) as host:
            try:
                host.images.get(image)
            except docker.errors.ImageNotFound:
                found.append(
                    f"dind image {image!r} is not in the host engine; it is pulled at the first "
                    "start when a registry is reachable. Offline: `pytest-isolated-docker "
                    "build-image dind`, then PYTEST_DOCKER_DIND_IMAGE=pytest-isolated-docker/dind"
                )
        return found

    @classmethod
    def notes(cls, context: BackendContext) -> list[str]:
        try:
            with contextlib.closing(context.host_client()) as host:
                engine = EngineFacts.of(host)
                security = " ".join(host.info().get("SecurityOptions") or [])
                made = templates.describe(host)
        except (DaemonUnavailable, docker.errors.DockerException):
            return []
        found: list[str] = list(made)
        if "name=rootless" in security:
            found.append(
                "the host engine is rootless: each dind daemon runs in its user namespace, in "
                "dockerd's rootless mode where cgroup v1 cannot be delegated (its containers get "
                "no CPU or memory limits), and its port is published through rootlesskit"
            )
        memo = read_privilege_memo(engine) if context.settings.dind_privileged == "auto" else None
        if memo is not None:
            found.append(describe_privilege_memo(memo, privilege_memo_path(engine)))
        return found

    @classmethod
    def prune_caches(cls, engine: docker.DockerClient, dry_run: bool = False) -> list[str]:
        return templates.prune(engine, dry_run)

    def start(self) -> Endpoint:
        engine = self.context.engine
        self._machine = EngineMachine.of(engine.url)
        self._host = host = self.context.host_client()
        image = self.settings.dind_image
        self._ensure_image(host, image)
        self._plan = self._store_plan(host, image)
        with phase("create", "Is the host engine overloaded or its disk full? See `docker info`."):
            self._volume = host.volumes.create(
                name=self.object_name("data"),
                labels=self.labels("dind-data"),
                driver_opts=_volume_options(self.settings.dind_storage),
            ).name
        with phase("start", "Try --docker-dind-privileged=never, or read the host engine's log."):
            container = self._run_container(host, image)
            self._container = container
            address, port = self._address(host, container)
            if self._machine.kind == "tcp":
                _check_reachable(address, port, engine.describe())
            elif self._machine.kind == "ssh":
                address, port = "127.0.0.1", self._open_tunnel(port)
            tls = self.context.ca.server_tls(
                ["127.0.0.1", "localhost", address, container.name or "", *self._container_ips()]
            )
            certificates = self.context.registry_certificates(type(self))
            # "ready" comes last: the entrypoint waits for it before starting dockerd.
            files = server_archive(tls, "certs/", [("ready", b"")])
            container.put_archive(
                "/", joined_archives(certificates, files) if certificates else files
            )
        self._endpoint = Endpoint(f"tcp://{address}:{port}", self.context.client_tls)
        return self._endpoint

    def renew(self) -> Endpoint | None:
        """Have the entrypoint kill the used daemon and all it ran, wipe what they left, and
        start a new dockerd from a fresh data root (a clone of the template): a fresh daemon in
        the same container, on the same port and certificates, for a fraction of a new
        container's cost. Not when the daemon's containers wrote into the container's own file
        system (bind mounts of its paths): the entrypoint ends it then (see ``own_writes``) and
        the caller stops it."""
        container, host = self._container, self._host
        if container is None or host is None or self._endpoint is None:
            return None
        if self._can_renew is None:
            # A dind image without `ip` says nothing: its interfaces could not be removed.
            self._can_renew = RENEWABLE in container.logs(stdout=True, stderr=False)
        if not self._can_renew:
            return None
        self._template_seconds = 0.0
        self._renewed = True
        container.kill(signal="SIGUSR1")
        return self._endpoint

    def share_state(self) -> dict[str, Any]:
        assert self._container is not None
        return {
            "container": self._container.id,
            "volume": self._volume,
            "mode": self._mode,
            "instance": self.instance,
        }

    @classmethod
    def attach(cls, context: BackendContext, state: dict[str, Any]) -> DindBackend:
        backend = cls(context)
        backend.instance = state["instance"]
        backend._host = host = context.host_client()
        backend._container = host.containers.get(state["container"])
        backend._volume = state["volume"]
        backend._mode = state["mode"]
        return backend

    def _ensure_image(self, host: docker.DockerClient, image: str) -> None:
        # Another engine of this machine (the system's for a rootless one, say) may have it.
        donors = [] if image_exists(host, image) else self.context.image_donors()
        try:
            ensure_on_host(
                host,
                [image],
                "pull",
                "Build an image offline with `pytest-isolated-docker build-image dind` and pass "
                "its name to --docker-dind-image, or pick an image the host engine has.",
                donors,
            )
        finally:
            for donor in donors:
                donor.close()

    def _create(self, host: docker.DockerClient, image: str, mode: dict[str, Any]) -> str:
        """Create the container with the low-level API: docker-py's models cannot express
        ``systempaths=unconfined`` (empty masked and read-only path lists)."""
        api = host.api
        assert self._volume is not None
        binds = {self._volume: {"bind": "/var/lib/docker", "mode": "rw"}, **self._store_bind()}
        host_config = api.create_host_config(
            # A remote engine's loopback cannot be reached from here: its daemon is published on
            # the engine machine's addresses (mutual TLS still refuses anyone without our keys).
            port_bindings={
                DOCKERD_PORT: ("0.0.0.0" if self._machine.kind == "tcp" else "127.0.0.1", None)
            },
            binds=binds,
            **mode.get("host_config", {}),
        )
        host_config.update(mode.get("raw_host_config", {}))
        plan = self._plan
        created = api.create_container(
            image,
            entrypoint=["sh", "-c", ENTRYPOINT, "pytest-isolated-docker-entrypoint"],
            command=_dockerd_args(self.context.registry_mirrors(type(self))),
            name=self.object_name("dind"),
            labels={
                **self.labels(self.container_role),
                **({templates.TEMPLATE: plan.key.key} if plan and plan.mode == "clone" else {}),
            },
            environment=plan.environment() if plan else None,
            ports=[DOCKERD_PORT],
            host_config=host_config,
            detach=True,
        )
        return str(created["Id"])

    def _store_plan(self, host: docker.DockerClient, image: str) -> StorePlan | None:
        """Start from the template of the preload set, made first when the engine has none."""
        settings = self.settings
        if not settings.preload or settings.preload_mode != "template":
            return None
        with phase(
            "preload",
            "Check the host engine's disk; --docker-preload-mode=stream "
            "loads the images into each daemon instead.",
        ):
            self.ensure_preload_on_host(host)
            key = templates.TemplateKey.of(host, image, settings.preload)
            if not templates.is_made(host, key):
                lock = state_root() / f"dind-template-{key.key[:16]}.lock"
                with locked(lock, timeout=TEMPLATE_TIMEOUT * 2, purpose="making a dind template"):
                    if not templates.is_made(host, key):
                        started = time.monotonic()
                        self._make_template(host, key)
                        self._template_seconds = time.monotonic() - started
        return StorePlan("clone", key)

    def _make_template(self, host: docker.DockerClient, key: templates.TemplateKey) -> None:
        from ..lifecycle import start_daemon  # the lifecycle starts backends: imported late

        evict = tuple(templates.evictable(host))
        for stale in evict:
            templates.forget(host, stale)
        keep = tuple(templates.markers(host))
        templates.ensure_store(host)
        maker = DindTemplateMaker(self.context, StorePlan("make", key, evict, keep))
        daemon = start_daemon(self.context, maker)
        try:
            maker.finish()
        finally:
            daemon.stop()
        templates.record(host, key)

    def _store_bind(self) -> dict[str, dict[str, str]]:
        if self._plan is None:
            return {}
        mode = "rw" if self._plan.mode == "make" else "ro"
        return {templates.STORE_VOLUME: {"bind": templates.STORE_PATH, "mode": mode}}

    def preload(self, target: docker.DockerClient) -> float:
        """Started from a template, only check that its images are there (the clone took the
        time the entrypoint logged); stream them when the template turned out missing."""
        plan = self._plan
        if plan is None or plan.mode != "clone":
            return super().preload(target)
        started = time.monotonic()
        if all(image_exists(target, image) for image in self.settings.preload):
            return self._template_seconds + self._clone_seconds() + time.monotonic() - started
        assert self._host is not None
        templates.forget(self._host, plan.key.key)  # the next daemon makes it anew
        return super().preload(target)

    def _clone_seconds(self) -> float:
        if self._container is None:
            return 0.0
        found = CLONED.findall(self._container.logs(stdout=True, stderr=False))
        return int(found[-1]) / 1000 if found else 0.0

    def _privilege_memo(
        self, host: docker.DockerClient
    ) -> tuple[EngineFacts, dict[str, Any] | None]:
        """The host engine's facts, and its live "--privileged refused" memo if there is one."""
        engine = EngineFacts.of(host)
        return engine, read_privilege_memo(engine)

    def _run_container(self, host: docker.DockerClient, image: str) -> Container:
        choice = self.settings.dind_privileged
        engine, memo = (None, None) if choice != "auto" else self._privilege_memo(host)
        if choice == "always" or (choice == "auto" and memo is None):
            try:
                container = self._create_and_start(host, image, PRIVILEGED)
                self._mode = "privileged"
                return container
            except docker.errors.APIError as exc:
                if choice == "always" or not any(h in str(exc) for h in PRIVILEGED_REFUSED_HINTS):
                    raise StartupError(
                        "start",
                        f"the engine refused the privileged dind container: {exc}. "
                        "--docker-dind-privileged=auto falls back to a capability recipe.",
                    ) from exc
                if engine is not None:
                    write_privilege_memo(engine, str(exc))
        container = self._create_and_start(host, image, CAPABILITY_RECIPE)
        self._mode = (
            "capabilities (--privileged refused by the engine)"
            if choice == "auto"
            else ("capabilities")
        )
        return container

    def _create_and_start(
        self, host: docker.DockerClient, image: str, mode: dict[str, Any]
    ) -> Container:
        container = host.containers.get(self._create(host, image, mode))
        try:
            container.start()
        except BaseException:
            container.remove(force=True, v=True)
            raise
        container.reload()
        return container

    def _address(self, host: docker.DockerClient, container: Container) -> tuple[str, int]:
        """Where this process reaches the daemon: 127.0.0.1:<published port>, the remote
        engine's address and the published port, or the container network when pytest itself
        runs in a container of the same engine."""
        bindings = container.attrs["NetworkSettings"]["Ports"].get(f"{DOCKERD_PORT}/tcp") or []
        if self._machine.kind == "tcp":
            for binding in bindings:
                if binding.get("HostIp") in ("0.0.0.0", "", None):
                    return self._machine.host, int(binding["HostPort"])
            raise StartupError("start", f"the remote engine published no port: {bindings!r}")
        me = own_container(host)
        if me is not None:
            network_name = next(iter(me.attrs["NetworkSettings"]["Networks"]), "bridge")
            if network_name not in container.attrs["NetworkSettings"]["Networks"]:
                host.networks.get(network_name).connect(container)
                container.reload()
            ip = container.attrs["NetworkSettings"]["Networks"][network_name]["IPAddress"]
            return ip, DOCKERD_PORT
        for binding in bindings:
            if binding.get("HostIp") == "127.0.0.1":
                return "127.0.0.1", int(binding["HostPort"])
        raise StartupError("start", f"the engine published no 127.0.0.1 port: {bindings!r}")

    def _open_tunnel(self, remote_port: int) -> int:
        """Forward a port of this machine's loopback to ``remote_port`` on the engine machine's
        loopback, through SSH (the ``ssh`` command: the user's configuration, agent and known
        hosts, as for the engine itself); return the local port."""
        machine = self._machine
        local = free_port()
        # A connection of its own (never a shared ControlMaster's, which would keep the forward
        # after this process exits): the tunnel lives exactly as long as this process.
        command = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o", "BatchMode=yes"]
        command += ["-o", "ControlMaster=no", "-o", "ControlPath=none"]
        command += ["-L", f"127.0.0.1:{local}:127.0.0.1:{remote_port}"]
        command += ["-l", machine.user] if machine.user else []
        command += ["-p", str(machine.port)] if machine.port else []
        self._tunnel = tunnel = subprocess.Popen(
            [*command, "--", machine.host],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + TUNNEL_TIMEOUT
        while not answers("127.0.0.1", local, timeout=0.2):
            if tunnel.poll() is not None or time.monotonic() > deadline:
                raise StartupError(
                    "start",
                    f"the SSH tunnel to the dind daemon on {machine.host} did not open: "
                    f"{self._tunnel_error()}. Check that `ssh {machine.host}` works without a "
                    "prompt (key in the agent or the SSH configuration, host key known).",
                )
            time.sleep(0.05)
        return local

    def _tunnel_error(self) -> str:
        tunnel = self._tunnel
        if tunnel is None:
            return "no tunnel"
        if tunnel.poll() is None:
            return f"no answer within {TUNNEL_TIMEOUT:.0f} s"
        assert tunnel.stderr is not None
        message = tunnel.stderr.read().decode(errors="replace").strip()
        return f"ssh exited with code {tunnel.returncode}: {message or 'no message'}"

    def _close_tunnel(self) -> None:
        tunnel, self._tunnel = self._tunnel, None
        if tunnel is not None:
            if tunnel.poll() is None:
                tunnel.terminate()
                try:
                    tunnel.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    tunnel.kill()
                    tunnel.wait()
            if tunnel.stderr is not None:
                tunnel.stderr.close()

    def _container_ips(self) -> list[str]:
        assert self._container is not None
        networks = self._container.attrs["NetworkSettings"]["Networks"] or {}
        return [n["IPAddress"] for n in networks.values() if n.get("IPAddress")]

    def failure(self) -> str | None:
        if self._tunnel is not None and self._tunnel.poll() is not None:
            return f"the SSH tunnel to its port closed ({self._tunnel_error()})"
        if self._container is None:
            return None
        try:
            self._container.reload()
        except docker.errors.NotFound:
            return "its container was removed"
        state = self._container.attrs["State"]
        if state["Status"] in ("exited", "dead"):
            return (
                f"container {self._container.name} {state['Status']} with code {state['ExitCode']}"
            )
        return None

    def diagnostics(self) -> str:
        if self._container is None:
            return ""
        state = self._container.attrs.get("State", {})
        head = (
            f"container {self._container.name} ({self._container.short_id}) of image "
            f"{self.settings.dind_image}: status={state.get('Status')} "
            f"exit={state.get('ExitCode')} error={state.get('Error') or '-'} mode={self._mode}"
        )
        return head + "\n" + super().diagnostics()

    def logs(self, tail: int) -> str:
        if self._container is None:
            return "(no container)"
        try:
            raw: bytes = self._container.logs(tail=tail)
            if self._renewed:  # the daemons before the last renewal are another story
                raw = raw[raw.rfind(RENEWED) :] if RENEWED in raw else raw
            return raw.decode(errors="replace")
        except docker.errors.DockerException as exc:
            return f"(log unavailable: {exc})"

    def details(self) -> dict[str, str]:
        return {"mode": self._mode, "image": self.settings.dind_image}

    def stop(self) -> None:
        self._close_tunnel()
        host = self._host
        if host is None:
            return
        if self._container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self._container.remove(force=True, v=True)
            self._container = None
        if self._volume is not None:
            with contextlib.suppress(docker.errors.NotFound):
                host.volumes.get(self._volume).remove(force=True)
            self._volume = None
        host.close()
        self._host = None


class DindTemplateMaker(DindBackend):
    """A dind daemon whose data root, once the images are streamed in, becomes a template."""

    container_role = "dind-template-maker"
    renewable = False  # its data root becomes the template

    def __init__(self, context: BackendContext, plan: StorePlan) -> None:
        super().__init__(context)
        self._make_plan = plan

    def _store_plan(self, host: docker.DockerClient, image: str) -> StorePlan | None:
        return self._make_plan

    def finish(self) -> None:
        """Have the entrypoint stop dockerd and publish the data root; wait until it has."""
        container = self._container
        assert container is not None
        container.put_archive("/", file_archive([("finish", b"", 0o644)], "certs/"))
        try:
            result = container.wait(timeout=TEMPLATE_TIMEOUT)
        except Exception as exc:
            raise StartupError(
                "preload", f"the dind template was not made within {TEMPLATE_TIMEOUT:.0f} s ({exc})"
            ) from exc
        if result.get("StatusCode") != 0:
            raise StartupError(
                "preload",
                f"making the dind template failed (exit code {result.get('StatusCode')}):\n"
                + self.logs(30),
            )
