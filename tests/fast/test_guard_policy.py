"""The guard's reading rules, without an engine: canonical targets, JSON read as Go reads it,
bind paths, routing, and the body rules that need no lookup."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from pytest_isolated_docker.guard import jsonread, schemas
from pytest_isolated_docker.guard.canonical import canonical_path, parse_target
from pytest_isolated_docker.guard.engine import EngineClient
from pytest_isolated_docker.guard.ownership import Ownership
from pytest_isolated_docker.guard.policy import BindRoot, BindRules, Policy
from pytest_isolated_docker.guard.routes import Judge
from pytest_isolated_docker.guard.rules import Refused

# ---- canonical targets ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/containers/json", "/containers/json"),
        ("//containers//json", "/containers/json"),
        ("/containers/json/", "/containers/json"),
        ("/containers/./json", "/containers/json"),
        ("/images/../containers/json", "/containers/json"),
        ("/../../info", "/info"),
        ("/containers%2Fcreate", "/containers/create"),
        ("/%63ontainers/create", "/containers/create"),
        ("/containers/%2e%2e/info", "/info"),
        ("/", "/"),
    ],
)
def test_paths_are_read_as_the_engine_routes_them(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "version", "path"),
    [
        (b"/v1.41/containers/json", "1.41", "/containers/json"),
        (b"/v1.41//containers/json/", "1.41", "/containers/json"),
        (b"/containers/json", None, "/containers/json"),
        (b"/v1.24/info", "1.24", "/info"),
        (b"/version", None, "/version"),
        (b"/v1.41/../v1.41/info", "1.41", "/info"),
    ],
)
def test_the_version_prefix_is_split_off(raw: bytes, version: str | None, path: str) -> None:
    target = parse_target(raw)
    assert (target.version, target.path) == (version, path)


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        (b"/v1.23/containers/create", "old-api-version"),
        (b"/v1.12/info", "old-api-version"),
        (b"/v/info", "malformed-request"),
        (b"/v1..2/info", "malformed-request"),
        (b"/info%zz", "malformed-request"),
        (b"/info%ff", "malformed-request"),
        (b"/info%00", "malformed-request"),
        (b"/info%0a", "malformed-request"),
        (b"/info\xc3\xa9", "malformed-request"),
        (b"http://docker/info", "malformed-request"),
        (b"/info#x", "malformed-request"),
        (b"/containers/json?all=1;filters=x", "malformed-request"),
        (b"/containers/json?filters=%zz", "malformed-request"),
    ],
)
def test_unreadable_targets_are_refused(raw: bytes, rule: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_target(raw)
    assert refused.value.rule == rule


def test_the_query_is_forwarded_as_read() -> None:
    target = parse_target(b"/v1.41/containers/json?all=1&filters=%7B%22a%22%3A+1%7D&x")
    assert target.query == [("all", "1"), ("filters", '{"a": 1}'), ("x", "")]
    assert target.upstream() == "/v1.41/containers/json?all=1&filters=%7B%22a%22%3A+1%7D&x="
    assert parse_target(b"/v1.41/images/a%2Fb:1/json").upstream() == "/v1.41/images/a/b:1/json"


def test_a_repeated_parameter_is_ambiguous() -> None:
    target = parse_target(b"/containers/json?filters=a&filters=b")
    assert target.values("filters") == ["a", "b"]
    with pytest.raises(Refused, match="ambiguous-query"):
        target.value("filters")


# ---- JSON as Go reads it --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "folded"),
    [
        ("Binds", "binds"),
        ("BINDS", "binds"),
        ("Bind\u017f", "binds"),  # long s
        ("\u212aernelMemory", "kernelmemory"),  # Kelvin sign
        ("Pr\u0131vileged", "privileged"),  # dotless i (Go >= 1.21)
        ("Privil\u00e9ged", "privil\u00e9ged"),  # no ASCII fold: no match
    ],
)
def test_keys_fold_as_go_folds_them(key: str, folded: str) -> None:
    assert jsonread.fold(key) == folded


@pytest.mark.parametrize(
    "body",
    [
        b'\xef\xbb\xbf{"Image": "x"}',
        b'{"Image": "x"} {"Image": "y"}',
        b'{"StopTimeout": NaN}',
        b'{"StopTimeout": Infinity}',
        b'{"Image": "\xff"}',
        b'{"Image": "\\udc00"}',
        b'{"Image": "x",}',
        '{"Image": "x"}'.encode("utf-16"),
    ],
)
def test_json_is_read_strictly(body: bytes) -> None:
    with pytest.raises(Refused, match="ambiguous-json"):
        jsonread.load(body)


def _read(body: str, schema: jsonread.Schema = schemas.CONTAINER_CREATE) -> Any:
    return jsonread.resolve(jsonread.load(body.encode()), schema)


def test_case_variant_keys_are_canonical_fields() -> None:
    read = _read('{"image": "x", "hostconfig": {"privileged": true, "BINDS": ["/a:/b"]}}')
    assert read == {"Image": "x", "HostConfig": {"Privileged": True, "Binds": ["/a:/b"]}}


def test_repeats_that_agree_are_one_field() -> None:
    read = _read('{"HostConfig": {"Privileged": false}, "hostConfig": {"privileged": false}}')
    assert read == {"HostConfig": {"Privileged": False}}


@pytest.mark.parametrize(
    "body",
    [
        '{"HostConfig": {"Privileged": false, "privileged": true}}',
        '{"HostConfig": {"Binds": []}, "HostConfig": {"Binds": ["/:/h"]}}',
        '{"HostConfig": {"Binds": ["/tmp/x:/h"], "binds": ["/:/h"]}}',
        '{"Labels": {"a": "1", "a": "2"}}',
        '{"Healthcheck": {"Test": ["x"], "test": ["y"]}}',
    ],
)
def test_repeats_that_disagree_are_refused(body: str) -> None:
    with pytest.raises(Refused, match="ambiguous-json"):
        _read(body)


def test_map_keys_keep_their_case() -> None:
    assert _read('{"Labels": {"a": "1", "A": "2"}}') == {"Labels": {"a": "1", "A": "2"}}


def test_unknown_fields_pass_empty_and_are_refused_set() -> None:
    assert _read('{"Image": "x", "HostConfig": {"Future": null, "Later": []}}') == {
        "Image": "x",
        "HostConfig": {},
    }
    with pytest.raises(Refused, match="unknown-field") as refused:
        _read('{"HostConfig": {"Future": {"on": true}}}')
    assert "body.HostConfig.Future" in refused.value.detail


def test_the_forwarded_body_is_the_canonical_one() -> None:
    read = _read('{"hostconfig": {"binds": ["/a:/b"]}, "Bind\u017fx": null}')
    assert jsonread.dumps(read) == b'{"HostConfig":{"Binds":["/a:/b"]}}'


# ---- binds ----------------------------------------------------------------------------------


@pytest.fixture
def rules(tmp_path: Path) -> BindRules:
    (tmp_path / "rw").mkdir()
    (tmp_path / "ro").mkdir()
    (tmp_path / "rw" / "up").symlink_to(tmp_path / "ro")
    (tmp_path / "rw" / "root").symlink_to("/")
    (tmp_path / "rw" / "state").mkdir()
    return BindRules(
        [
            BindRoot(str(tmp_path / "rw"), False, "basetemp"),
            BindRoot(str(tmp_path / "ro"), True, "ro"),
        ],
        [str(tmp_path / "rw" / "state" / "engine.sock")],
    )


def test_binds_under_a_root_resolve_to_real_paths(rules: BindRules, tmp_path: Path) -> None:
    assert rules.check(f"{tmp_path}/rw/x", False, "b") == f"{tmp_path}/rw/x"
    assert rules.check(f"{tmp_path}/rw/../rw/y", False, "b") == f"{tmp_path}/rw/y"
    assert rules.check(f"{tmp_path}/rw/up", True, "b") == f"{tmp_path}/ro"


@pytest.mark.parametrize(
    ("source", "read_only", "rule"),
    [
        ("/", True, "host-bind"),
        ("{t}/rw/root", True, "host-bind"),
        ("{t}/rw/..", True, "host-bind"),
        ("{t}/rwx", True, "host-bind"),
        ("relative", True, "host-bind"),
        ("{t}/ro", False, "read-only-bind"),
        ("{t}/rw/up", False, "read-only-bind"),
        ("{t}/rw/state", True, "engine-socket"),
        ("{t}/rw", True, "engine-socket"),
    ],
)
def test_binds_elsewhere_are_refused(
    rules: BindRules, tmp_path: Path, source: str, read_only: bool, rule: str
) -> None:
    with pytest.raises(Refused) as refused:
        rules.check(source.format(t=tmp_path), read_only, "b")
    assert refused.value.rule == rule


# ---- routes and rules that need no lookup ---------------------------------------------------


def _no_engine() -> socket.socket:
    raise AssertionError("the fast tier has no engine")


@pytest.fixture
def policy(rules: BindRules) -> Policy:
    ownership = Ownership(EngineClient(_no_engine), {"owner": "me", "session": "s"}, "owner")
    return Policy(ownership, rules)


@pytest.mark.parametrize(
    ("method", "path", "rule"),
    [
        ("GET", "/swarm", "swarm"),
        ("POST", "/plugins/pull", "plugins"),
        ("POST", "/session", "buildkit"),
        ("GET", "/grpc/x", "buildkit"),
        ("POST", "/containers/json", "unknown-endpoint"),
        ("GET", "/containers/x/attach/ws", "unknown-endpoint"),
        ("PATCH", "/containers/x", "unknown-endpoint"),
        ("GET", "/", "unknown-endpoint"),
    ],
)
def test_unknown_endpoints_are_refused(policy: Policy, method: str, path: str, rule: str) -> None:
    with pytest.raises(Refused) as refused:
        Judge(policy).route(method, parse_target(path.encode()))
    assert refused.value.rule == rule


@pytest.mark.parametrize(
    ("method", "path", "captured"),
    [
        ("GET", "/v1.41/containers/abc/json", {"id": "abc"}),
        ("GET", "/images/registry:5000/a/b:1/json", {"name": "registry:5000/a/b:1"}),
        ("DELETE", "/images/a/b", {"name": "a/b"}),
        ("POST", "/exec/e1/start", {"id": "e1"}),
    ],
)
def test_routes_capture_what_they_name(
    policy: Policy, method: str, path: str, captured: dict[str, str]
) -> None:
    _, match = Judge(policy).route(method, parse_target(path.encode()))
    assert {k: v for k, v in match.groupdict().items() if v} == captured


def _create(policy: Policy, host: dict[str, Any], **top: Any) -> dict[str, Any]:
    body = {"Image": "x", "HostConfig": host, **top}
    policy.container_create(body)
    return body


@pytest.mark.parametrize(
    ("host", "rule"),
    [
        ({"Privileged": True}, "privileged"),
        ({"Privileged": 1}, "privileged"),
        ({"Binds": ["/:/host"]}, "host-bind"),
        ({"Binds": ["/:/host:ro"]}, "host-bind"),
        ({"Binds": ["a:b:c:d"]}, "malformed-bind"),
        ({"Mounts": [{"Type": "bind", "Source": "/", "Target": "/h"}]}, "host-bind"),
        ({"Mounts": [{"Type": "npipe", "Source": "x", "Target": "/h"}]}, "mount-type"),
        (
            {
                "Mounts": [
                    {
                        "Type": "volume",
                        "Target": "/h",
                        "VolumeOptions": {"DriverConfig": {"Options": {"device": "/"}}},
                    }
                ]
            },
            "volume-driver-options",
        ),
        ({"PidMode": "host"}, "host-namespace"),
        ({"IpcMode": "host"}, "host-namespace"),
        ({"UTSMode": "host"}, "host-namespace"),
        ({"UsernsMode": "host"}, "host-namespace"),
        ({"CgroupnsMode": "host"}, "host-namespace"),
        ({"Cgroup": "host"}, "host-namespace"),
        ({"NetworkMode": "host"}, "host-namespace"),
        ({"NetworkMode": "HOST"}, "host-namespace"),
        ({"Devices": [{"PathOnHost": "/dev/vda"}]}, "devices"),
        ({"DeviceCgroupRules": ["a *:* rwm"]}, "devices"),
        ({"DeviceRequests": [{"Count": -1}]}, "devices"),
        ({"CgroupParent": "/"}, "cgroup-parent"),
        ({"CapAdd": ["NET_ADMIN"]}, "cap-add"),
        ({"Capabilities": ["CAP_SYS_ADMIN"]}, "cap-add"),
        ({"SecurityOpt": ["seccomp=unconfined"]}, "security-opt"),
        ({"SecurityOpt": ["seccomp:unconfined"]}, "security-opt"),
        ({"SecurityOpt": ["apparmor=unconfined"]}, "security-opt"),
        ({"SecurityOpt": ["label=disable"]}, "security-opt"),
        ({"MaskedPaths": []}, "masked-paths"),
        ({"ReadonlyPaths": []}, "masked-paths"),
        ({"Sysctls": {"kernel.core_pattern": "|x"}}, "sysctl"),
        ({"Runtime": "kata"}, "runtime"),
        ({"StorageOpt": {"size": "1G"}}, "storage-opt"),
        ({"LogConfig": {"Type": "syslog"}}, "log-driver"),
        ({"VolumeDriver": "sshfs"}, "volume-driver"),
        ({"OomScoreAdj": -1000}, "oom-score"),
        ({"PublishAllPorts": True}, "publish-all"),
        ({"PortBindings": {"80/tcp": [{"HostIp": "0.0.0.0"}]}}, "port-not-loopback"),
        ({"PortBindings": {"80/tcp": [{"HostIp": "::"}]}}, "port-not-loopback"),
        ({"Annotations": {"io.kubernetes.cri-o.Devices": "/dev/vda"}}, "annotations"),
    ],
)
def test_host_settings_that_reach_the_host_are_refused(
    policy: Policy, host: dict[str, Any], rule: str
) -> None:
    with pytest.raises(Refused) as refused:
        _create(policy, host)
    assert refused.value.rule == rule


def test_host_settings_at_the_top_level_are_refused(policy: Policy) -> None:
    with pytest.raises(Refused, match="hostconfig-at-top-level"):
        _create(policy, {}, Privileged=True)
    assert "Memory" not in _create(policy, {}, Memory=0)


def test_harmless_settings_pass_rewritten(policy: Policy, tmp_path: Path) -> None:
    body = _create(
        policy,
        {
            "Binds": [f"{tmp_path}/rw/../rw/data:/data:ro", "/anonymous", "/t:ro"],
            "Mounts": [{"Type": "tmpfs", "Target": "/tmp"}],
            "PortBindings": {
                "80/tcp": [{"HostIp": "", "HostPort": "8080"}],
                "81/tcp": [{"HostIp": "127.0.0.1"}, {"HostIp": "::1"}],
            },
            "SecurityOpt": ["no-new-privileges:true"],
            "Sysctls": {"net.ipv4.ip_forward": "1"},
            "NetworkMode": "default",
            "CapDrop": ["ALL"],
        },
        Labels={"mine": "1", "owner": "forged"},
    )
    host = body["HostConfig"]
    assert host["Binds"] == [f"{tmp_path}/rw/data:/data:ro", "/anonymous", "/t:ro"]
    assert host["PortBindings"]["80/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": "8080"}]
    assert body["Labels"] == {"mine": "1", "owner": "me", "session": "s"}


def test_volume_and_network_bodies(policy: Policy) -> None:
    with pytest.raises(Refused, match="volume-driver-options"):
        policy.volume_create({"DriverOpts": {"type": "none", "o": "bind", "device": "/"}})
    with pytest.raises(Refused, match="volume-driver"):
        policy.volume_create({"Driver": "sshfs"})
    volume: dict[str, Any] = {}
    policy.volume_create(volume)
    assert volume["Labels"]["owner"] == "me"
    for body, rule in (
        ({"Driver": "macvlan"}, "network-driver"),
        (
            {"Driver": "bridge", "Options": {"com.docker.network.bridge.name": "eth0"}},
            "network-options",
        ),
        ({"Ingress": True}, "network-driver"),
        ({"ConfigFrom": {"Network": "x"}}, "network-driver"),
    ):
        with pytest.raises(Refused) as refused:
            policy.network_create(body)
        assert refused.value.rule == rule
    with pytest.raises(Refused, match="exec-privileged"):
        policy.exec_create({"Privileged": True})
    with pytest.raises(Refused, match="devices"):
        policy.container_update({"Devices": [{"PathOnHost": "/dev/vda"}]})


def test_refusals_name_the_rule_and_what_allows_it(policy: Policy) -> None:
    with pytest.raises(Refused) as refused:
        _create(policy, {"Binds": ["/etc:/e"]})
    assert "rule 'host-bind'" in refused.value.message
    assert "--docker-guard-allow-bind" in refused.value.message
    with pytest.raises(Refused) as refused:
        _create(policy, {"Privileged": True})
    assert "--docker-backend=dind" in refused.value.message


@pytest.mark.parametrize(
    "host",
    [
        {"PortBindings": {"80/tcp": ["0.0.0.0:80"]}},
        {"Mounts": ["/:/host"]},
    ],
)
def test_bodies_of_an_unexpected_shape_fail_the_rules(policy: Policy, host: dict[str, Any]) -> None:
    # The guard turns these errors into a 'malformed-body' refusal; never into a pass.
    with pytest.raises((AttributeError, TypeError, Refused)):
        _create(policy, host)
