"""When the sweep may remove a session: only on proof of death."""

from __future__ import annotations

import datetime

import pytest

from pytest_isolated_docker.reaper import HEARTBEAT_EXPIRY, Evidence, parse_engine_time, proven_dead


@pytest.mark.parametrize(
    ("evidence", "dead"),
    [
        # This runtime dir: the holders decide, whatever the heartbeat says.
        (Evidence(local=True, holders_alive=False, heartbeat_age=None), True),
        (Evidence(local=True, holders_alive=True, heartbeat_age=None), False),
        (Evidence(local=True, holders_alive=True, heartbeat_age=HEARTBEAT_EXPIRY * 10), False),
        (Evidence(local=True, holders_alive=False, heartbeat_age=1.0), True),
        # Another container or machine: only an expired heartbeat proves death.
        (Evidence(local=False, holders_alive=False, heartbeat_age=None), False),
        (Evidence(local=False, holders_alive=False, heartbeat_age=1.0), False),
        (Evidence(local=False, holders_alive=False, heartbeat_age=HEARTBEAT_EXPIRY), False),
        (Evidence(local=False, holders_alive=False, heartbeat_age=HEARTBEAT_EXPIRY + 1), True),
    ],
    ids=[
        "local-nobody-holds",
        "local-held",
        "local-held-old-heartbeat",
        "local-unheld-fresh-heartbeat",
        "other-host-no-heartbeat",
        "other-host-fresh",
        "other-host-at-expiry",
        "other-host-expired",
    ],
)
def test_proven_dead(evidence: Evidence, dead: bool) -> None:
    assert proven_dead(evidence) is dead


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "2026-11-29T13:05:01Z",
            datetime.datetime(2026, 11, 29, 13, 5, 1, tzinfo=datetime.timezone.utc),
        ),
        (
            "2026-11-29T13:05:01.123456789Z",
            datetime.datetime(2026, 11, 29, 13, 5, 1, 123456, tzinfo=datetime.timezone.utc),
        ),
        (
            "2026-11-29T14:05:01.5+01:00",
            datetime.datetime(2026, 11, 29, 13, 5, 1, 500000, tzinfo=datetime.timezone.utc),
        ),
    ],
)
def test_engine_times(text: str, expected: datetime.datetime) -> None:
    assert parse_engine_time(text) == expected


def test_engine_time_garbage_is_an_error() -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 time"):
        parse_engine_time("yesterday")
