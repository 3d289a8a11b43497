"""Train the digits classifier and write it as a Triton Python-backend model.

Data: scikit-learn's bundled 8x8 digits (1,797 images, no download). Model: a small MLP
(64 -> 64 ReLU -> 10 softmax) trained with plain numpy, seeded, ~1 s on a CPU. Output::

    <out>/digits/config.pbtxt
    <out>/digits/1/model.py       (examples/digits/model/model.py)
    <out>/digits/1/weights.npz

Run: ``python examples/digits/train.py --out /tmp/repo`` — prints the held-out accuracy.
``--archive digits.tar.gz`` also writes the version as an archive for ``modelgate models
deploy --file`` (its top level is the version directory plus ``config.pbtxt``).
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
SEED = 0


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The fixed train/held-out split (75/25, stratified). Pixels are 0..16."""
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    return x_train, x_test, y_train, y_test


def forward(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities for pixels ``x`` (shape [n, 64], values 0..16)."""
    h = np.maximum(x / 16.0 @ weights["w1"] + weights["b1"], 0.0)
    logits = h @ weights["w2"] + weights["b2"]
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def train(
    x: np.ndarray, y: np.ndarray, epochs: int = 60, hidden: int = 64
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(SEED)
    w = {
        "w1": (rng.standard_normal((64, hidden)) * np.sqrt(2 / 64)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal((hidden, 10)) * np.sqrt(2 / hidden)).astype(np.float32),
        "b2": np.zeros(10, np.float32),
    }
    velocity = {k: np.zeros_like(v) for k, v in w.items()}
    lr, momentum, batch = 0.1, 0.9, 32
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), batch):
            idx = order[start : start + batch]
            xb, yb = x[idx] / 16.0, onehot[idx]
            h_pre = xb @ w["w1"] + w["b1"]
            h = np.maximum(h_pre, 0.0)
            logits = h @ w["w2"] + w["b2"]
            logits -= logits.max(axis=1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(axis=1, keepdims=True)
            d_logits = (p - yb) / len(idx)
            grads = {"w2": h.T @ d_logits, "b2": d_logits.sum(0)}
            d_h = (d_logits @ w["w2"].T) * (h_pre > 0)
            grads["w1"] = xb.T @ d_h
            grads["b1"] = d_h.sum(0)
            for k in w:
                velocity[k] = momentum * velocity[k] - lr * grads[k]
                w[k] = (w[k] + velocity[k]).astype(np.float32)
    return w


def accuracy(weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    return float((forward(weights, x).argmax(axis=1) == y).mean())


def write_model(
    repo: Path, weights: dict[str, np.ndarray], name: str = "digits", version: int = 1
) -> Path:
    """Write the Triton model ``name`` version ``version`` into ``repo``; return its dir."""
    model_dir = Path(repo) / name
    version_dir = model_dir / str(version)
    version_dir.mkdir(parents=True, exist_ok=True)
    config = (HERE / "model" / "config.pbtxt").read_text().replace('"digits"', f'"{name}"')
    (model_dir / "config.pbtxt").write_text(config)
    shutil.copy2(HERE / "model" / "model.py", version_dir / "model.py")
    np.savez(version_dir / "weights.npz", **weights)
    return model_dir


def write_archive(weights: dict[str, np.ndarray], archive: Path) -> Path:
    """Write the model version as a .tar.gz artifact: model.py, weights.npz, config.pbtxt."""
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = write_model(Path(tmp), weights)
        with tarfile.open(archive, "w:gz") as tar:
            tar.add(model_dir / "config.pbtxt", arcname="config.pbtxt")
            for path in sorted((model_dir / "1").iterdir()):
                tar.add(path, arcname=path.name)
    return archive


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="Triton model repository")
    parser.add_argument("--archive", type=Path, help="also write the version as a .tar.gz")
    parser.add_argument("--name", default="digits")
    parser.add_argument("--version", type=int, default=1)
    args = parser.parse_args()
    x_train, x_test, y_train, y_test = split()
    weights = train(x_train, y_train)
    model_dir = write_model(args.out, weights, args.name, args.version)
    print(f"held-out accuracy {accuracy(weights, x_test, y_test):.4f} on {len(y_test)} images")
    print(f"wrote {model_dir}")
    if args.archive:
        print(f"wrote {write_archive(weights, args.archive)}")


if __name__ == "__main__":
    main()
