"""`make demo` runs to success: the digits example on the one-machine stack, end to end."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_demo_runs_to_success(tmp_path):
    done = subprocess.run(
        [sys.executable, "deploy/local/demo.py", "--any-ports", "--run-dir", str(tmp_path / "run")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "demo succeeded" in done.stdout
    # The summary table: four kinds of calls, none failed, the burst survived the kill.
    rows = re.findall(r"^  (.+?)\s+(\d+)\s+(\d+)\s+(\d+)\s+[\d.]+\s+[\d.]+$", done.stdout, re.M)
    assert [r[0] for r in rows] == [
        "Invoke, PNG file (modelgate infer)",
        "KServe ModelInfer (tritonclient)",
        "TF-Serving Predict (translated)",
        "Invoke burst, Triton killed at 100",
    ]
    for name, total, failures, correct in rows:
        assert int(failures) == 0, name
        assert int(correct) >= 0.9 * int(total), name
    assert "killed tritonserver pid" in done.stdout
    assert 'modelgate_gateway_requests_total{code="OK",model="digits"' in done.stdout
    assert "processes left running" not in output
