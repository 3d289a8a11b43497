"""The TF-Serving double acts like TF-Serving on the wire: whole-config reload, status, Predict."""

import grpc
import numpy as np
import pytest

from protos.tfs.tensorflow.core.framework import tensor_pb2, types_pb2
from protos.tfs.tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from tests.servers.tfserving import TFServingDouble, write_double_model
from tests.servers.zk import wait_for

AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.fixture(scope="module")
def double():
    server = TFServingDouble(name="d1")
    yield server
    server.stop()


def _reload(channel, models):
    request = model_management_pb2.ReloadConfigRequest()
    for name, base, versions in models:
        cfg = request.config.model_config_list.config.add(
            name=name, base_path=str(base), model_platform="tensorflow"
        )
        cfg.model_version_policy.specific.versions.extend(versions)
    model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=5)


def _status(channel, name):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            request, timeout=5
        )
    except grpc.RpcError as err:
        return err.code()
    return {s.version: s.state for s in response.model_version_status}


def test_reload_status_and_predict(double, tmp_path):
    write_double_model(tmp_path / "half", 1, op="mul", value=0.5)
    write_double_model(tmp_path / "half", 2, op="add", value=2.0)
    with grpc.insecure_channel(double.address) as channel:
        _reload(channel, [("half", tmp_path / "half", [1, 2])])
        wait_for(
            lambda: _status(channel, "half") == {1: AVAILABLE, 2: AVAILABLE},
            what="both versions AVAILABLE",
        )

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "half"
        request.model_spec.version.value = 1
        request.inputs["x"].CopyFrom(
            tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[2.0, 4.0])
        )
        request.inputs["x"].tensor_shape.dim.add(size=2)
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=5
        )
        y = np.frombuffer(response.outputs["y"].tensor_content, dtype=np.float32)
        np.testing.assert_array_equal(y, [1.0, 2.0])
        assert response.outputs["served_by"].string_val == [b"d1"]

        # A reload replaces the whole config: version 1 is gone afterwards.
        _reload(channel, [("half", tmp_path / "half", [2])])
        wait_for(lambda: _status(channel, "half") == {2: AVAILABLE}, what="only version 2 left")
        with pytest.raises(grpc.RpcError) as err:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        _reload(channel, [])
        assert _status(channel, "half") == grpc.StatusCode.NOT_FOUND
