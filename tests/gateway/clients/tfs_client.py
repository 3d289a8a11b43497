"""Call a gateway with the OFFICIAL ``tensorflow_serving.apis`` stubs (imports TensorFlow).

Run as a subprocess, never imported by pytest (TensorFlow's descriptors clash with the
gateway's light stubs). Usage::

    python tests/gateway/clients/tfs_client.py HOST:PORT '<json list of calls>'

Each call: {"method": "Predict"|"GetModelMetadata", "model": str, "version": int|null,
"label": str|null, "inputs": {name: [floats]}, "metadata": [[k, v]]}. Prints one JSON list:
{"code": "OK"|<grpc code>, "details": str, "outputs": {name: list}, "version": int}.
"""

from __future__ import annotations

import json
import sys

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc


def main() -> None:
    address, calls = sys.argv[1], json.loads(sys.argv[2])
    results = []
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for call in calls:
            if call.get("method", "Predict") == "GetModelMetadata":
                request = get_model_metadata_pb2.GetModelMetadataRequest()
                request.metadata_field.append("signature_def")
            else:
                request = predict_pb2.PredictRequest()
                for name, values in call.get("inputs", {}).items():
                    request.inputs[name].CopyFrom(tf.make_tensor_proto(values, dtype=tf.float32))
            request.model_spec.name = call["model"]
            if call.get("version") is not None:
                request.model_spec.version.value = call["version"]
            if call.get("label"):
                request.model_spec.version_label = call["label"]
            method = getattr(stub, call.get("method", "Predict"))
            try:
                response = method(request, timeout=20, metadata=call.get("metadata"))
            except grpc.RpcError as err:
                results.append({"code": err.code().name, "details": err.details()})
                continue
            outputs = {}
            if call.get("method") == "GetModelMetadata":
                sigmap = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(sigmap)
                sig = sigmap.signature_def["serving_default"]
                outputs = {
                    "inputs": {k: tf.dtypes.as_dtype(v.dtype).name for k, v in sig.inputs.items()},
                    "outputs": {
                        k: tf.dtypes.as_dtype(v.dtype).name for k, v in sig.outputs.items()
                    },
                }
            for name, tensor in getattr(response, "outputs", {}).items():
                arr = tf.make_ndarray(tensor)
                outputs[name] = [x.decode() if isinstance(x, bytes) else x for x in arr.tolist()]
            results.append(
                {
                    "code": "OK",
                    "details": "",
                    "outputs": outputs,
                    "version": response.model_spec.version.value,
                }
            )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
