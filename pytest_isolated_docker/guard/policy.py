"""Body rules: what a container, exec, network or volume made through the guard may ask for.

Each function takes a body already read as dockerd reads it (:mod:`.jsonread`), refuses what
would reach the host (a :class:`~.rules.Refused` naming the rule), and rewrites the body in place
to what is forwarded: references replaced by the full ids of own objects, bind sources by their
real paths, empty host addresses of published ports by ``127.0.0.1``, the daemon's labels added.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .jsonread import is_empty
from .ownership import SHARED_NETWORKS, Ownership
from .rules import ALLOW_BIND, Refused
from .schemas import TOP_LEVEL_HOST_FIELDS

_BIND_MODES = frozenset(
    [
        "ro",
        "rw",
        "z",
        "Z",
        "shared",
        "rshared",
        "slave",
        "rslave",
        "private",
        "rprivate",
        "nocopy",
        "consistent",
        "cached",
        "delegated",
    ]
)
_SECURITY_OPTS = frozenset(
    {"no-new-privileges", "no-new-privileges=true", "no-new-privileges:true"}
)
_SYSCTL_PREFIXES = ("net.", "kernel.shm", "kernel.msg", "kernel.sem", "fs.mqueue.")
_LOG_DRIVERS = frozenset({"", "json-file", "local", "none"})
_NETWORK_OPTIONS = frozenset(
    {
        "com.docker.network.bridge.enable_icc",
        "com.docker.network.bridge.enable_ip_masquerade",
        "com.docker.network.driver.mtu",
    }
)


@dataclass(frozen=True)
class BindRoot:
    """A host directory containers may bind-mount, and whether only read-only."""

    path: str
    read_only: bool
    origin: str


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class BindRules:
    """Which host paths may be bind-mounted: under a root, never the engine's socket or the
    plugin's state (session keys, other sessions' sockets), nor a directory holding them."""

    def __init__(self, roots: Iterable[BindRoot], forbidden: Iterable[str]) -> None:
        self.roots = [
            BindRoot(os.path.realpath(r.path), r.read_only, r.origin) for r in roots if r.path
        ]
        self.forbidden = [os.path.realpath(path) for path in forbidden if path]

    def check(self, source: str, read_only: bool, where: str) -> str:
        """The real path of an allowed bind source (refused otherwise)."""
        if not source.startswith("/"):
            raise Refused("host-bind", f"{where}: the bind source {source!r} is not absolute")
        real = os.path.realpath(source)
        for root in self.roots:
            if _within(real, root.path):
                if root.read_only and not read_only:
                    raise Refused(
                        "read-only-bind",
                        f"{where}: {source!r} is allowed read-only only ({root.origin})",
                        "Mount it read-only (':ro', or ReadOnly in Mounts), or allow-list it "
                        "without ':ro' (--docker-guard-allow-bind).",
                    )
                self._not_engine(source, real, where)
                return real
        allowed = ", ".join(f"{r.path} ({r.origin})" for r in self.roots) or "none"
        raise Refused(
            "host-bind",
            f"{where}: the host path {source!r} is outside the directories containers may mount "
            f"from ({allowed})",
            ALLOW_BIND,
        )

    def _not_engine(self, source: str, real: str, where: str) -> None:
        for forbidden in self.forbidden:
            if _within(forbidden, real) or _within(real, forbidden):
                raise Refused(
                    "engine-socket",
                    f"{where}: the host path {source!r} holds the engine's socket or the plugin's "
                    f"state ({forbidden}), which would hand the container the host",
                )


def _set(value: Any) -> bool:
    return not is_empty(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


class Policy:
    """The body rules, with the lookups they need (ownership) and the bind allow-list."""

    def __init__(self, ownership: Ownership, binds: BindRules) -> None:
        self.own = ownership
        self.binds = binds

    # ---- containers ---------------------------------------------------------------------------

    def container_create(self, body: dict[str, Any]) -> None:
        top = sorted(key for key in body if key in TOP_LEVEL_HOST_FIELDS and _set(body[key]))
        if top:
            raise Refused(
                "hostconfig-at-top-level",
                f"host settings at the top level of the body ({', '.join(top)}): dockerd reads "
                "them as the container's HostConfig (a legacy form); put them in HostConfig",
            )
        for key in [key for key in body if key in TOP_LEVEL_HOST_FIELDS]:
            del body[key]
        host = body.get("HostConfig")
        if host is None:
            host = body["HostConfig"] = {}
        self.host_config(host)
        networking = body.get("NetworkingConfig") or {}
        for network, endpoint in list((networking.get("EndpointsConfig") or {}).items()):
            self._network_reference(network, "NetworkingConfig.EndpointsConfig")
            self._endpoint(endpoint or {}, f"the endpoint on {network!r}")
        body["Labels"] = self.own.labelled(body.get("Labels"))

    def host_config(self, host: dict[str, Any]) -> None:
        """Judge (and rewrite) a HostConfig. The order decides which rule a refusal names:
        privileged, host paths, namespaces, devices, capabilities, confinement, the rest."""
        if _set(host.get("Privileged")):
            raise Refused("privileged", "HostConfig.Privileged gives the container the host")
        if host.get("Binds") is not None:
            host["Binds"] = [self._bind(_text(spec)) for spec in host["Binds"]]
        for index, mount in enumerate(host.get("Mounts") or []):
            self._mount(mount or {}, f"HostConfig.Mounts[{index}]")
        if host.get("VolumesFrom") is not None:
            host["VolumesFrom"] = [self._volumes_from(_text(v)) for v in host["VolumesFrom"]]
        self._namespaces(host)
        if host.get("Links") is not None:
            host["Links"] = [self._link(_text(link)) for link in host["Links"]]
        self._capabilities_and_devices(host, "HostConfig")
        for name in ("CapAdd", "Capabilities"):
            if _set(host.get(name)):
                raise Refused("cap-add", f"HostConfig.{name} adds capabilities: {host[name]}")
        for option in host.get("SecurityOpt") or []:
            if _text(option) not in _SECURITY_OPTS:
                raise Refused(
                    "security-opt",
                    f"HostConfig.SecurityOpt {option!r}: only no-new-privileges is passed "
                    "(unconfined seccomp, AppArmor or system paths, custom profiles and labels are "
                    "not)",
                )
        for name in ("MaskedPaths", "ReadonlyPaths"):
            if host.get(name) is not None:
                raise Refused(
                    "masked-paths", f"HostConfig.{name} replaces the engine's masked /proc paths"
                )
        for sysctl in host.get("Sysctls") or {}:
            if not sysctl.startswith(_SYSCTL_PREFIXES):
                raise Refused("sysctl", f"the sysctl {sysctl!r} is not namespaced to the container")
        if _text(host.get("Runtime")) not in ("", "runc"):
            raise Refused("runtime", f"the runtime {host['Runtime']!r} is not runc")
        if _text(host.get("Isolation")) not in ("", "default"):
            raise Refused("runtime", f"the isolation {host['Isolation']!r} is not the default")
        for name, rule in (("StorageOpt", "storage-opt"), ("Annotations", "annotations")):
            if _set(host.get(name)):
                raise Refused(rule, f"HostConfig.{name} is not passed: {host[name]}")
        log_type = _text((host.get("LogConfig") or {}).get("Type"))
        if log_type not in _LOG_DRIVERS:
            raise Refused(
                "log-driver",
                f"the log driver {log_type!r} writes outside the engine (json-file, local and none "
                "are passed)",
            )
        if _text(host.get("VolumeDriver")) not in ("", "local"):
            raise Refused("volume-driver", f"the volume driver {host['VolumeDriver']!r}")
        oom = host.get("OomScoreAdj")
        if isinstance(oom, (int, float)) and oom < 0:
            raise Refused("oom-score", f"a negative OomScoreAdj ({oom}) shields it from the host")
        if _set(host.get("PublishAllPorts")):
            raise Refused(
                "publish-all",
                "PublishAllPorts publishes on every host address; publish ports one by one (they "
                "go to 127.0.0.1)",
            )
        self._ports(host)

    def _capabilities_and_devices(self, resources: dict[str, Any], where: str) -> None:
        for name in ("Devices", "DeviceCgroupRules", "DeviceRequests"):
            if _set(resources.get(name)):
                raise Refused("devices", f"{where}.{name} gives host devices: {resources[name]}")
        if _set(resources.get("CgroupParent")):
            raise Refused(
                "cgroup-parent", f"{where}.CgroupParent places the container in a host cgroup"
            )

    def _namespaces(self, host: dict[str, Any]) -> None:
        allowed = {
            "PidMode": ("",),
            "IpcMode": ("", "none", "private", "shareable"),
            "UTSMode": ("",),
            "UsernsMode": ("",),
            "CgroupnsMode": ("", "private"),
            "Cgroup": ("",),
        }
        for name, plain_modes in allowed.items():
            mode = _text(host.get(name))
            if mode in plain_modes:
                continue
            if mode.startswith("container:") and name in ("PidMode", "IpcMode"):
                host[name] = "container:" + self._join(mode[len("container:") :], name)
                continue
            raise Refused(
                "host-namespace",
                f"HostConfig.{name} {mode!r} shares a namespace the guard does not give out "
                "(the host's, or another container's)",
            )
        mode = _text(host.get("NetworkMode"))
        if mode in ("", "default", "bridge", "none"):
            return
        if mode.lower() == "host":
            raise Refused("host-namespace", "HostConfig.NetworkMode 'host' is the host's network")
        if mode.startswith("container:"):
            host["NetworkMode"] = "container:" + self._join(
                mode[len("container:") :], "NetworkMode"
            )
            return
        self._network_reference(mode, "HostConfig.NetworkMode")

    def _join(self, reference: str, where: str) -> str:
        try:
            return self.own.container(reference)
        except Refused as exc:
            raise Refused(
                "join-foreign-container",
                f"HostConfig.{where} joins the container {reference!r}, not made through this "
                f"guard ({exc.detail})",
            ) from None

    def _network_reference(self, reference: str, where: str) -> None:
        if reference in SHARED_NETWORKS or reference == "default":
            return
        if reference.lower() == "host":
            raise Refused("host-namespace", f"{where} 'host' is the host's network")
        self.own.network(reference)

    def _endpoint(self, endpoint: dict[str, Any], where: str) -> None:
        if _set(endpoint.get("DriverOpts")):
            raise Refused("network-options", f"{where}: DriverOpts are not passed")
        if endpoint.get("Links") is not None:
            endpoint["Links"] = [self._link(_text(link)) for link in endpoint["Links"]]

    def _ports(self, host: dict[str, Any]) -> None:
        for port, bindings in (host.get("PortBindings") or {}).items():
            for binding in bindings or []:
                if binding is None:
                    continue
                address = _text(binding.get("HostIp"))
                if address == "":
                    binding["HostIp"] = "127.0.0.1"
                    continue
                try:
                    loopback = ipaddress.ip_address(address.strip("[]")).is_loopback
                except ValueError:
                    loopback = False
                if not loopback:
                    raise Refused(
                        "port-not-loopback",
                        f"the port {port} would be published on {address}, not on loopback",
                        "Publish it on 127.0.0.1 (or leave the host address empty: the guard "
                        "fills in 127.0.0.1).",
                    )

    def _bind(self, spec: str) -> str:
        parts = spec.split(":")
        if len(parts) == 1 or (len(parts) == 2 and _is_mode(parts[1])):
            return spec  # an anonymous volume at the target
        if len(parts) not in (2, 3) or (len(parts) == 3 and not _is_mode(parts[2])) or not parts[0]:
            raise Refused("malformed-bind", f"the bind {spec!r} is not SOURCE:TARGET[:MODE]")
        source, rest = parts[0], parts[1:]
        mode = rest[1] if len(rest) == 2 else ""
        if source.startswith("/"):
            read_only = "ro" in mode.split(",")
            real = self.binds.check(source, read_only, f"the bind {spec!r}")
            return ":".join([real, *rest])
        self.own.ensure_volume(source)
        return spec

    def _mount(self, mount: dict[str, Any], where: str) -> None:
        kind = _text(mount.get("Type"))
        source = _text(mount.get("Source"))
        if kind == "bind":
            mount["Source"] = self.binds.check(source, _set(mount.get("ReadOnly")), where)
        elif kind == "volume":
            options = mount.get("VolumeOptions") or {}
            driver = options.get("DriverConfig") or {}
            if _text(driver.get("Name")) not in ("", "local") or _set(driver.get("Options")):
                raise Refused(
                    "volume-driver-options",
                    f"{where}: a volume driver or driver options (a 'local' volume with "
                    "type/o/device options is a bind mount of any host path)",
                )
            if source:
                self.own.ensure_volume(source, options.get("Labels"))
        elif kind != "tmpfs":
            raise Refused("mount-type", f"{where}: the mount type {kind!r} is not passed")

    def _volumes_from(self, spec: str) -> str:
        reference, sep, mode = spec.partition(":")
        try:
            full = self.own.container(reference)
        except Refused as exc:
            raise Refused(
                "join-foreign-container",
                f"HostConfig.VolumesFrom {spec!r}: {exc.detail}",
            ) from None
        return full + sep + mode

    def _link(self, spec: str) -> str:
        reference, _, alias = spec.partition(":")
        try:
            full = self.own.container(reference.lstrip("/"))
        except Refused as exc:
            raise Refused("join-foreign-container", f"the link {spec!r}: {exc.detail}") from None
        return f"{full}:{alias or reference.lstrip('/')}"

    def bind_sources_still_allowed(self, info: dict[str, Any]) -> None:
        """At start: the binds of a container, as the engine will mount them, are still allowed
        (a directory swapped for a symbolic link since create is caught here)."""
        for mount in info.get("Mounts") or []:
            if mount.get("Type") == "bind":
                self.binds.check(
                    _text(mount.get("Source")), not mount.get("RW", True), "at start, a bind"
                )

    def container_update(self, body: dict[str, Any]) -> None:
        self._capabilities_and_devices(body, "the update")

    # ---- exec, networks, volumes --------------------------------------------------------------

    def exec_create(self, body: dict[str, Any]) -> None:
        if _set(body.get("Privileged")):
            raise Refused("exec-privileged", "a privileged exec has every capability of the host")

    def network_create(self, body: dict[str, Any]) -> None:
        driver = _text(body.get("Driver"))
        if driver not in ("", "bridge"):
            raise Refused(
                "network-driver",
                f"the network driver {driver!r} (only bridge networks are made: macvlan, ipvlan "
                "and overlay reach the host's interfaces or the swarm)",
            )
        ipam_driver = _text((body.get("IPAM") or {}).get("Driver"))
        if ipam_driver not in ("", "default"):
            raise Refused("network-driver", f"the IPAM driver {ipam_driver!r}")
        for name in ("Ingress", "ConfigOnly", "ConfigFrom"):
            if _set(body.get(name)):
                raise Refused("network-driver", f"{name} networks are not made")
        if _text(body.get("Scope")) not in ("", "local"):
            raise Refused("network-driver", f"the scope {body['Scope']!r} is not local")
        options = sorted(set(body.get("Options") or {}) - _NETWORK_OPTIONS)
        if options:
            raise Refused(
                "network-options",
                f"the network options {', '.join(options)} (passed: "
                f"{', '.join(sorted(_NETWORK_OPTIONS))})",
            )
        name = _text(body.get("Name"))
        if name in SHARED_NETWORKS or name == "host":
            return  # the engine refuses predefined names itself
        self._name_free("networks", name, "network")
        body["Labels"] = self.own.labelled(body.get("Labels"))

    def volume_create(self, body: dict[str, Any]) -> None:
        if _text(body.get("Driver")) not in ("", "local"):
            raise Refused("volume-driver", f"the volume driver {body['Driver']!r}")
        if _set(body.get("DriverOpts")):
            raise Refused(
                "volume-driver-options",
                "DriverOpts of a 'local' volume (type=none,o=bind,device=PATH mounts any host "
                "path)",
            )
        name = _text(body.get("Name"))
        if name:
            self.own.volume_exists(name)  # refused when another's (the engine would hand it over)
        body["Labels"] = self.own.labelled(body.get("Labels"))

    def _name_free(self, kind: str, name: str, noun: str) -> None:
        if not name:
            return
        status, info = self.own.engine.get(f"/{kind}/{quote(name, safe='')}")
        if (
            status == 200
            and isinstance(info, dict)
            and info.get("Name") == name
            and not self.own.is_own(info.get("Labels"))
        ):
            raise Refused("name-taken", f"the {noun} name {name!r} is taken by another's {noun}")

    def network_connect(self, body: dict[str, Any]) -> None:
        body["Container"] = self.own.container(_text(body.get("Container")))
        self._endpoint(body.get("EndpointConfig") or {}, "EndpointConfig")


def _is_mode(text: str) -> bool:
    return all(part in _BIND_MODES for part in text.split(","))


__all__ = ["BindRoot", "BindRules", "Policy"]
