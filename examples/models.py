"""Small Triton Python-backend example models, used by the tests and the benchmark."""

from __future__ import annotations

from pathlib import Path

ADD_ONE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
"""

#: Adds ``increment`` to every element. ``increment`` lets tests tell versions apart;
#: ``delay_s`` makes every request take that long (load for autoscaling).
ADD_ONE_MODEL = """\
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            if {delay_s}:
                time.sleep({delay_s})
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = (x + {increment}).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y)]))
        return responses
"""


def write_add_one(
    repo: Path, name: str = "add_one", version: int = 1, increment: float = 1.0
) -> Path:
    """Write (or add a version to) an ``add_one`` model; return the model's directory."""
    model_dir = Path(repo) / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    (model_dir / "config.pbtxt").write_text(ADD_ONE_CONFIG.format(name=name))
    (model_dir / str(version) / "model.py").write_text(
        ADD_ONE_MODEL.format(increment=increment, delay_s=0.0)
    )
    return model_dir


def write_add_one_artifact(
    folder: Path, name: str = "add_one", increment: float = 1.0, delay_s: float = 0.0
) -> Path:
    """An ``add_one`` version as a worker agent pulls it: ``model.py`` and ``config.pbtxt``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(ADD_ONE_CONFIG.format(name=name))
    (folder / "model.py").write_text(ADD_ONE_MODEL.format(increment=increment, delay_s=delay_s))
    return folder
