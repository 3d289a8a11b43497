"""A TF-Serving TEST DOUBLE: a gRPC server speaking TF-Serving's real protocol.

No ``tensorflow_model_server`` binary can be installed here, so tests run this instead. It
is built on the official ``tensorflow-serving-api`` protos and serves:

- ``tensorflow.serving.PredictionService``: Predict, GetModelMetadata (Classify, Regress and
  MultiInference answer UNIMPLEMENTED, as for a model without those signatures);
- ``tensorflow.serving.ModelService``: HandleReloadConfigRequest (replaces the whole model
  config, like the real server) and GetModelStatus.

A "model version" is a directory ``<base_path>/<version>/`` holding ``double.json``:
``{"op": "add"|"mul", "value": 1.0, "input": "x", "output": "y"}``; Predict applies the op
to the input tensor and returns it under the output name, plus a string tensor
``served_by`` naming this double (``--name``) so tests can count calls per instance.

Run: ``python -m tests.doubles.tfserving_double --port 0 --name a --ready-file PATH``; once
serving it writes ``{"pid": ..., "ports": {"grpc": <port>}}`` to PATH (see
:mod:`registry.readyfile`). It imports TensorFlow (~4 s): run it as a subprocess.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    status_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from registry import readyfile

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
START = get_model_status_pb2.ModelVersionStatus.START
LOADING = get_model_status_pb2.ModelVersionStatus.LOADING


class Models:
    """The double's model state: which versions are AVAILABLE, per the last config."""

    def __init__(self, load_delay: float) -> None:
        self.lock = threading.Lock()
        self.load_delay = load_delay
        self.config = model_server_config_pb2.ModelServerConfig()
        # (name, version) -> (state, spec or error)
        self.versions: dict[tuple[str, int], tuple[int, dict | str]] = {}
        self.reloads = 0

    def apply(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        wanted: dict[tuple[str, int], Path] = {}
        for model in config.model_config_list.config:
            policy = model.model_version_policy
            versions = list(policy.specific.versions) if policy.HasField("specific") else []
            if not versions:  # "latest" policy: the highest numbered version dir
                dirs = [int(p.name) for p in Path(model.base_path).glob("*") if p.name.isdigit()]
                versions = [max(dirs)] if dirs else []
            for v in versions:
                wanted[(model.name, v)] = Path(model.base_path) / str(v)
        with self.lock:
            self.config = config
            self.reloads += 1
            for key in list(self.versions):
                if key not in wanted:
                    del self.versions[key]
            for key, path in wanted.items():
                if key not in self.versions:
                    self.versions[key] = (LOADING, "loading")
                    threading.Thread(target=self._load, args=(key, path), daemon=True).start()

    def _load(self, key: tuple[str, int], path: Path) -> None:
        time.sleep(self.load_delay)
        spec_file = path / "double.json"
        try:
            spec: dict | str = json.loads(spec_file.read_text())
            state = AVAILABLE
        except (OSError, ValueError) as err:
            spec, state = f"could not load {spec_file}: {err}", START
        with self.lock:
            if key in self.versions:
                self.versions[key] = (state, spec)

    def resolve(self, name: str, version: int | None) -> tuple[int, dict]:
        with self.lock:
            live = {
                v: s for (n, v), (st, s) in self.versions.items() if n == name and st == AVAILABLE
            }
        # NOTE: TF-Serving's words (ServableRequest::DebugString in core/manager.h)
        if version is None and not live:
            raise LookupError(f"Servable not found for request: Latest({name})")
        if version is None:
            version = max(live)
        if version not in live:
            raise LookupError(f"Servable not found for request: Specific({name}, {version})")
        return version, live[version]  # type: ignore[return-value]


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, models: Models, name: str) -> None:
        self.models = models
        self.name = name
        self.calls = 0

    def _resolve(self, spec, context):
        version = spec.version.value if spec.HasField("version") else None
        try:
            return self.models.resolve(spec.name, version)
        except LookupError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))

    def Predict(self, request, context):
        version, spec = self._resolve(request.model_spec, context)
        self.calls += 1
        if spec["input"] not in request.inputs:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input tensor alias not found in signature: {list(request.inputs)}",
            )
        try:
            x = tf.make_ndarray(request.inputs[spec["input"]])
        except (ValueError, TypeError):  # NOTE: TF-Serving's words (predict_util.cc)
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"tensor parsing error: {spec['input']}"
            )
        y = x + spec["value"] if spec["op"] == "add" else x * spec["value"]
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.model_spec.signature_name = request.model_spec.signature_name or "serving_default"
        response.outputs[spec["output"]].CopyFrom(tf.make_tensor_proto(y.astype(x.dtype)))
        response.outputs["served_by"].CopyFrom(tf.make_tensor_proto([self.name.encode()]))
        return response

    def GetModelMetadata(self, request, context):
        from tensorflow.core.protobuf import meta_graph_pb2

        version, spec = self._resolve(request.model_spec, context)
        sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
        sig.inputs[spec["input"]].name = spec["input"] + ":0"
        sig.inputs[spec["input"]].dtype = tf.float32.as_datatype_enum
        sig.outputs[spec["output"]].name = spec["output"] + ":0"
        sig.outputs[spec["output"]].dtype = tf.float32.as_datatype_enum
        sigmap = get_model_metadata_pb2.SignatureDefMap()
        sigmap.signature_def["serving_default"].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = version
        response.metadata["signature_def"].Pack(sigmap)
        return response


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, models: Models) -> None:
        self.models = models

    def HandleReloadConfigRequest(self, request, context):
        self.models.apply(request.config)
        return model_management_pb2.ReloadConfigResponse(
            status=status_pb2.StatusProto(error_code=0)
        )

    def GetModelStatus(self, request, context):
        name = request.model_spec.name
        want = request.model_spec.version.value if request.model_spec.HasField("version") else None
        with self.models.lock:
            found = {v: st for (n, v), st in self.models.versions.items() if n == name}
        if not found:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, (state, detail) in sorted(found.items()):
            if want is not None and v != want:
                continue
            status = response.model_version_status.add(version=v, state=state)
            if state == START and isinstance(detail, str):
                status.status.error_code = 5  # NOT_FOUND
                status.status.error_message = detail
        if not response.model_version_status:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find version {want} of model {name}"
            )
        return response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--name", default="tfserving-double")
    parser.add_argument("--load-delay", type=float, default=0.2)
    parser.add_argument("--ready-file", type=Path, required=True)
    args = parser.parse_args()
    models = Models(args.load_delay)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        PredictionService(models, args.name), server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(models), server)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    readyfile.write(args.ready_file, {"grpc": port})
    try:
        server.wait_for_termination()
    except KeyboardInterrupt:
        server.stop(1)
    sys.exit(0)


if __name__ == "__main__":
    main()
