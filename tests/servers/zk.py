"""ZooKeeper session tricks for tests."""

from __future__ import annotations

import time

from kazoo.client import KazooClient

from registry import Registry


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def expire_session(registry: Registry, timeout: float = 30.0) -> None:
    """Make the server expire ``registry``'s session, then wait for its new session.

    A second client attaches to the same session id and closes it: the server ends the
    session, and the first client sees SESSION_EXPIRED (kazoo state LOST) and reconnects
    with a new session.
    """
    old = registry.session_id
    twin = KazooClient(hosts=registry.hosts, client_id=registry.kazoo.client_id)
    twin.start(timeout=10)
    twin.stop()
    twin.close()
    wait_for(
        lambda: registry.connected and registry.session_id not in (None, old),
        timeout=timeout,
        what="a new ZooKeeper session after expiry",
    )
