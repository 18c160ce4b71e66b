"""Training throughput of the streaming path (data.in_memory_limit) against the in-memory path.

Writes 20,000 generated 28x28 grayscale PNG images (10 classes: a blurred blob whose position
is the class, on noise; about 63 MB as float32, cached under /tmp) and trains the same small
CNN on them four ways: streamed from disk with ``data.workers`` 0, 1 and 2 (``in_memory_limit``
1 MB), and loaded whole (the in-memory fast path). Samples/s is the training examples of all
epochs over the training loop's wall time (summary.json's ``wall_time_s``: epochs and their
evaluation, not the load); ``ratio`` is against the in-memory path. ``input_wait`` is the
fraction of the sampled steps' time spent waiting for data as the ``input_bound`` finding
sees it (metrics.jsonl's ``input_wait``), and ``input_bound`` whether the finding fired.

Prints one JSON line. Never asserted as a test.

    python benchmarks/streaming.py [--device cpu|cuda] [--images 20000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from babysit.config import Experiment
from babysit.run import run
from babysit.rundir import read_jsonl

CACHE = Path(tempfile.gettempdir()) / "babysit-bench-streaming"


def write_images(count: int, size: int = 28) -> Path:
    """``count`` PNGs in 10 class folders, written once (a marker file says the set is complete)."""
    from PIL import Image

    root = CACHE / f"images-{count}-{size}"
    if (root / ".complete").exists():
        return root
    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:size, :size]
    for label in range(10):
        (root / f"digit{label}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        label = i % 10
        cy = size * (0.25 + 0.5 * (label // 5)) + rng.normal(0, 1.5)
        cx = size * (0.1 + 0.2 * (label % 5)) + rng.normal(0, 1.5)
        picture = 200 * np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / 8) + rng.normal(0, 30, (size, size))
        Image.fromarray(np.clip(picture, 0, 255).astype(np.uint8), "L").save(root / f"digit{label}" / f"{i:05d}.png")
    (root / ".complete").touch()
    return root


def input_wait(path: Path) -> float | None:
    """The run's input-wait fraction as the ``input_bound`` finding sees it: each epoch's
    ``input_wait`` in metrics.jsonl weighed by its sampled steps (None when the loop logged none)."""
    epochs = [r for r in read_jsonl(path / "metrics.jsonl")
              if isinstance(r.get("input_wait"), (int, float)) and r.get("input_wait_samples")]
    samples = sum(r["input_wait_samples"] for r in epochs)
    return round(sum(r["input_wait"] * r["input_wait_samples"] for r in epochs) / samples, 4) if samples else None


def train(root: Path, out: Path, device: str, epochs: int, **data) -> dict:
    spec = Experiment(name="streaming-bench", seed=0,
                      data={"source": "folder", "path": str(root), "batch_size": 128, **data},
                      model={"kind": "cnn", "channels": [16, 32], "kernel_size": 3},
                      optimizer={"name": "adam", "lr": 0.002}, train={"epochs": epochs, "device": device})
    started = time.perf_counter()
    result = run(spec, out=out, quiet=True, report=False)
    summary = result.summary
    return {"streamed": bool(summary["data"].get("streamed")),
            "samples_per_s": round(summary["data"]["train"] * summary["epochs"] / summary["wall_time_s"], 1),
            "wall_time_s": summary["wall_time_s"], "total_s": round(time.perf_counter() - started, 2),
            "test_acc": summary.get("test_acc"), "input_wait": input_wait(result.path),
            "input_bound": any(f.id == "input_bound" for f in result.findings)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    written = time.perf_counter()
    root = write_images(args.images)
    written = time.perf_counter() - written
    runs = Path(tempfile.mkdtemp(prefix="babysit-streaming-runs-"))
    results = {"in_memory": train(root, runs / "memory", args.device, args.epochs)}
    for workers in (0, 1, 2):
        results[f"stream_workers_{workers}"] = train(root, runs / f"stream{workers}", args.device, args.epochs,
                                                     in_memory_limit="1MB", workers=workers)
    base = results["in_memory"]["samples_per_s"]
    for figures in results.values():
        figures["ratio"] = round(figures["samples_per_s"] / base, 3)
    print(json.dumps({"benchmark": "streaming", "device": args.device, "images": args.images,
                      "bytes_float32": args.images * 28 * 28 * 4, "epochs": args.epochs,
                      "write_images_s": round(written, 1), **results}))


if __name__ == "__main__":
    main()
