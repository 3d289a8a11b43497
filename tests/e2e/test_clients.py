"""Clients in Java, Node and Python against a LIVE gateway (``python -m gateway``).

One gateway subprocess per module, with real ZooKeeper, real Triton and the TF-Serving
double (session fixtures); routes are written with ``registry`` as a worker agent would:

- ``add_one_clients`` on Triton (KServe v2): ``INPUT0`` [1, 2, 3] -> ``OUTPUT0`` [2, 3, 4];
- ``dbl`` on the TF-Serving double: ``x`` [1, 2, 3] -> ``y`` [2, 4, 6];
- ``idle_clients``: a known model with no ready instance (UNAVAILABLE).

The Java and Node clients (one test each, parametrized by language) make the three calls
(KServe ``ModelInfer``, TF-Serving ``Predict``, ``modelgate.v1.Gateway/Invoke``) against
both models, so both translations of the gateway are exercised from each language. Their
toolchains come from ``examples/clients/setup.sh``; when one is missing the test fails with
that command.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc

from examples.models import write_add_one
from modelgate_client import GatewayClient, NotFoundError, RetryPolicy, UnavailableError
from registry import Registry, layout
from registry.records import Model, ModelVersion, Route
from tests.servers.gateway import GatewayProcess
from tests.servers.tfserving import DOUBLE_MODEL, TFServingDouble
from tests.servers.zk import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
CLIENTS = REPO / "examples" / "clients"
SETUP = "examples/clients/setup.sh"

ADD_ONE = "add_one_clients"
DOUBLE = DOUBLE_MODEL
IDLE = "idle_clients"


@dataclass(frozen=True)
class Case:
    """A model and the tensor names its client calls use."""

    model: str
    input: str
    output: str
    expected: str

    def lines(self) -> list[str]:
        return [
            f"{call} {self.model} {self.expected}" for call in ("kserve", "tfserving", "invoke")
        ]


CASES = [
    Case(ADD_ONE, "INPUT0", "OUTPUT0", "[2.0, 3.0, 4.0]"),
    Case(DOUBLE, "x", "y", "[2.0, 4.0, 6.0]"),
]


def _publish(registry: Registry, name: str, backend: str, address: str | None) -> None:
    registry.put(layout.model(name), Model(name=name, backend=backend))  # type: ignore[arg-type]
    registry.put(layout.version(name, 1), ModelVersion(version=1, artifact_uri=f"file:///{name}"))
    if address is not None:
        protocol = "kserve" if backend == "triton" else "tfserving"
        registry.put(
            layout.route(name, 1, "w1"),
            Route(model=name, version=1, worker_id="w1", address=address, protocol=protocol),
        )


@pytest.fixture(scope="module")
def gateway(
    zookeeper, triton, tfs_double: TFServingDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    write_add_one(triton.model_repository, ADD_ONE)
    tc = triton_grpc.InferenceServerClient(triton.address)
    tc.load_model(ADD_ONE)
    assert tc.is_model_ready(ADD_ONE)
    tc.close()

    registry = Registry(zookeeper.hosts, f"/e2e-clients-{uuid.uuid4().hex[:8]}").start()
    _publish(registry, ADD_ONE, "triton", triton.address)
    _publish(registry, DOUBLE, "tfserving", tfs_double.address)
    _publish(registry, IDLE, "triton", None)
    workdir = tmp_path_factory.mktemp("e2e-gateway")
    args = ["--zk", zookeeper.hosts, "--root", registry.root, "--gateway-id", "e2e-clients"]
    process = GatewayProcess(workdir, *args)
    try:
        process.serve()
        with GatewayClient(process.address, timeout=5.0) as client:

            def routable() -> bool:
                ready = {m.name: m.ready_instances for m in client.list_models()}
                return ready.get(ADD_ONE, 0) > 0 and ready.get(DOUBLE, 0) > 0 and IDLE in ready

            wait_for(routable, what="the gateway's routing table with both models")
        yield process
    finally:
        process.stop()
        registry.stop()


@pytest.fixture(autouse=True)
def _gateway_log_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    report = getattr(request.node, "rep_call", None)
    if "gateway" in request.fixturenames and report is not None and report.failed:
        process: GatewayProcess = request.getfixturevalue("gateway")
        print(f"\n----- gateway log (tail) -----\n{process.log_tail()}")


def _run(cmd: list[str], timeout: float, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A gRPC server whose every method never answers (until the test ends)."""
    release = threading.Event()

    def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
        release.wait(60)
        return b""

    handler = grpc.unary_unary_rpc_method_handler(hang)
    methods = {
        "inference.GRPCInferenceService": "ModelInfer",
        "tensorflow.serving.PredictionService": "Predict",
        "modelgate.v1.Gateway": "Invoke",
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    for service, method in methods.items():
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(service, {method: handler}),)
        )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}"
    release.set()
    server.stop(None)


# -- Java ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def java_client() -> list[str]:
    """Build examples/clients/java (protoc + javac; cached by make) and return its command."""
    for tool in ("make", "java", "javac", "protoc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed; run {SETUP}")
    java = CLIENTS / "java"
    (java / "build").mkdir(exist_ok=True)
    # NOTE: the build directory is shared by every checkout user; one build at a time.
    with open(java / "build" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        build = _run(["make", "-s", "-C", str(java), "build", f"PYTHON={sys.executable}"], 600)
    if build.returncode != 0:
        pytest.fail(
            f"building the Java client failed (install the toolchain with {SETUP}):\n"
            f"{build.stdout}\n{build.stderr}"
        )
    classpath = _run(["make", "-s", "-C", str(java), "print-classpath"], 60).stdout.strip()
    assert classpath, "make print-classpath printed nothing"
    return ["java", "-cp", classpath, "io.modelgate.examples.Client"]


# -- Node ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    node_dir = CLIENTS / "node"
    if shutil.which("node") is None:
        pytest.fail(f"node is not installed; run {SETUP}")
    if not (node_dir / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{node_dir}/node_modules is missing; run {SETUP} (npm ci)")
    descriptors = tmp_path_factory.mktemp("node") / "services.pb"
    export = _run([sys.executable, str(CLIENTS / "export_descriptors.py"), str(descriptors)], 120)
    assert export.returncode == 0, export.stderr
    return ["node", str(node_dir / "client.js"), "--descriptors", str(descriptors)]


# -- Java and Node: the same command-line contract -------------------------------------


@pytest.fixture(params=["java", "node"])
def client_cmd(request: pytest.FixtureRequest) -> list[str]:
    """The command of the Java or the Node example client."""
    cmd: list[str] = request.getfixturevalue(f"{request.param}_client")
    return cmd


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.model)
def test_client_calls_kserve_tfserving_and_invoke(client_cmd, gateway, case: Case) -> None:
    args = ["--address", gateway.address, "--model", case.model]
    args += ["--input", case.input, "--output", case.output, "--timeout-ms", "30000"]
    result = _run([*client_cmd, *args], 120)

    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.stdout.splitlines() == case.lines()


def test_client_exits_non_zero_with_the_grpc_code(client_cmd, gateway) -> None:
    result = _run([*client_cmd, "--address", gateway.address, "--model", "no_such_model"], 120)

    assert result.returncode == 1
    assert result.stdout == ""
    assert "NOT_FOUND" in result.stderr and "no_such_model" in result.stderr


@pytest.mark.parametrize("call", ["kserve", "tfserving", "invoke"])
def test_client_gives_every_call_a_deadline(client_cmd, silent_server, call: str) -> None:
    args = ["--address", silent_server, "--calls", call, "--timeout-ms", "500"]
    result = _run([*client_cmd, *args], 60)

    assert result.returncode == 1
    assert "DEADLINE_EXCEEDED" in result.stderr


# -- Python ----------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.model)
def test_tritonclient_unchanged_against_the_gateway(gateway, case: Case) -> None:
    client = triton_grpc.InferenceServerClient(gateway.address)
    try:
        assert client.is_model_ready(case.model)
        infer_input = triton_grpc.InferInput(case.input, [3], "FP32")
        infer_input.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
        result = client.infer(
            case.model,
            [infer_input],
            outputs=[triton_grpc.InferRequestedOutput(case.output)],
            client_timeout=30.0,
        )
    finally:
        client.close()

    out = result.as_numpy(case.output)
    assert out is not None and out.dtype == np.float32
    assert str([float(v) for v in out]) == case.expected


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.model)
def test_official_tensorflow_serving_stub_unchanged_against_the_gateway(
    gateway, case: Case
) -> None:
    script = REPO / "tests" / "e2e" / "clients" / "tfserving_predict.py"
    cmd = [sys.executable, str(script), gateway.address, case.model, case.input, case.output]
    result = _run([*cmd, "1,2,3"], 180)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == f"tfserving {case.model} {case.expected}"


def test_modelgate_client_invokes_lists_and_raises_typed_errors(gateway) -> None:
    x = np.array([[1, 2, 3]], dtype=np.float32)
    with GatewayClient(gateway.address, timeout=30.0) as client:
        add_one = client.invoke(ADD_ONE, {"INPUT0": x[0]})
        dbl = client.invoke(DOUBLE, {"x": x}, version=1)
        models = {m.name: m for m in client.list_models()}

    assert add_one.model == ADD_ONE and add_one.version == "1"
    np.testing.assert_array_equal(add_one.outputs["OUTPUT0"], [2, 3, 4])
    assert dbl.outputs["y"].shape == (1, 3)
    np.testing.assert_array_equal(dbl.outputs["y"], [[2, 4, 6]])
    assert models[ADD_ONE].backend == "triton" and models[DOUBLE].backend == "tfserving"
    assert models[ADD_ONE].ready_instances == 1 and models[IDLE].ready_instances == 0


def test_modelgate_client_error_codes_from_the_gateway(gateway) -> None:
    retry = RetryPolicy(max_attempts=3, initial_backoff=0.05, max_backoff=0.1)
    with GatewayClient(gateway.address, timeout=30.0, retry=retry) as client:
        with pytest.raises(NotFoundError, match="no_such_model") as unknown:
            client.invoke("no_such_model", {"INPUT0": np.ones(3, np.float32)})
        with pytest.raises(NotFoundError, match="7") as bad_version:
            client.invoke(ADD_ONE, {"INPUT0": np.ones(3, np.float32)}, version=7)
        with pytest.raises(UnavailableError, match=IDLE) as idle:
            client.invoke(IDLE, {"INPUT0": np.ones(3, np.float32)})

    assert unknown.value.attempts == 1 and bad_version.value.attempts == 1
    # A known model without a ready instance is UNAVAILABLE: retried, then raised.
    assert idle.value.code is grpc.StatusCode.UNAVAILABLE and idle.value.attempts == 3
