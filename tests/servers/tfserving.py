"""Start the TF-Serving test double (tests/doubles/tfserving_double.py) as a subprocess."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import grpc

from deploy.local.runner import REPO, Process
from protos.tfs.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)
from tests.servers.zk import wait_for

__all__ = ["DOUBLE_MODEL", "REPO", "TFServingDouble", "write_double_model"]

#: The model of the shared ``tfs_double`` fixture (tests/conftest.py).
DOUBLE_MODEL = "dbl"
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


def write_double_model(
    base_path: Path,
    version: int,
    op: str = "add",
    value: float = 1.0,
    input_name: str = "x",
    output_name: str = "y",
) -> Path:
    """Write one version of a double model under ``base_path``; return the version dir."""
    vdir = Path(base_path) / str(version)
    vdir.mkdir(parents=True, exist_ok=True)
    spec = {"op": op, "value": value, "input": input_name, "output": output_name}
    (vdir / "double.json").write_text(json.dumps(spec))
    return vdir


class TFServingDouble:
    """A running TF-Serving double; ``address`` is its gRPC "host:port"."""

    def __init__(self, name: str = "tfserving-double", load_delay: float = 0.2) -> None:
        self.name = name
        self._workdir = tempfile.TemporaryDirectory(prefix=f"{name}-")
        cmd = [sys.executable, "-m", "tests.doubles.tfserving_double", "--port", "0",
               "--name", name, "--load-delay", str(load_delay)]  # fmt: skip
        self.process = Process(name, cmd, log=Path(self._workdir.name) / f"{name}.log").start()
        try:
            self.process.wait_ready(timeout=120)  # it imports TensorFlow (~4 s)
        except BaseException:
            self.stop()
            raise
        self.port = self.process.port("grpc")
        self.address = f"127.0.0.1:{self.port}"

    def serve(self, name: str, base_path: Path, version: int) -> None:
        """Make ``version`` of the model under ``base_path`` the double's whole config, and
        wait until it is AVAILABLE."""
        request = model_management_pb2.ReloadConfigRequest()
        cfg = request.config.model_config_list.config.add(
            name=name, base_path=str(base_path), model_platform="tensorflow"
        )
        cfg.model_version_policy.specific.versions.append(version)
        status = get_model_status_pb2.GetModelStatusRequest()
        status.model_spec.name = name
        with grpc.insecure_channel(self.address) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            stub.HandleReloadConfigRequest(request, timeout=10)
            wait_for(
                lambda: any(
                    s.state == AVAILABLE
                    for s in stub.GetModelStatus(status, timeout=5).model_version_status
                ),
                what=f"{name} AVAILABLE on the TF-Serving double",
            )

    def stop(self) -> None:
        self.process.stop()
        self._workdir.cleanup()
