"""Parsers of what other programs print or users type: ``docker-machine config``, mirror URLs and
a VM's console (a hung guest).

(The dind storage spec is a setting: see test_settings.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_isolated_docker.backends.machine.docker_machine import parse_config
from pytest_isolated_docker.backends.machine.qemu import guest_url
from pytest_isolated_docker.backends.machine.vm import hung_reason

MACHINE = "/tmp/pytest-isolated-docker-0/sessions/s/docker-machine-1/machines/pid-s-main-machine"

# `docker-machine config NAME`: five lines, the paths quoted.
CONFIG = f"""--tlsverify
--tlscacert="{MACHINE}/ca.pem"
--tlscert="{MACHINE}/cert.pem"
--tlskey="{MACHINE}/key.pem"
-H=tcp://192.168.99.100:2376
"""

FILES = {
    "ca.pem": Path(f"{MACHINE}/ca.pem"),
    "cert.pem": Path(f"{MACHINE}/cert.pem"),
    "key.pem": Path(f"{MACHINE}/key.pem"),
}


def test_docker_machine_config() -> None:
    assert parse_config(CONFIG) == ("tcp://192.168.99.100:2376", FILES)


def test_docker_machine_config_unquoted_and_in_any_order() -> None:
    output = (
        f"-H=tcp://10.1.2.3:2376\n--tlskey={MACHINE}/key.pem\n--tlsverify\n"
        f"--tlscert={MACHINE}/cert.pem\n--tlscacert={MACHINE}/ca.pem"
    )
    assert parse_config(output) == ("tcp://10.1.2.3:2376", FILES)


def test_docker_machine_config_takes_each_file_from_its_own_line() -> None:
    output = CONFIG.replace(f"{MACHINE}/key.pem", "/elsewhere/private.pem")
    _, files = parse_config(output)
    assert files["key.pem"] == Path("/elsewhere/private.pem")
    assert files["ca.pem"] == FILES["ca.pem"]
    assert files["cert.pem"] == FILES["cert.pem"]


@pytest.mark.parametrize("missing", ["--tlscacert", "--tlscert", "--tlskey", "-H"])
def test_docker_machine_config_missing_a_line(missing: str) -> None:
    output = "\n".join(line for line in CONFIG.splitlines() if not line.startswith(missing + "="))
    assert output != CONFIG.rstrip("\n")
    with pytest.raises(ValueError, match="unexpected `docker-machine config` output"):
        parse_config(output)


@pytest.mark.parametrize(
    "output",
    [
        "",
        "\n",
        'Error: Host does not exist: "pid-s-main-machine"',
        "--tlsverify --tlscacert --tlscert --tlskey -H",
        "DOCKER_HOST=tcp://192.168.99.100:2376",
        CONFIG.replace("=", " "),
        CONFIG.replace("-H=", "--host="),
    ],
)
def test_docker_machine_config_garbage(output: str) -> None:
    with pytest.raises(ValueError, match="unexpected `docker-machine config` output") as error:
        parse_config(output)
    assert repr(output) in str(error.value)  # the message shows what docker-machine printed


@pytest.mark.xfail(
    strict=True,
    reason="parse_config splits the output on any whitespace, so a quoted path with a space "
    "(a MACHINE_STORAGE_PATH under a TMPDIR with a space) is cut in two",
)
def test_docker_machine_config_path_with_a_space() -> None:
    output = CONFIG.replace("/tmp/", "/tmp/my dir/")
    _, files = parse_config(output)
    assert files["ca.pem"] == Path(f"{MACHINE}/ca.pem".replace("/tmp/", "/tmp/my dir/"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:5000", "http://10.0.2.2:5000"),
        ("http://localhost:5000/", "http://10.0.2.2:5000/"),
        ("http://LOCALHOST:5000/v2/", "http://10.0.2.2:5000/v2/"),
        ("http://[::1]:5000", "http://10.0.2.2:5000"),
        ("http://127.0.0.1", "http://10.0.2.2"),
        ("https://127.0.0.1:8443/path?q=1", "https://10.0.2.2:8443/path?q=1"),
    ],
)
def test_loopback_mirrors_are_rewritten_for_the_guest(url: str, expected: str) -> None:
    """QEMU's user-mode network shows the host's loopback to the guest as 10.0.2.2."""
    assert guest_url(url) == expected


@pytest.mark.parametrize(
    "url",
    [
        "https://mirror.example:443",
        "http://172.17.0.1:5000",
        "http://10.0.2.2:5000",
        "http://127.0.0.1.example:5000",
        "http://mylocalhost:5000",
    ],
)
def test_other_mirrors_are_left_as_they_are(url: str) -> None:
    assert guest_url(url) == url


# A TCG boot that hung for good (2026-11-29, CI-like load): the watchdog's reports grow.
HUNG_CONSOLE = """pytest-isolated-docker-init: [3.36] filesystems mounted
[   48.631387] watchdog: BUG: soft lockup - CPU#1 stuck for 41s! [swapper/1:0]
[   52.503334] watchdog: BUG: soft lockup - CPU#0 stuck for 48s! [modprobe:123]
[   76.631223] watchdog: BUG: soft lockup - CPU#1 stuck for 67s! [swapper/1:0]
"""


def test_a_console_with_a_long_soft_lockup_is_a_hung_guest() -> None:
    assert hung_reason(HUNG_CONSOLE) == "CPU#1 stuck for 67 s"


@pytest.mark.parametrize(
    "console",
    [
        "",
        "pytest-isolated-docker-init: [3.36] filesystems mounted\n",
        # a short stall of a busy host is reported too; the boot may go on
        "[   30.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [modprobe:123]\n",
        HUNG_CONSOLE.rsplit("\n", 2)[0],  # 41 s and 48 s only
    ],
)
def test_a_console_without_a_long_soft_lockup_is_not_a_hung_guest(console: str) -> None:
    assert hung_reason(console) is None
