"""Errors of pytest-isolated-docker. Each message says what failed, why, and what to do."""

from __future__ import annotations


class IsolatedDockerError(Exception):
    """Base class of the plugin's errors."""


class DaemonUnavailable(IsolatedDockerError):
    """No daemon can be had for this backend on this machine (tests fail or skip with this)."""


class UnsafeBackendRefused(DaemonUnavailable):
    """The socket backend was asked for without the explicit opt-in."""


class StartupError(IsolatedDockerError):
    """A phase of a daemon's start-up failed or ran out of time.

    ``phase`` names the step (pull, create, start, ready, preload...), ``diagnostics`` carries the
    container state and log tail (or a VM's console tail).
    """

    def __init__(self, phase: str, message: str, diagnostics: str = "") -> None:
        self.phase = phase
        self.diagnostics = diagnostics
        text = f"[{phase}] {message}"
        if diagnostics:
            text += "\n" + diagnostics
        super().__init__(text)
