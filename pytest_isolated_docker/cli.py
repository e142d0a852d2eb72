"""``pytest-isolated-docker``: doctor, build-image and prune."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import docker
import docker.errors

from . import engines
from .backends import BackendContext, DeadSession, all_backends, backend_class
from .coordination import session_alive, sessions_root
from .errors import IsolatedDockerError
from .labels import Identity, new_session_id
from .reaper import reap, sweep, unproven_sessions
from .settings import BACKENDS, SettingsError, settings_from_environment


def _doctor(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_environment(os.environ)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.backend:
        settings = settings.replace(backend=args.backend)
    context = BackendContext(settings, Identity(new_session_id()))
    rows = [(name, backend_class(name).problems(context)) for name in BACKENDS]
    width = max(len(name) for name in BACKENDS) + 2
    engine = context.engine
    print(f"host engine: {engine.describe() if engine.url else engine.found_by}")
    print(f"{'backend':<{width}}{'status':<8}details")
    for name, problems in rows:
        marker = " (configured)" if name == settings.backend else ""
        status = "ok" if not problems else "NO"
        first, *rest = problems or ["ready to use" + marker]
        print(f"{name:<{width}}{status:<8}{first}{marker if problems else ''}")
        for line in rest:
            print(f"{'':<{width + 8}}{line}")
        for note in backend_class(name).notes(context):
            print(f"{'':<{width + 8}}note: {note}")
    if backend_class(settings.backend).unsafe:
        print(
            f"\nnote: the configured backend '{settings.backend}' is UNSAFE: code under test is "
            "root on this host. It runs only with --docker-allow-unsafe."
        )
    configured_problems = dict(rows)[settings.backend]
    return 0 if not configured_problems else 1


def _build_image(args: argparse.Namespace) -> int:
    from . import images

    try:
        host = engines.client(engines.resolve(), timeout=600)
        host.ping()
    except (docker.errors.DockerException, engines.EngineNotFound) as exc:
        print(f"error: the host's Docker engine does not answer ({exc})", file=sys.stderr)
        return 1
    try:
        if args.recipe == "dind":
            print(images.build_dind_image(host, quiet=args.quiet))
        else:
            print(images.build_vm_image(host, quiet=args.quiet))
    except IsolatedDockerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _prune_engines(args: argparse.Namespace) -> list[engines.Engine]:
    """The engines to sweep: ``--engine`` values, else PYTEST_DOCKER_ENGINE, else the host engine
    the docker CLI would use."""
    specs = list(args.engine or ())
    if not specs:
        specs = list(settings_from_environment(os.environ).engine)
    return [engines.named(spec) for spec in specs] or [engines.resolve()]


def _prune(args: argparse.Namespace) -> int:
    verb = "would remove" if args.dry_run else "removed"
    try:
        pool = _prune_engines(args)
    except (engines.EngineNotFound, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    removed: list[str] = []
    unproven: list[str] = []
    for engine in pool:
        client: docker.DockerClient | None = engines.client(engine, timeout=60)
        try:
            assert client is not None
            client.ping()
        except docker.errors.DockerException as exc:
            print(
                f"warning: engine {engine.describe()} unreachable, only files are swept ({exc})",
                file=sys.stderr,
            )
            client = None
        if args.session:
            directory = sessions_root() / args.session
            if directory.is_dir() and session_alive(directory):
                print(
                    f"error: session {args.session} is alive: a process on this machine holds "
                    f"{directory}. Stop that pytest run first.",
                    file=sys.stderr,
                )
                return 1
            dead = DeadSession(args.session, directory if directory.is_dir() else None, client)
            removed += reap(dead, dry_run=args.dry_run)
        else:
            removed += sweep(client, dry_run=args.dry_run)
            if client is not None:
                unproven += unproven_sessions(client)
        if args.caches and client is not None:
            for backend in all_backends():
                removed += backend.prune_caches(client, dry_run=args.dry_run)
        if client is not None:
            client.close()
    kept = [item for item in removed if item.startswith("kept: ")]
    removed = [item for item in removed if not item.startswith("kept: ")]
    for item in removed:
        print(f"{verb}: {item}")
    for item in kept:
        print(item)
    what = "sessions proven dead" + (", and unused caches" if args.caches else "")
    print(f"{len(removed)} item(s) {verb} ({what})")
    for session in dict.fromkeys(unproven):
        print(
            f"kept: session {session}: its objects come from another container or machine "
            "and no heartbeat proves it dead; if you know it is, `pytest-isolated-docker "
            f"prune --session {session}` removes them"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pytest-isolated-docker",
        description="Companion tool of the pytest-isolated-docker plugin.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    doctor = sub.add_parser(
        "doctor",
        help="Say which backends can work on this machine, why not, and what to do.",
        description="Exit status 0 when the configured backend (PYTEST_DOCKER_BACKEND or "
        "--backend, default dind) can work here.",
    )
    doctor.add_argument(
        "--backend", choices=BACKENDS, help="check this backend as the configured one"
    )
    doctor.set_defaults(run=_doctor)
    build = sub.add_parser(
        "build-image", help="Build the dind image or the VM image from recipes in the package."
    )
    build.add_argument("recipe", choices=("dind", "vm"))
    build.add_argument("-q", "--quiet", action="store_true", help="print only the result")
    build.set_defaults(run=_build_image)
    prune = sub.add_parser(
        "prune", help="Remove what dead test sessions left: labelled objects, VMs, files."
    )
    prune.add_argument("--dry-run", action="store_true", help="list, do not remove")
    prune.add_argument(
        "--engine",
        action="append",
        metavar="URL_OR_CONTEXT",
        help="sweep this engine (repeatable; default: PYTEST_DOCKER_ENGINE, else the host engine)",
    )
    prune.add_argument(
        "--session",
        metavar="ID",
        help="remove what this session left, whatever the evidence (it must not run here)",
    )
    prune.add_argument(
        "--caches",
        action="store_true",
        help="also remove what backends keep on the engine to start faster (the dind template "
        "store), unless a daemon uses it",
    )
    prune.set_defaults(run=_prune)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
