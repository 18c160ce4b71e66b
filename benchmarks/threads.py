"""One CPU thread against torch's default on small networks: why ``train.threads`` defaults to
1 below :data:`babysit.train.device.THREADS_PARAMS` parameters.

A 2-layer MLP of growing width on MNIST-1D-shaped inputs (40 features, 10 classes), Adam, one
training step timed at 1 thread and at torch's default (the machine's cores), alternately, for
0.5 s each, the median of 3 rounds. Prints one JSON line: per size, the microseconds per step
at each and the ratio default / 1 thread (above 1: one thread is faster).

    python benchmarks/threads.py
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from torch import nn

from babysit.train.device import THREADS_PARAMS

WIDTHS = ((64, 128), (256, 128), (512, 256), (1024, 256), (2048, 512))


def step_us(net: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, threads: int) -> float:
    torch.set_num_threads(threads)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < 0.5:
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    return (time.perf_counter() - started) / steps * 1e6


def main() -> None:
    default = torch.get_num_threads()
    rows = []
    for width, batch in WIDTHS:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        x, y = torch.randn(batch, 40), torch.randint(0, 10, (batch,))
        step_us(net, opt, x, y, 1)  # warm up
        one, many = [], []
        for _ in range(3):
            one.append(step_us(net, opt, x, y, 1))
            many.append(step_us(net, opt, x, y, default))
        rows.append({"parameters": sum(p.numel() for p in net.parameters()), "batch": batch,
                     "us_1_thread": round(statistics.median(one), 1),
                     f"us_{default}_threads": round(statistics.median(many), 1),
                     "ratio_default_over_1": round(statistics.median(many) / statistics.median(one), 2)})
    torch.set_num_threads(default)
    print(json.dumps({"benchmark": "threads", "default_threads": default, "threads_params": THREADS_PARAMS,
                      "sizes": rows}))


if __name__ == "__main__":
    main()
