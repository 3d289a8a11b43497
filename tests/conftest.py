"""Shared fixtures: a real ZooKeeper and a real Triton server, started by the tests.

- ``zookeeper`` (session): Debian's ZooKeeper as a Java process on loopback; ``stop()`` and
  ``start()`` simulate an outage (the port and data are kept).
- ``zk_root`` / ``registry`` (per test): a fresh chroot per test, so tests never see each
  other's nodes.
- ``triton`` (session): the tritonserver from the nvidia-pytriton wheel, explicit model
  control, gRPC on a free port, with an empty model repository at ``triton.model_repository``.
- ``tfs_double`` (session): the TF-Serving double (named ``double-a``) serving version 1 of
  ``DOUBLE_MODEL``: ``y = 2 * x``.
- ``tritons`` (module): Triton servers of their own for full-stack tests' workers (two, or
  as many as an indirect parametrization asks); ``procs`` (per test): the role processes a
  test started, stopped after it with their logs printed if it failed.

When a test that used ZooKeeper fails, the tail of the ZooKeeper log is printed. The run
fails if it leaves a process behind (every process the tests start carries
``MODELGATE_TEST_RUN`` in its environment; see ``_no_process_left_behind``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from deploy.local.runner import Process, stop_all
from deploy.local.zookeeper import LocalZooKeeper
from registry import Registry
from registry.processes import marked_pids, wait_while
from tests.servers.tfserving import DOUBLE_MODEL, TFServingDouble, write_double_model
from worker_agent.tritonserver import TritonServer


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


TEST_RUN_MARKER = "MODELGATE_TEST_RUN"


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Fail the run if any process a test started (ZooKeeper, Triton and its stubs, the
    roles, the TF-Serving double) still runs once every fixture has stopped its own.

    Autouse and session-scoped, so it is set up first and torn down last.
    """
    run = uuid.uuid4().hex
    os.environ[TEST_RUN_MARKER] = run  # inherited by everything the tests start
    yield

    def left_behind() -> list[str]:
        described = []
        for pid in marked_pids(TEST_RUN_MARKER, run):
            try:
                cmdline = " ".join(psutil.Process(pid).cmdline())
            except psutil.Error:
                continue
            # NOTE: multiprocessing's resource tracker (started by spawn-context pools, e.g.
            # process plugins run in this process) exits with this process, not before.
            if "multiprocessing.resource_tracker" not in cmdline:
                described.append(f"{pid}: {cmdline[:200]}")
        return described

    wait_while(lambda: bool(left_behind()), 10.0)
    if left := left_behind():
        pytest.fail("the tests left processes running:\n" + "\n".join(left))


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalZooKeeper]:
    server = LocalZooKeeper(tmp_path_factory.mktemp("zookeeper"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _print_zookeeper_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "zookeeper" not in request.fixturenames:
        return
    failed = any(
        getattr(request.node, f"rep_{when}", None) is not None
        and getattr(request.node, f"rep_{when}").failed
        for when in ("setup", "call")
    )
    if failed:
        server: LocalZooKeeper = request.getfixturevalue("zookeeper")
        print(f"\n----- ZooKeeper log ({server.log_path}) -----\n{server.log_tail()}")


@pytest.fixture
def zk_root(zookeeper: LocalZooKeeper) -> str:
    """A chroot of this test's own."""
    return f"/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def registry(zookeeper: LocalZooKeeper, zk_root: str) -> Iterator[Registry]:
    reg = Registry(zookeeper.hosts, zk_root, connect_timeout=10).start()
    yield reg
    reg.stop()


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonServer]:
    workdir: Path = tmp_path_factory.mktemp("triton")
    server = TritonServer(workdir / "models", workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tfs_double(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TFServingDouble]:
    base = tmp_path_factory.mktemp("double") / DOUBLE_MODEL
    write_double_model(base, 1, op="mul", value=2.0)
    server = TFServingDouble(name="double-a", load_delay=0.0)
    try:
        server.serve(DOUBLE_MODEL, base, 1)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tritons(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[TritonServer]]:
    """Two Triton servers, or ``request.param`` of them (``indirect`` parametrization)."""
    servers = []
    try:
        for i in range(getattr(request, "param", 2)):
            workdir = tmp_path_factory.mktemp(f"e2e-triton-{i}")
            server = TritonServer(workdir / "models", workdir)
            server.start()
            servers.append(server)
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def procs(request: pytest.FixtureRequest) -> Iterator[list[Process]]:
    """Processes started by the test: stopped after it (their logs printed if it failed)."""
    started: list[Process] = []
    yield started
    stop_all(started[::-1], grace=20)
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for proc in started:
            print(f"\n----- {proc.name} ({proc.log}) -----\n{proc.log_tail()}")
