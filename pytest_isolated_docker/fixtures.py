"""The public fixtures, made by the factories. Registered by the plugin after every other plugin
is loaded, so that another plugin's fixture of the same name (pytest-docker-tools defines
``docker_client`` on the host's engine) can never silently replace ours; a ``conftest.py`` still
overrides them as usual.
"""

from __future__ import annotations

from . import factories

docker_daemon = factories.docker_daemon(
    doc="""The worker's isolated Docker daemon (one per session, or per xdist worker).

    A :class:`pytest_isolated_docker.DockerDaemon`: ``.client`` (docker-py), ``.env``
    (DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, and with TLS REQUESTS_CA_BUNDLE and
    CURL_CA_BUNDLE naming a bundle with the session's CA, for subprocesses), ``.base_url``,
    ``.backend``, ``.logs()``. Started when the first test that needs it is about to run (in the
    background, while the test before it runs); stopped, with everything it made, at the end of
    the session. Objects made through it directly are not reset after each test: use it for
    module- or session-scoped fixtures, and ``docker_client`` / ``docker_env`` in tests.
    """
)

docker_test_daemon = factories.docker_test_daemon(
    "docker_daemon",
    doc="""The daemon this test uses: the worker's, or, with
    ``@pytest.mark.docker_daemon(fresh=True)`` or options such as ``backend="machine"``, a
    brand-new one of its own, stopped when the test ends. What the test made on it is removed at
    its end; what existed when it began stays.""",
)

docker_client = factories.docker_client(
    "docker_test_daemon",
    doc="A ``docker.DockerClient`` for this test's isolated daemon (closed after the test).",
)

docker_env = factories.docker_env(
    "docker_test_daemon",
    doc="""Environment variables pointing a subprocess (docker CLI, compose, docker-py based
    tools) at this test's daemon: DOCKER_HOST, DOCKER_TLS_VERIFY, DOCKER_CERT_PATH, an empty
    DOCKER_CONTEXT and, with TLS, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE naming a bundle of the
    session's CA and the CAs the environment trusted (so that requests-based tools verify the
    daemon whatever those variables said).

    A fresh copy the test may change: ``subprocess.run([...], env={**os.environ, **docker_env})``.
    ``os.environ`` of the test process is never changed.
    """,
)
