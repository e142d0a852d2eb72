"""The watchdog of a pytest process: a detached process that removes what the process made when it
dies in any way, and renews the process's heartbeat on its engines while it lives (see
:mod:`.reaper` for what heartbeats prove and what a death's cleanup removes).

The watchdog runs in its own session (Ctrl-C to pytest's process group does not reach it) with a
pipe as stdin that only the pytest process holds open. When pytest dies (SIGKILL, out-of-memory, a
CI timeout), the kernel closes the pipe, the watchdog reads EOF and cleans up; a normal end writes
``done`` first.

It costs nothing until it is needed: this module imports only the standard library and the
package's labels, and the engine client (docker-py, about 0.3 s of CPU with the interpreter) is
loaded for the first heartbeat, :data:`FIRST_BEAT_DELAY` after the start, or for a cleanup. A run
that ends sooner never loads it here and never contacts an engine from here, and a run starting
its daemons does not share the CPU with its watchdogs' start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING

from .labels import PID, ROLE, SESSION, Identity

if TYPE_CHECKING:
    import docker

#: Where the watchdog finds the engines to watch (their Docker environment variables, as JSON).
ENGINES_VARIABLE = "PYTEST_ISOLATED_DOCKER_WATCHED_ENGINES"
#: Seconds from the watchdog's start to its first heartbeat; then one every HEARTBEAT_INTERVAL.
#: Until the first, a session seen from another container or machine is "not proven dead" (never
#: swept), as a session with a fresh heartbeat is.
FIRST_BEAT_DELAY = 5.0


class Watchdog:
    """Handle on the detached watchdog process of this pytest process."""

    def __init__(self, process: subprocess.Popen[bytes], pipe: IO[bytes]) -> None:
        self._process = process
        self._pipe = pipe

    @classmethod
    def start(cls, identity: Identity, environments: Sequence[Mapping[str, str]]) -> Watchdog:
        """Watch this process; ``environments`` name the engines it may put objects on."""
        read_end, write_end = os.pipe()
        args = [
            sys.executable,
            "-m",
            __name__,
            "--session",
            identity.session_id,
            "--worker",
            identity.worker,
            "--pid",
            str(os.getpid()),
        ]
        process = subprocess.Popen(
            args,
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, ENGINES_VARIABLE: json.dumps([dict(e) for e in environments])},
        )
        os.close(read_end)
        os.set_inheritable(write_end, False)
        return cls(process, os.fdopen(write_end, "wb", buffering=0))

    def dismiss(self) -> None:
        """Normal end: everything was cleaned up in-process; the watchdog removes its heartbeats
        (if it made any) and exits."""
        try:
            self._pipe.write(b"done")
            self._pipe.close()
        except OSError:
            pass
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()


def watch(identity: Identity, environments: list[dict[str, str]]) -> int:
    """The watchdog's life: heartbeats until the pipe says ``done`` or closes; then remove the
    heartbeats, or everything the dead process made."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Clients of the engines that answered, made for the first heartbeat.
    clients: list[docker.DockerClient] = []
    received = b""
    next_beat = time.monotonic() + FIRST_BEAT_DELAY
    while True:
        if time.monotonic() >= next_beat:
            # The engine machinery is imported only now: see the module's docstring.
            from . import reaper

            if not clients:  # engines that did not answer yet may answer now
                clients = [c for env in environments if (c := reaper.engine_client(env))]
            for client in clients:
                reaper.beat_quietly(client, identity)
            next_beat = time.monotonic() + reaper.HEARTBEAT_INTERVAL
        ready, _, _ = select.select([0], [], [], max(0.0, next_beat - time.monotonic()))
        if not ready:
            continue
        chunk = os.read(0, 64)
        if not chunk:
            break
        received += chunk
    if received == b"done" and not clients:
        return 0  # no heartbeat was made: nothing to remove
    from . import reaper

    if received == b"done":
        heartbeats = [f"{SESSION}={identity.session_id}", f"{PID}={identity.pid}"]
        for client in clients:
            reaper.remove_labelled(client, [*heartbeats, f"{ROLE}={reaper.HEARTBEAT_ROLE}"])
        return 0
    for client in clients:
        client.close()
    reaper.reap_process(identity.session_id, identity.pid, environments)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}")
    parser.add_argument("--session", required=True)
    parser.add_argument("--worker", required=True)
    parser.add_argument("--pid", type=int, required=True)
    args = parser.parse_args(argv)
    environments: list[dict[str, str]] = json.loads(os.environ.get(ENGINES_VARIABLE, "[]"))
    if not environments:
        from . import engines

        environments = [dict(engines.resolve().environment())]
    return watch(Identity(args.session, args.worker, args.pid), environments)


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["ENGINES_VARIABLE", "FIRST_BEAT_DELAY", "Watchdog", "main", "watch"]
