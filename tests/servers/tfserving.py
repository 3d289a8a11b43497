"""Start the TF-Serving test double (tests/doubles/tfserving_double.py) as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from registry.netutil import terminate

REPO = Path(__file__).resolve().parents[2]


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
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.doubles.tfserving_double",
                "--port",
                "0",
                "--name",
                name,
                "--load-delay",
                str(load_delay),
            ],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until it serves (TensorFlow import ~4 s)
        if not line.startswith("LISTENING "):
            self.proc.kill()
            raise RuntimeError(f"TF-Serving double did not start (printed {line!r})")
        self.port = int(line.split()[1])
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        terminate(self.proc)
