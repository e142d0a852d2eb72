"""The daemon a test sees: endpoint, clients, environment for subprocesses, readiness and reset."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from . import lazy
from .errors import StartupError
from .tls import CA_BUNDLE_VARIABLES, ClientTLS

if TYPE_CHECKING:
    import docker
    import docker.errors
    import docker.tls
    import requests
else:
    docker = lazy.module("docker")
    requests = lazy.module("requests")

# The API version to use before the daemon has told us its own (only unversioned calls are made).
_BOOTSTRAP_API_VERSION = "1.24"


class DaemonBackend(Protocol):
    """What a daemon needs of the backend that made it (``backends.Backend`` provides it)."""

    @property
    def backend_name(self) -> str: ...

    @property
    def unsafe(self) -> bool: ...

    @property
    def host_engine(self) -> bool: ...

    @property
    def cheap_to_replace(self) -> bool: ...

    @property
    def renewable(self) -> bool: ...

    def logs(self, tail: int) -> str: ...

    def details(self) -> Mapping[str, Any]: ...

    def owned_filters(self) -> dict[str, list[str]]: ...

    def stop(self) -> None: ...

    def leftovers(self) -> list[str]: ...


@dataclass(frozen=True)
class Endpoint:
    """How to reach a daemon: a ``tcp://`` or ``unix://`` URL and, for TCP, the client TLS files."""

    base_url: str
    tls: ClientTLS | None = None

    def env(self) -> dict[str, str]:
        """Environment for the docker CLI, compose, docker-py and friends.

        The ``DOCKER_*`` keys are always set (to "" when unused) so that merging them over
        ``os.environ`` cannot leave a stale ``DOCKER_TLS_VERIFY`` or ``DOCKER_CERT_PATH`` pointing
        the CLI elsewhere.

        With TLS, ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE`` are set too, to
        ``ca-bundle.pem`` in ``DOCKER_CERT_PATH``: the session's CA plus the CAs the environment
        trusted (the bundle ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE`` of ``os.environ`` named,
        else requests' default), made once on first use. requests lets these variables replace the
        CA that docker-py takes from ``DOCKER_CERT_PATH``, so a bundle without the session's CA
        would fail the handshake, and one without the others would cut the subprocess off from
        other HTTPS servers. Without TLS they are left out: ``os.environ``'s values stay.
        """
        env = {
            "DOCKER_HOST": self.base_url,
            "DOCKER_TLS_VERIFY": "1" if self.tls else "",
            "DOCKER_CERT_PATH": str(self.tls.cert_dir) if self.tls else "",
            "DOCKER_CONTEXT": "",
        }
        if self.tls is not None:
            bundle = str(self.tls.ca_bundle())
            env.update(dict.fromkeys(CA_BUNDLE_VARIABLES, bundle))
        return env

    def tls_config(self) -> docker.tls.TLSConfig | None:
        if self.tls is None:
            return None
        return docker.tls.TLSConfig(
            client_cert=(str(self.tls.client_cert), str(self.tls.client_key)),
            ca_cert=str(self.tls.ca_cert),
            verify=True,
        )

    def client(self, api_version: str, timeout: float = 60.0) -> docker.DockerClient:
        """A client speaking ``api_version`` (as the daemon's ``/_ping`` announced it)."""
        client = docker.DockerClient(
            base_url=self.base_url, tls=self.tls_config(), version=api_version, timeout=int(timeout)
        )
        _ignore_environment(client.api)
        return client

    @staticmethod
    def ping(api: docker.APIClient, timeout: float) -> str | None:
        """One unversioned ``/_ping`` through ``api`` (a :meth:`bootstrap_client`, kept across
        polls): the daemon's API version, or None while it is not up."""
        try:
            response = api.get(api.base_url + "/_ping", timeout=timeout)
            if response.status_code != 200:
                return None
            return response.headers.get("API-Version") or _BOOTSTRAP_API_VERSION
        except (requests.exceptions.RequestException, OSError):
            return None

    def bootstrap_client(self, timeout: float) -> docker.APIClient:
        """A low-level client for unversioned calls, before the daemon's API version is known."""
        api = docker.APIClient(
            base_url=self.base_url,
            tls=self.tls_config(),
            version=_BOOTSTRAP_API_VERSION,
            timeout=timeout,
        )
        _ignore_environment(api)
        return api


def _ignore_environment(api: docker.APIClient) -> None:
    # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's own CA, and proxies from
    # the environment apply too: either would break mutual TLS to the session's CA.
    api.trust_env = False


@contextlib.contextmanager
def phase(name: str, hint: str) -> Iterator[None]:
    """Name the step that failed, how long it ran and what to try, for any engine error in it.

    Every engine call is bounded by its client's timeout; this turns a bare timeout or API error
    into a :class:`StartupError` a user can act on.
    """
    start = time.monotonic()
    try:
        yield
    except StartupError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        waited = time.monotonic() - start
        raise StartupError(name, f"failed after {waited:.1f} s: {exc}. {hint}") from exc


#: How often :func:`wait_until_ready` asks whether the daemon can still come up, in seconds.
FAILURE_CHECK_INTERVAL = 0.1


def wait_until_ready(
    endpoint: Endpoint,
    timeout: float,
    failure: Callable[[], str | None],
    diagnostics: Callable[[], str],
) -> str:
    """Poll ``/_ping`` with a short backoff until it answers; return the daemon's API version.

    ``failure`` returns a reason when the daemon can no longer come up (its container exited, its
    VM died), so that we fail at once instead of waiting out the timeout.
    """
    start = time.monotonic()
    delay = 0.01
    checked = -FAILURE_CHECK_INTERVAL
    ping_timeout = min(2.0, max(0.2, timeout / 10))
    with contextlib.closing(endpoint.bootstrap_client(ping_timeout)) as api:
        while True:
            api_version = endpoint.ping(api, ping_timeout)
            if api_version is not None:
                return api_version
            waited = time.monotonic() - start
            reason = None
            # Asking the backend costs a call of its own (the host engine's, say): not every poll.
            if waited - checked >= FAILURE_CHECK_INTERVAL:
                checked = waited
                reason = failure()
            if reason is not None:
                raise StartupError(
                    "ready", f"the daemon stopped before answering: {reason}", diagnostics()
                )
            if waited > timeout:
                raise StartupError(
                    "ready",
                    f"no answer on {endpoint.base_url}/_ping after {waited:.1f} s "
                    "(--docker-startup-timeout). Raise the timeout on a slow machine, or read the "
                    "log below for why dockerd did not start.",
                    diagnostics(),
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.2)


@dataclass(frozen=True)
class Baseline:
    """The objects a daemon held when a test began: its reset keeps them."""

    containers: frozenset[str] = frozenset()
    networks: frozenset[str] = frozenset()
    volumes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, client: docker.DockerClient, filters: Mapping[str, list[str]]) -> Baseline:
        api = client.api
        label_filter = dict(filters)
        return cls(
            frozenset(c["Id"] for c in api.containers(all=True, quiet=True, filters=label_filter)),
            frozenset(n["Id"] for n in api.networks(filters=label_filter)),
            frozenset(v["Name"] for v in api.volumes(filters=label_filter).get("Volumes") or []),
        )


@dataclass
class ResetStats:
    """What resets removed over a daemon's life, for the terminal summary."""

    resets: int = 0
    containers: int = 0
    networks: int = 0
    volumes: int = 0
    seconds: float = 0.0

    def add(self, other: ResetStats) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    @property
    def objects(self) -> int:
        return self.containers + self.networks + self.volumes


#: What :meth:`DockerDaemon.swap` exchanges: all that says which daemon an object stands for.
_DAEMON_STATE = (
    "_backend",
    "endpoint",
    "api_version",
    "startup_seconds",
    "ready_at",
    "preload_seconds",
    "renewed",
    "_client",
    "_stopped",
    "_handed_over",
)


class DockerDaemon:
    """An isolated Docker daemon (or, for the socket backend, the host's engine).

    ``client`` is a ready ``docker.DockerClient``; ``env`` the variables a subprocess such as the
    docker CLI or compose needs to reach the same daemon; ``logs()`` the daemon's log tail.
    """

    def __init__(
        self, backend: DaemonBackend, endpoint: Endpoint, api_version: str, startup_seconds: float
    ) -> None:
        self._backend = backend
        self.endpoint = endpoint
        self.api_version = api_version
        self.startup_seconds = startup_seconds
        #: When it answered (``time.time()``): a spare answered before the test that took it.
        self.ready_at = time.time()
        self.preload_seconds = 0.0
        #: Made fresh in place of a used daemon (``lifecycle.renew_daemon``), not started anew.
        self.renewed = False
        self.reset_stats = ResetStats()
        self._client: docker.DockerClient | None = None
        self._client_lock = threading.Lock()
        self._stopped = False
        self._handed_over = False

    @property
    def backend(self) -> str:
        """The backend's name: ``dind``, ``socket`` or ``machine``."""
        return self._backend.backend_name

    @property
    def unsafe(self) -> bool:
        """True when code under test can reach the host as root (the socket backend)."""
        return self._backend.unsafe

    @property
    def on_host_engine(self) -> bool:
        """True when this "daemon" is the host's own engine behind a proxy (socket, guarded):
        the tests' containers live in the host engine, labelled as this daemon's."""
        return self._backend.host_engine

    @property
    def cheap_to_replace(self) -> bool:
        """True when a spare daemon starts faster than many containers are removed (dind)."""
        return self._backend.cheap_to_replace

    @property
    def renewable(self) -> bool:
        """True when its backend can make it fresh in place (see ``lifecycle.renew_daemon``)."""
        return self._backend.renewable

    @property
    def backend_instance(self) -> DaemonBackend:
        """The backend that made it (and stops it)."""
        return self._backend

    def hand_over(self) -> None:
        """Its backend now serves another daemon (renewed in place): this object lets go of it;
        :meth:`stop` does nothing from now on and reports no leftovers."""
        with self._client_lock:
            self._stopped = self._handed_over = True
            if self._client is not None:
                self._client.close()
                self._client = None

    @property
    def base_url(self) -> str:
        return self.endpoint.base_url

    @property
    def env(self) -> dict[str, str]:
        """A fresh copy of the environment variables that point a subprocess at this daemon."""
        return self.endpoint.env()

    @property
    def client(self) -> docker.DockerClient:
        """A ``docker.DockerClient`` for this daemon, made once and shared."""
        with self._client_lock:
            if self._client is None:
                self._client = self.endpoint.client(self.api_version)
            return self._client

    def new_client(self) -> docker.DockerClient:
        """A client of its own (connection pool included) for this daemon."""
        return self.endpoint.client(self.api_version)

    def logs(self, tail: int = 200) -> str:
        """The last ``tail`` lines of the daemon's log (a VM's console included)."""
        return self._backend.logs(tail)

    def describe(self) -> dict[str, Any]:
        """Facts for the report header and terminal summary."""
        facts: dict[str, Any] = {"backend": self.backend, "endpoint": self.base_url}
        try:
            facts["engine"] = self.client.version().get("Version", "?")
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            facts["engine"] = f"unreachable ({exc})"
        facts.update(self._backend.details())
        facts["startup_seconds"] = round(self.startup_seconds, 3)
        facts["preload_seconds"] = round(self.preload_seconds, 3)
        facts["renewed"] = self.renewed
        return facts

    def swap(self, other: DockerDaemon) -> None:
        """Stand for ``other``'s daemon from now on, and make ``other`` stand for the one this
        object stood for (for the caller to stop). Each object keeps its reset statistics."""
        with self._client_lock, other._client_lock:
            for name in _DAEMON_STATE:
                mine, theirs = getattr(self, name), getattr(other, name)
                setattr(self, name, theirs)
                setattr(other, name, mine)

    def container_count(self) -> int:
        """How many containers (running or not) the daemon holds now."""
        filters = dict(self._backend.owned_filters())
        return len(self.client.api.containers(all=True, quiet=True, filters=filters))

    def holdings(self, containers: int) -> ResetStats:
        """How many custom networks and volumes the daemon holds now, with ``containers`` (its
        :meth:`container_count`, which the caller has): what a reset with nothing to keep would
        remove."""
        api = self.client.api
        filters = self._backend.owned_filters()
        return ResetStats(
            containers=containers,
            networks=len(api.networks(filters={**filters, "type": ["custom"]})),
            volumes=len(api.volumes(filters=dict(filters)).get("Volumes") or []),
        )

    def baseline(self) -> Baseline:
        """The objects the daemon holds now (that a later :meth:`reset` keeps)."""
        return Baseline.of(self.client, self._backend.owned_filters())

    def reset(self, keep: Baseline | None = None) -> ResetStats:
        """Remove the containers, user networks and volumes this daemon's tests made, except
        those in ``keep`` (what existed when the test began).

        Images stay: they are the cache. For a shared engine (socket backend) only objects
        labelled with this worker's identity are removed.
        """
        start = time.monotonic()
        stats = remove_objects(self.client, self._backend.owned_filters(), keep)
        stats.resets = 1
        stats.seconds = time.monotonic() - start
        self.reset_stats.add(stats)
        return stats

    def stop(self) -> list[str]:
        """Stop the daemon, remove everything its backend made, and return what is left (leaks)."""
        if not self._stopped:
            self._stopped = True
            if self._client is not None:
                self._client.close()
            self._backend.stop()
        return [] if self._handed_over else self._backend.leftovers()


def remove_objects(
    client: docker.DockerClient, filters: Mapping[str, list[str]], keep: Baseline | None = None
) -> ResetStats:
    """Remove every container, custom network and volume matching ``filters`` (all when empty)
    that is not in ``keep``."""
    api = client.api
    stats = ResetStats()
    keep = keep or Baseline()
    label_filter = dict(filters)
    containers = [
        c
        for c in api.containers(all=True, quiet=True, filters=label_filter)
        if c["Id"] not in keep.containers
    ]
    if containers:
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            list(
                pool.map(
                    lambda c: _ignore_missing(api.remove_container, c["Id"], force=True, v=True),
                    containers,
                )
            )
        stats.containers = len(containers)
    networks = [
        n
        for n in api.networks(filters={**label_filter, "type": ["custom"]})
        if n["Id"] not in keep.networks
    ]
    for network in networks:
        # A network a kept container still uses stays (the engine refuses with 403).
        _ignore_missing(api.remove_network, network["Id"], also=(403,))
    stats.networks = len(networks)
    volumes = [
        v
        for v in api.volumes(filters=label_filter).get("Volumes") or []
        if v["Name"] not in keep.volumes
    ]
    for volume in volumes:
        _ignore_missing(api.remove_volume, volume["Name"], force=True)
    stats.volumes = len(volumes)
    return stats


def _ignore_missing(
    call: Callable[..., Any], *args: Any, also: tuple[int, ...] = (), **kwargs: Any
) -> None:
    try:
        call(*args, **kwargs)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as exc:
        # "removal already in progress" when two resets race on the same object.
        if exc.status_code != 409 and exc.status_code not in also:
            raise
