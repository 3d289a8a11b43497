"""The agent against a real ZooKeeper and a real Triton: assignments -> artifacts -> routes."""

from __future__ import annotations

import threading
from pathlib import Path

import tritonclient.grpc as triton_grpc

from registry import Registry, layout
from tests.servers.zk import wait_for
from tests.worker_agent.conftest import AgentFactory
from tests.worker_agent.helpers import (
    add_one_archive,
    assign,
    infer_add_one,
    metric,
    model_state,
    route,
    sha256,
    unassign,
    worker,
)
from worker_agent.tritonserver import TritonServer


def triton_ready(triton: TritonServer, model: str, version: int) -> bool:
    client = triton_grpc.InferenceServerClient(triton.address)
    try:
        return bool(client.is_model_ready(model, str(version)))
    except Exception:
        return False
    finally:
        client.close()


def test_assignment_pulls_loads_routes_then_unloads_after_the_route_is_gone(
    registry: Registry, start_agent: AgentFactory, agent_triton: TritonServer, tmp_path: Path
) -> None:
    agent = start_agent(drain_s=2.0)
    record = wait_for(lambda: worker(registry, "w1"), what="worker registration")
    assert record.backend == "triton" and record.state == "ready"
    assert record.address == agent_triton.address

    archive = add_one_archive(tmp_path, "inc", 1.0)
    assign(registry, "w1", "inc", 1, archive.as_uri(), sha256(archive))
    found = wait_for(lambda: route(registry, "inc", 1, "w1"), what="the route of inc@1")
    assert found.protocol == "kserve"
    assert infer_add_one(found.address, "inc", 1, [1.0, 2.5]) == [2.0, 3.5]
    assert model_state(registry, "w1", "inc@1") == "READY"
    vdir = agent_triton.model_repository / "inc" / "1"
    assert (vdir / "model.py").is_file()
    assert metric(agent.agent, "modelgate_worker_pulls_total", {"result": "ok"}) == 1
    assert metric(agent.agent, "modelgate_worker_pull_bytes_total", {"scheme": "file"}) > 0

    unassign(registry, "w1", "inc", 1)
    wait_for(lambda: route(registry, "inc", 1, "w1") is None, what="the route to go")
    # The route goes first; the model is still served during drain-s.
    assert triton_ready(agent_triton, "inc", 1)
    assert model_state(registry, "w1", "inc@1") == "UNLOADING"
    wait_for(lambda: not triton_ready(agent_triton, "inc", 1), what="inc@1 to unload")
    wait_for(lambda: not vdir.exists(), what="inc@1's files to go")
    wait_for(lambda: "inc@1" not in worker(registry, "w1").models, what="health entry to go")


def test_two_versions_of_one_model_are_live_at_once(
    registry: Registry, start_agent: AgentFactory, agent_triton: TritonServer, tmp_path: Path
) -> None:
    start_agent()
    v1 = add_one_archive(tmp_path, "pair", 1.0)
    v2 = add_one_archive(tmp_path, "pair", 100.0, kind="zip")
    assign(registry, "w1", "pair", 1, v1.as_uri())
    assign(registry, "w1", "pair", 2, v2.as_uri(), sha256(v2))
    r1 = wait_for(lambda: route(registry, "pair", 1, "w1"), what="route pair@1")
    r2 = wait_for(lambda: route(registry, "pair", 2, "w1"), what="route pair@2")
    wait_for(
        lambda: (
            model_state(registry, "w1", "pair@1") == "READY"
            and model_state(registry, "w1", "pair@2") == "READY"
        ),
        what="both versions READY",
    )
    assert infer_add_one(r1.address, "pair", 1, [1.0]) == [2.0]
    assert infer_add_one(r2.address, "pair", 2, [1.0]) == [101.0]
    config = (agent_triton.model_repository / "pair" / "config.pbtxt").read_text()
    assert "specific" in config and "versions: 1" in config and "versions: 2" in config


def test_rejected_artifacts_fail_in_the_worker_record_and_leave_nothing(
    registry: Registry, start_agent: AgentFactory, agent_triton: TritonServer, tmp_path: Path
) -> None:
    import tarfile

    from tests.worker_agent.helpers import file_entry, tar_with

    corrupt = tmp_path / "corrupt.tar.gz"
    good = add_one_archive(tmp_path, "x", 1.0)
    corrupt.write_bytes(good.read_bytes()[:40] + b"\0garbage" * 20)
    traversal = tar_with(
        tmp_path / "evil.tar.gz", [(file_entry("model.py"), b"x"), (file_entry("../evil.py"), b"x")]
    )
    absolute = tar_with(tmp_path / "abs.tar.gz", [(file_entry("/tmp/abs-evil.py"), b"x")])
    assert tarfile.is_tarfile(traversal)

    start_agent()
    assign(registry, "w1", "corrupt", 1, corrupt.as_uri())
    assign(registry, "w1", "badsum", 1, good.as_uri(), "0" * 64)
    assign(registry, "w1", "traversal", 1, traversal.as_uri())
    assign(registry, "w1", "absolute", 1, absolute.as_uri())
    expected = {
        "corrupt@1": "corrupt archive",
        "badsum@1": "sha256 mismatch",
        "traversal@1": "escapes the target directory",
        "absolute@1": "absolute path",
    }

    def all_failed() -> bool:
        record = worker(registry, "w1")
        return record is not None and all(
            k in record.models and record.models[k].state == "FAILED" for k in expected
        )

    wait_for(all_failed, what="every bad artifact to be FAILED")
    record = worker(registry, "w1")
    assert record is not None
    for key, message in expected.items():
        assert message in (record.models[key].error or ""), (key, record.models[key])
        model, version = layout.parse_assignment_key(key)
        assert route(registry, model, version, "w1") is None
        assert not (agent_triton.model_repository / model).exists()
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/abs-evil.py").exists()
    leftovers = [p.name for p in agent_triton.model_repository.iterdir()]
    assert not set(leftovers) & {"corrupt", "badsum", "traversal", "absolute", ".staging"}
    client = triton_grpc.InferenceServerClient(agent_triton.address)
    index = client.get_model_repository_index(as_json=True).get("models", [])
    client.close()
    assert not [m for m in index if m["name"] in {"corrupt", "badsum", "traversal", "absolute"}]


def test_a_model_that_stops_being_ready_loses_its_route_until_ready_again(
    registry: Registry, start_agent: AgentFactory, agent_triton: TritonServer, tmp_path: Path
) -> None:
    start_agent()
    archive = add_one_archive(tmp_path, "flaky", 5.0)
    assign(registry, "w1", "flaky", 1, archive.as_uri())
    wait_for(lambda: route(registry, "flaky", 1, "w1"), what="route flaky@1")

    seen: list[list[str]] = []
    changed = threading.Event()

    def on_children(children: list[str]) -> None:
        seen.append(children)
        changed.set()

    registry.watch_children(layout.version_routes("flaky", 1), on_children)
    client = triton_grpc.InferenceServerClient(agent_triton.address)
    client.unload_model("flaky")  # behind the agent's back
    client.close()
    wait_for(lambda: [] in seen, what="the route to be withdrawn")
    wait_for(lambda: seen[-1] == ["w1"], what="the route to come back")
    found = wait_for(lambda: route(registry, "flaky", 1, "w1"), what="route flaky@1")
    assert infer_add_one(found.address, "flaky", 1, [0.0]) == [5.0]
    assert model_state(registry, "w1", "flaky@1") == "READY"


def test_a_restarted_agent_adopts_models_without_pulling_or_reloading(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    first = start_agent()
    archive = add_one_archive(tmp_path, "sticky", 2.0)
    assign(registry, "w1", "sticky", 1, archive.as_uri(), sha256(archive))
    wait_for(lambda: route(registry, "sticky", 1, "w1"), what="route sticky@1")
    first.abandon()  # like a crash: the session ends, the model stays loaded
    wait_for(lambda: worker(registry, "w1") is None, what="the old session's nodes to go")

    second = start_agent()
    found = wait_for(lambda: route(registry, "sticky", 1, "w1"), what="route back")
    assert infer_add_one(found.address, "sticky", 1, [1.0]) == [3.0]
    assert metric(second.agent, "modelgate_worker_pulls_total", {"result": "ok"}) == 0
    assert metric(second.agent, "modelgate_worker_loads_total", {"result": "ok"}) == 0
    assert model_state(registry, "w1", "sticky@1") == "READY"


def test_admin_cordon_and_drain_states_and_a_wrong_backend(
    registry: Registry, start_agent: AgentFactory, agent_triton: TritonServer, tmp_path: Path
) -> None:
    from registry.records import WorkerSpec

    start_agent()
    archive = add_one_archive(tmp_path, "admin", 1.0)
    assign(registry, "w1", "admin", 1, archive.as_uri())
    assign(registry, "w1", "other", 1, archive.as_uri(), backend="tfserving")
    wait_for(lambda: route(registry, "admin", 1, "w1"), what="route admin@1")
    wait_for(lambda: model_state(registry, "w1", "other@1") == "FAILED", what="other@1 FAILED")
    record = worker(registry, "w1")
    assert record is not None
    assert "assigned for backend 'tfserving'" in (record.models["other@1"].error or "")
    assert not (agent_triton.model_repository / "other").exists()

    registry.put(layout.assignments("w1"), WorkerSpec(cordoned=True))
    wait_for(lambda: worker(registry, "w1").state == "cordoned", what="state cordoned")
    assert route(registry, "admin", 1, "w1") is not None  # cordoned: no new work, still serving

    registry.put(layout.assignments("w1"), WorkerSpec(draining=True))
    wait_for(lambda: worker(registry, "w1").state == "draining", what="state draining")
    wait_for(lambda: route(registry, "admin", 1, "w1") is None, what="routes withdrawn")
    assert triton_ready(agent_triton, "admin", 1)  # kept loaded until unassigned

    registry.put(layout.assignments("w1"), WorkerSpec())
    wait_for(lambda: worker(registry, "w1").state == "ready", what="state ready")
    wait_for(lambda: route(registry, "admin", 1, "w1"), what="route back")


def test_a_changed_artifact_for_the_same_version_is_pulled_and_reloaded(
    registry: Registry, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agent = start_agent()
    old = add_one_archive(tmp_path, "swap", 1.0)
    assign(registry, "w1", "swap", 1, old.as_uri())
    found = wait_for(lambda: route(registry, "swap", 1, "w1"), what="route swap@1")
    assert infer_add_one(found.address, "swap", 1, [0.0]) == [1.0]

    new = add_one_archive(tmp_path, "swap", 50.0, kind="zip")
    assign(registry, "w1", "swap", 1, new.as_uri(), sha256(new))

    def answers_new() -> bool:
        r = route(registry, "swap", 1, "w1")
        try:
            return r is not None and infer_add_one(r.address, "swap", 1, [0.0]) == [50.0]
        except Exception:  # the route may go between the read and the call
            return False

    wait_for(answers_new, what="the new artifact to serve")
    assert metric(agent.agent, "modelgate_worker_pulls_total", {"result": "ok"}) == 2
