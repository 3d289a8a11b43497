"""The official TF-Serving Python stub (``tensorflow_serving.apis``) calling the gateway.

Run as a subprocess (it imports TensorFlow, whose descriptor pool clashes with the renamed
stubs of ``protos.tfs`` in the test process)::

    python tests/e2e/clients/tfserving_predict.py ADDRESS MODEL INPUT OUTPUT 1,2,3

Prints ``tfserving MODEL [2.0, 3.0, 4.0]``; on an RPC error prints ``error: CODE: details``
to stderr and exits 1.
"""

from __future__ import annotations

import sys

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def main() -> int:
    address, model, input_name, output_name, values = sys.argv[1:6]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    data = [float(v) for v in values.split(",")]
    request.inputs[input_name].CopyFrom(tf.make_tensor_proto(data, dtype=tf.float32))
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=30.0)
        except grpc.RpcError as err:
            print(f"error: {err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    result = tf.make_ndarray(response.outputs[output_name]).reshape(-1).tolist()
    print(f"tfserving {model} {[round(float(v), 3) for v in result]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
