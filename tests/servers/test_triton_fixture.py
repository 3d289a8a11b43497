"""The session Triton fixture serves a real Python-backend model."""

import numpy as np
import tritonclient.grpc as triton_grpc

from examples.models import write_add_one


def test_add_one_on_real_triton(triton):
    write_add_one(triton.model_repository, "add_one_fixture")
    client = triton_grpc.InferenceServerClient(triton.address)
    client.load_model("add_one_fixture")
    assert client.is_model_ready("add_one_fixture")
    x = triton_grpc.InferInput("INPUT0", [3], "FP32")
    x.set_data_from_numpy(np.array([1, 2, 3], dtype=np.float32))
    result = client.infer("add_one_fixture", [x])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), [2, 3, 4])
    client.unload_model("add_one_fixture")
    client.close()
