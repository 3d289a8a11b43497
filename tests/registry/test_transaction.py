"""Registry.transaction against a real ZooKeeper: all writes or none, errors naming the node."""

from __future__ import annotations

import pytest

from registry import ConflictError, NotFoundError, Registry
from registry.client import MAX_REQUEST_BYTES
from registry.errors import InvalidArgumentError
from registry.records import ModelVersion


def version(n: int, *labels: str) -> ModelVersion:
    return ModelVersion(version=n, artifact_uri=f"file:///m/{n}", labels=list(labels))


def labels(registry: Registry, path: str) -> list[str]:
    record = registry.read(path, ModelVersion)
    assert record is not None, path
    return record.labels


def test_a_transaction_writes_every_node_together(registry: Registry):
    registry.put("/t/a", version(1, "stable"))
    _, ver = registry.get("/t/a", ModelVersion)
    registry.put("/t/gone", version(9))
    registry.transaction().update("/t/a", version(1), ver).create(
        "/t/b", version(2, "stable")
    ).delete("/t/gone").commit()
    assert labels(registry, "/t/a") == []
    assert labels(registry, "/t/b") == ["stable"]
    assert not registry.exists("/t/gone")


def test_one_failing_write_leaves_nothing_written_and_names_its_node(registry: Registry):
    registry.put("/t/a", version(1, "stable"))
    _, ver = registry.get("/t/a", ModelVersion)
    registry.put("/t/a", version(1, "stable", "canary"))  # a concurrent writer
    txn = (
        registry.transaction().create("/t/b", version(2, "stable")).update("/t/a", version(1), ver)
    )
    with pytest.raises(ConflictError, match=r"/t/a changed since it was read.*nothing was written"):
        txn.commit()
    assert not registry.exists("/t/b")
    assert labels(registry, "/t/a") == ["stable", "canary"]

    with pytest.raises(ConflictError, match="/t/a already exists; nothing was written"):
        registry.transaction().create("/t/c", version(3)).create("/t/a", version(1)).commit()
    assert not registry.exists("/t/c")
    with pytest.raises(NotFoundError, match="cannot delete /t/nope: it does not exist"):
        registry.transaction().create("/t/c", version(3)).delete("/t/nope").commit()
    assert not registry.exists("/t/c")


def test_a_transaction_over_one_request_is_refused_before_it_is_sent(registry: Registry):
    txn = registry.transaction()
    big = ModelVersion(version=1, artifact_uri="file:///" + "x" * 100_000)
    for n in range(MAX_REQUEST_BYTES // 100_000 + 1):
        txn.create(f"/t/big{n}", big)
    with pytest.raises(InvalidArgumentError, match="over ZooKeeper's 1048576-byte request limit"):
        txn.commit()
    assert not registry.exists("/t/big0")
