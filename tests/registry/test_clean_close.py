"""Closing a registry on purpose is not a session loss: no warning, nothing re-created."""

from __future__ import annotations

import logging

from registry import Registry, layout
from registry.records import Gateway


def test_stop_logs_no_session_loss_and_tells_no_listener(zookeeper, zk_root, caplog):
    reg = Registry(zookeeper.hosts, zk_root).start()
    node = reg.register_ephemeral(
        layout.gateway("g1"), Gateway(gateway_id="g1", address="127.0.0.1:1", version="test")
    )
    seen: list[str] = []
    reg.add_state_listener(seen.append)
    caplog.set_level(logging.DEBUG, logger="registry")
    reg.stop()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [], [r.getMessage() for r in warnings]
    assert seen == []
    assert node.recreated == 0
    assert any("session closed" in r.getMessage() for r in caplog.records)
    with Registry(zookeeper.hosts, zk_root) as other:
        assert not other.exists(layout.gateway("g1"))  # the session really ended
