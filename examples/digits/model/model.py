"""Triton Python-backend model: the digits MLP (weights.npz beside this file).

Input ``PIXELS`` FP32 [n, 64], values 0..16 (8x8 images, ink high, row-major).
Output ``PROBABILITIES`` FP32 [n, 10].
"""

from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        path = Path(args["model_repository"]) / args["model_version"] / "weights.npz"
        with np.load(path) as data:
            self.w = {k: data[k] for k in data.files}

    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "PIXELS").as_numpy()
            h = np.maximum(x / 16.0 @ self.w["w1"] + self.w["b1"], 0.0)
            logits = h @ self.w["w2"] + self.w["b2"]
            logits -= logits.max(axis=1, keepdims=True)
            e = np.exp(logits)
            p = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("PROBABILITIES", p)]))
        return responses
