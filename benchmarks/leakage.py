"""The leakage search (babysit.checks.data_checks) on 50k x 10k random examples, and what the
data checks add to the preflight of the default run.

- ``big``: ``find_leakage`` on a training split of 50,000 and a test split of 10,000 random
  examples of 784 features (N(0, 1), float32, 10 random labels), as an MNIST-sized run holds
  them: hashing every example, the blockwise cosine search test -> train (5e8 products of 784
  multiply-adds), and the within-train conflict search when it is within its CPU budget (it is
  not at this size: identical conflicting examples only; on a GPU it always runs). Wall time and
  the peak memory the search adds above the data itself (resident set size on the CPU; allocated
  memory on a GPU).
- ``default``: ``data_findings`` on babysit's default data (MNIST-1D, 3,600 / 400 / 1,000
  examples of 40 features), the part of every ``babysit train``'s preflight the data checks add;
  the model checks (``babysit.checks.preflight``) timed beside it for scale. Median of 5.

Prints one JSON line. Never asserted as a test.

    python benchmarks/leakage.py [--device cpu|cuda] [--threads N] [--train 50000] [--test 10000]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

from babysit import data as data_module
from babysit.checks.data_checks import data_findings, find_leakage
from babysit.config import Experiment
from babysit.data import Split, Splits
from babysit.families.standard import STANDARD


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def big(train: int, test: int, features: int, device: str) -> dict:
    gen = torch.Generator().manual_seed(0)
    splits = Splits(train=Split(torch.randn(train, features, generator=gen), torch.randint(0, 10, (train,), generator=gen)),
                    val=None,
                    test=Split(torch.randn(test, features, generator=gen), torch.randint(0, 10, (test,), generator=gen)),
                    task="classification", num_classes=10, input_shape=(features,), target_dim=1).to(device)
    data_mib = (train + test) * features * 4 / 2**20
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = _rss_mib()
    started = time.perf_counter()
    leakage = find_leakage(splits)
    if device == "cuda":
        torch.cuda.synchronize()
        added = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        added = _rss_mib() - before
    seconds = time.perf_counter() - started
    assert leakage is not None
    return {"train": train, "test": test, "features": features, "seconds": round(seconds, 2),
            "pairs_found": len(leakage.pairs), "near_conflicts_checked": leakage.near_conflicts_checked,
            "data_mib": round(data_mib, 1), "added_peak_mib": round(added, 1),
            "memory": "cuda allocated" if device == "cuda" else "max RSS"}


def default(device: str) -> dict:
    spec = Experiment(train={"device": device})
    splits = data_module.load(spec.data).to(device)
    model, loss_fn = STANDARD.build(spec, splits)
    model = model.to(device)
    from babysit.checks.preflight import preflight
    from babysit.families.standard import preflight_inputs

    data_times, model_times = [], []
    for _ in range(5):
        started = time.perf_counter()
        data_findings(splits)
        data_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        preflight(model, loss_fn, **preflight_inputs(spec, splits))
        model_times.append(time.perf_counter() - started)
    return {"data_checks_ms": round(1000 * statistics.median(data_times), 1),
            "model_checks_ms": round(1000 * statistics.median(model_times), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--train", type=int, default=50_000)
    parser.add_argument("--test", type=int, default=10_000)
    parser.add_argument("--features", type=int, default=784)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"benchmark": "leakage", "device": args.device, "threads": torch.get_num_threads(),
                      "big": big(args.train, args.test, args.features, args.device),
                      "default_mnist1d": default(args.device)}))


if __name__ == "__main__":
    main()
