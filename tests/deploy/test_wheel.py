"""The package as users install it: an sdist built from a clean copy of the checkout, a wheel
built from that sdist (the build generates the protobuf modules), and fresh virtualenvs with
that wheel and no dev extra: the bare package runs the admin CLI, the role extras run every
role and serve a real call, and neither holds TensorFlow or grpcio-tools.

The wheel is built with the dev venv's pip and ``--no-build-isolation`` (the dev venv has
the build requirements), so the test never downloads TensorFlow; the virtualenvs get their
packages from pip's usual indexes and cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from deploy.local.zookeeper import LocalZooKeeper
from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from registry import Registry, layout
from registry.records import Gateway
from tests.gateway.conftest import ADD_ONE, load_add_one, put_model, put_route
from tests.servers.zk import wait_for
from worker_agent.tritonserver import TritonServer

REPO = Path(__file__).resolve().parents[2]
# Installing the wheel takes a while on a busy machine; this only caps a hung pip.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

# Never in a run-time install: the build requirements of the stubs.
BUILD_ONLY = ("tensorflow", "tensorflow_serving", "grpc_tools")
# What the role extras add, absent from the bare package (which has tritonclient's base for
# modelgate_client's datatype table, but not its gRPC client's extras).
ROLE_ONLY = (
    "fastapi",
    "uvicorn",
    "starlette",
    "prometheus_client",
    "pydantic_settings",
    "grpc_health",
    "grpc_reflection",
    "psutil",
)


def outside_checkout() -> dict[str, str]:
    """The environment without PYTHONPATH: a process sees only what its venv installed."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(*argv: str | Path, timeout: float = 600, **kwargs: object) -> str:
    """Run a command outside the checkout; fail with its output."""
    out = subprocess.run(
        [str(a) for a in argv],
        env=outside_checkout(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,  # type: ignore[call-overload]
    )
    assert out.returncode == 0, f"{' '.join(map(str, argv))} failed:\n{out.stdout}\n{out.stderr}"
    return str(out.stdout)


def clean_copy(dest: Path) -> Path:
    """The checkout as git sees it (tracked and new files, nothing git-ignored)."""
    if shutil.which("git") is None:
        raise AssertionError("git is needed to copy the checkout: apt-get install -y git")
    listed = run("git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", cwd=REPO)
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():  # listed but deleted in the working tree: not in a checkout
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = clean_copy(tmp_path_factory.mktemp("checkout"))
    assert not (source / "protos" / "tfs").exists()
    dist = tmp_path_factory.mktemp("dist")
    # The sdist through the project's own PEP 517 backend, as a frontend would call it.
    run(sys.executable, "-c", f"import build_backend; build_backend.build_sdist({str(dist)!r})",
        cwd=source)  # fmt: skip
    (sdist,) = dist.glob("modelgate-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert not [n for n in names if "_pb2" in n or "/protos/tfs/" in n], "generated code in sdist"
    assert any(n.endswith("protos/modelgate/v1/gateway.proto") for n in names)
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--wheel-dir", dist, sdist)  # fmt: skip
    (built,) = dist.glob("modelgate-*.whl")
    return built


def fresh_venv(path: Path, requirement: str) -> Path:
    """A virtualenv at ``path`` with ``requirement`` installed by the dev venv's pip."""
    run(sys.executable, "-m", "venv", "--without-pip", path)
    python = path / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", requirement)
    return python


def importable(python: Path, modules: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib.util, json, sys\n"
        "print(json.dumps([m for m in sys.argv[1:] if importlib.util.find_spec(m)]))"
    )
    return list(json.loads(run(python, "-c", code, *modules)))


def test_bare_package_runs_the_admin_cli_and_the_client(wheel: Path, tmp_path: Path) -> None:
    python = fresh_venv(tmp_path / "venv", str(wheel))
    usage = run(python.parent / "modelgate", "--help", cwd=tmp_path)
    assert "Admin CLI of modelgate" in usage
    code = (
        "import modelgate_client, udl, udl.package, protos.modelgate.v1.gateway_pb2_grpc;"
        "print(modelgate_client.__file__)"
    )
    assert run(python, "-c", code, cwd=tmp_path).startswith(str(tmp_path / "venv"))
    assert importable(python, BUILD_ONLY + ROLE_ONLY) == []


@pytest.fixture
def gateway_process(
    wheel: Path, tmp_path: Path, zookeeper: LocalZooKeeper, zk_root: str, registry: Registry
) -> Iterator[tuple[Path, str]]:
    """Every role's extra in one fresh virtualenv, and a gateway started from it."""
    python = fresh_venv(tmp_path / "venv", f"modelgate[gateway,worker,manager] @ {wheel.as_uri()}")
    log = tmp_path / "gateway.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [python, "-m", "gateway", "--zk", zookeeper.hosts, "--root", zk_root,
             "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
             # NOTE: the default Python workers, each with its own ZooKeeper watch: a call
             # right after the health check may reach one a few ms behind, which waits out
             # the instance grace (--instance-grace-s) rather than failing
             "--gateway-id", "gw-wheel"],
            cwd=tmp_path, env=outside_checkout(), stdout=sink, stderr=subprocess.STDOUT,
        )  # fmt: skip

    def registered() -> Gateway | None:
        if proc.poll() is not None:
            raise AssertionError(f"the installed gateway exited:\n{log.read_text()}")
        return registry.read(layout.gateway("gw-wheel"), Gateway)

    try:
        record = wait_for(registered, timeout=60, what="the installed gateway's registration")
        yield python, record.address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log.read_text()


def test_role_extras_run_every_role_and_serve_without_tensorflow(
    gateway_process: tuple[Path, str], registry: Registry, triton: TritonServer, tmp_path: Path
) -> None:
    python, address = gateway_process
    for role in ("gateway", "worker_agent", "manager_api"):
        assert f"python -m {role}" in run(python, "-m", role, "--help", cwd=tmp_path)
    assert "Admin CLI of modelgate" in run(python.parent / "modelgate", "--help", cwd=tmp_path)
    assert importable(python, BUILD_ONLY) == []
    assert importable(python, ROLE_ONLY) == list(ROLE_ONLY)

    load_add_one(triton)
    put_model(registry, ADD_ONE)
    put_route(registry, ADD_ONE, 1, "worker-a", triton.address)
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        wait_for(
            lambda: (
                health.Check(
                    health_pb2.HealthCheckRequest(service=f"model/{ADD_ONE}"), timeout=5
                ).status
                == health_pb2.HealthCheckResponse.SERVING
            ),
            what=f"{ADD_ONE} routable through the installed gateway",
        )
        # TF-Serving Predict on the Triton model: the gateway's own generated TF-Serving stubs.
        request = predict_pb2.PredictRequest()
        request.model_spec.name = ADD_ONE
        request.inputs["INPUT0"].CopyFrom(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0, 2.0])
        )
        request.inputs["INPUT0"].tensor_shape.dim.add(size=2)
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=20
        )
    assert np.frombuffer(response.outputs["OUTPUT0"].tensor_content, np.float32).tolist() == [
        2.0,
        3.0,
    ]

    # KServe ModelInfer, forwarded as bytes.
    client = triton_grpc.InferenceServerClient(address)
    try:
        x = triton_grpc.InferInput("INPUT0", [1], "FP32")
        x.set_data_from_numpy(np.array([41.0], dtype=np.float32))
        result = client.infer(ADD_ONE, [x], model_version="1", client_timeout=20)
        assert result.as_numpy("OUTPUT0").tolist() == [42.0]
    finally:
        client.close()
