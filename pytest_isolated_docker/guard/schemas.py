"""The request bodies dockerd decodes, as schemas for :mod:`.jsonread` (Engine API 1.24-1.41,
field names as the engine's Go structs spell them in JSON).

Only the shape matters here: which keys are struct fields (matched ignoring case, as Go does),
which are maps (keys are data), and which fields exist at all (a non-empty field the schema does
not know is refused: a newer engine may honour it).
"""

from __future__ import annotations

from .jsonread import ANY, ListOf, MapOf, Schema, Struct

STRINGS = ListOf(ANY)
STRING_MAP = MapOf(ANY)


def _struct(name: str, *names: str, **special: Schema) -> Struct:
    fields: dict[str, Schema] = dict.fromkeys(names, ANY)
    fields.update(special)
    return Struct(name, fields)


RESOURCE_FIELDS = [
    "CpuShares",
    "Memory",
    "NanoCpus",
    "CgroupParent",
    "BlkioWeight",
    "BlkioWeightDevice",
    "BlkioDeviceReadBps",
    "BlkioDeviceWriteBps",
    "BlkioDeviceReadIOps",
    "BlkioDeviceWriteIOps",
    "CpuPeriod",
    "CpuQuota",
    "CpuRealtimePeriod",
    "CpuRealtimeRuntime",
    "CpusetCpus",
    "CpusetMems",
    "Devices",
    "DeviceCgroupRules",
    "DeviceRequests",
    "KernelMemory",
    "KernelMemoryTCP",
    "MemoryReservation",
    "MemorySwap",
    "MemorySwappiness",
    "OomKillDisable",
    "PidsLimit",
    "Ulimits",
    "CpuCount",
    "CpuPercent",
    "IOMaximumIOps",
    "IOMaximumBandwidth",
]

MOUNT = _struct(
    "Mount",
    "Type",
    "Source",
    "Target",
    "ReadOnly",
    "Consistency",
    BindOptions=_struct("BindOptions", "Propagation", "NonRecursive", "CreateMountpoint"),
    VolumeOptions=_struct(
        "VolumeOptions",
        "NoCopy",
        "Subpath",
        Labels=STRING_MAP,
        DriverConfig=_struct("Driver", "Name", Options=STRING_MAP),
    ),
    TmpfsOptions=_struct("TmpfsOptions", "SizeBytes", "Mode", "Options"),
)

HOST_CONFIG_FIELDS = [
    "Binds",
    "ContainerIDFile",
    "NetworkMode",
    "RestartPolicy",
    "AutoRemove",
    "VolumeDriver",
    "VolumesFrom",
    "CapAdd",
    "CapDrop",
    "Capabilities",
    "CgroupnsMode",
    "Dns",
    "DnsOptions",
    "DnsSearch",
    "ExtraHosts",
    "GroupAdd",
    "IpcMode",
    "Cgroup",
    "Links",
    "OomScoreAdj",
    "PidMode",
    "Privileged",
    "PublishAllPorts",
    "ReadonlyRootfs",
    "SecurityOpt",
    "UTSMode",
    "UsernsMode",
    "ShmSize",
    "Runtime",
    "ConsoleSize",
    "Isolation",
    "MaskedPaths",
    "ReadonlyPaths",
    "Init",
    "Annotations",
]

HOST_CONFIG = _struct(
    "HostConfig",
    *HOST_CONFIG_FIELDS,
    *RESOURCE_FIELDS,
    Binds=STRINGS,
    LogConfig=_struct("LogConfig", "Type", Config=STRING_MAP),
    PortBindings=MapOf(ListOf(_struct("PortBinding", "HostIp", "HostPort"))),
    StorageOpt=STRING_MAP,
    Tmpfs=STRING_MAP,
    Sysctls=STRING_MAP,
    Annotations=STRING_MAP,
    Mounts=ListOf(MOUNT),
)

ENDPOINT_SETTINGS = _struct(
    "EndpointSettings",
    *[
        "Links",
        "Aliases",
        "NetworkID",
        "EndpointID",
        "Gateway",
        "IPAddress",
        "IPPrefixLen",
        "IPv6Gateway",
        "GlobalIPv6Address",
        "GlobalIPv6PrefixLen",
        "MacAddress",
        "DNSNames",
        "GwPriority",
    ],
    IPAMConfig=_struct("EndpointIPAMConfig", "IPv4Address", "IPv6Address", "LinkLocalIPs"),
    DriverOpts=STRING_MAP,
)

CONFIG_FIELDS = [
    "Hostname",
    "Domainname",
    "User",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "ExposedPorts",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "Env",
    "Cmd",
    "Healthcheck",
    "ArgsEscaped",
    "Image",
    "Volumes",
    "WorkingDir",
    "Entrypoint",
    "NetworkDisabled",
    "MacAddress",
    "OnBuild",
    "StopSignal",
    "StopTimeout",
    "Shell",
]

CONFIG = _struct("Config", *CONFIG_FIELDS, Labels=STRING_MAP)

#: ``POST /containers/create``: the container's configuration, ``HostConfig`` and
#: ``NetworkingConfig``. dockerd also reads host settings given at the top level (a legacy form,
#: ``ContainerConfigWrapper``'s embedded ``HostConfig``): they are in the schema so that the policy
#: can refuse them by name.
CONTAINER_CREATE = _struct(
    "ContainerCreate",
    *CONFIG_FIELDS,
    *HOST_CONFIG.fields,
    Labels=STRING_MAP,
    HostConfig=HOST_CONFIG,
    NetworkingConfig=_struct("NetworkingConfig", EndpointsConfig=MapOf(ENDPOINT_SETTINGS)),
)
#: Top-level keys of a create body that set host settings (refused: they belong in HostConfig).
TOP_LEVEL_HOST_FIELDS = frozenset(HOST_CONFIG.fields)

CONTAINER_UPDATE = _struct(
    "UpdateConfig",
    *RESOURCE_FIELDS,
    RestartPolicy=_struct("RestartPolicy", "Name", "MaximumRetryCount"),
)

EXEC_CREATE = _struct(
    "ExecConfig",
    "Container",  # sent by docker-py, ignored by the engine
    *[
        "User",
        "Privileged",
        "Tty",
        "ConsoleSize",
        "AttachStdin",
        "AttachStderr",
        "AttachStdout",
        "Detach",
        "DetachKeys",
        "Env",
        "WorkingDir",
        "Cmd",
    ],
)
EXEC_START = _struct("ExecStartCheck", "Detach", "Tty", "ConsoleSize")

NETWORK_CREATE = _struct(
    "NetworkCreateRequest",
    *[
        "Name",
        "CheckDuplicate",
        "Driver",
        "Scope",
        "EnableIPv6",
        "Internal",
        "Attachable",
        "Ingress",
        "ConfigOnly",
    ],
    IPAM=_struct(
        "IPAM",
        "Driver",
        Config=ListOf(_struct("IPAMConfig", "Subnet", "IPRange", "Gateway", "AuxiliaryAddresses")),
        Options=STRING_MAP,
    ),
    ConfigFrom=_struct("ConfigReference", "Network"),
    Options=STRING_MAP,
    Labels=STRING_MAP,
)
NETWORK_CONNECT = _struct("NetworkConnect", "Container", EndpointConfig=ENDPOINT_SETTINGS)
NETWORK_DISCONNECT = _struct("NetworkDisconnect", "Container", "Force")

VOLUME_CREATE = _struct(
    "VolumeCreateBody", "Name", "Driver", DriverOpts=STRING_MAP, Labels=STRING_MAP
)

__all__ = [
    "CONFIG",
    "CONTAINER_CREATE",
    "CONTAINER_UPDATE",
    "EXEC_CREATE",
    "EXEC_START",
    "HOST_CONFIG",
    "NETWORK_CONNECT",
    "NETWORK_CREATE",
    "NETWORK_DISCONNECT",
    "TOP_LEVEL_HOST_FIELDS",
    "VOLUME_CREATE",
]
