"""The live monitors' cost: the same training run with monitors every 10 steps and without.

Both runs are babysit's loop with the callbacks ``babysit train`` uses (see
loop_overhead.py, whose models and data this reuses); the monitored one adds
:class:`babysit.train.callbacks.MonitorCallback` (``checks.every: 10``: activation,
gradient and update statistics, histograms every 10th sample, the explosion guard,
``monitors.jsonl``, and the same numbers as TensorBoard scalars and histograms). Timed
alternately (ABBA), the figure is the median of the ratios of neighbouring runs. Also
times the preflight of ``examples/mnist1d-mlp.yaml``.

Also the cost of each opt-in check (issue 15), as the ratio of whole ``babysit.run`` runs with
the check on and off (monitors on in both, preflight and report off; ABBA, median of neighbouring
ratios): ``checks.noise_scale`` and ``checks.sharpness_every`` (10 and 100) on
``examples/mnist1d-mlp.yaml``, ``checks.transformer`` on ``examples/text-gpt.yaml``. They have no
target: they are opt-in because they cost more than the monitors' budget, and each finding's
advice says so.

Prints one JSON line. Targets: ratio <= 1.10 for the MNIST-1D MLP and CNN, preflight <= 5 s
(timed warm, and cold in a fresh process).

    python benchmarks/monitor_overhead.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from babysit import config, data  # noqa: E402
from babysit.checks.preflight import preflight  # noqa: E402
from babysit.families.standard import preflight_inputs  # noqa: E402
from babysit.run import prepare  # noqa: E402
from babysit.train.callbacks import MonitorCallback  # noqa: E402
from loop_overhead import babysit_loop, make_spec  # noqa: E402

REPEATS = {"mlp": 12, "cnn": 10}
OPT_IN_REPEATS = 4
# (example, epochs, overrides of the check): the opt-in checks, each against the same run without it
OPT_IN = {
    "noise_scale": ("mnist1d-mlp.yaml", 8, {"checks": {"noise_scale": True}}),
    "sharpness_every_100": ("mnist1d-mlp.yaml", 8, {"checks": {"sharpness_every": 100}}),
    "sharpness_every_10": ("mnist1d-mlp.yaml", 8, {"checks": {"sharpness_every": 10}}),
    "transformer": ("text-gpt.yaml", 1, {"checks": {"transformer": True}}),
}
EVERY = 10
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist1d-mlp.yaml"


def monitors(folder: Path) -> MonitorCallback:
    return MonitorCallback(folder / "monitors.jsonl", every=EVERY)


def measure(kind: str) -> dict[str, float]:
    spec = make_spec(kind)
    splits = data.load(spec.data)
    with tempfile.TemporaryDirectory() as tmp:
        babysit_loop(spec, splits, Path(tmp) / "warmup", monitors)
        on, off = [], []
        for r in range(REPEATS[kind]):
            order = ("on", "off") if r % 2 == 0 else ("off", "on")
            for which in order:
                if which == "on":
                    t, loss_on = babysit_loop(spec, splits, Path(tmp) / f"on{r}", monitors)
                    on.append(t)
                else:
                    t, loss_off = babysit_loop(spec, splits, Path(tmp) / f"off{r}")
                    off.append(t)
        samples = sum(1 for _ in (Path(tmp) / "on0" / "monitors.jsonl").open())
    steps = spec.train.epochs * -(-len(splits.train) // spec.data.batch_size)
    return {
        "ratio": round(statistics.median(a / b for a, b in zip(on, off, strict=True)), 4),
        "ratio_of_minimums": round(min(on) / min(off), 4),
        "on_ms_per_step": round(1000 * statistics.median(on) / steps, 4),
        "off_ms_per_step": round(1000 * statistics.median(off) / steps, 4),
        "final_val_loss_diff": abs(loss_on - loss_off),
        "steps": steps,
        "samples": samples,
        "repeats": REPEATS[kind],
    }


def _with(raw: dict, overrides: dict) -> dict:
    out = dict(raw)
    for key, value in overrides.items():
        out[key] = _with(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def opt_in(name: str) -> dict[str, float]:
    """Whole runs of the example with the opt-in check on against off."""
    import yaml

    from babysit.run import run

    example, epochs, overrides = OPT_IN[name]
    raw = yaml.safe_load((EXAMPLE.parent / example).read_text())
    base = _with(raw, {"train": {"epochs": epochs, "early_stopping": {"patience": None}},
                       "checks": {"preflight": False}})
    specs = {"off": config.validate(base), "on": config.validate(_with(base, overrides))}
    splits = data.load(specs["off"].data)
    times: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        run(specs["off"], Path(tmp) / "warmup", quiet=True, report=False, splits=splits)
        for r in range(OPT_IN_REPEATS):
            for which in (("on", "off") if r % 2 == 0 else ("off", "on")):
                start = time.perf_counter()
                run(specs[which], Path(tmp) / f"{which}{r}", quiet=True, report=False, splits=splits)
                times[which].append(time.perf_counter() - start)
    return {"ratio": round(statistics.median(a / b for a, b in zip(times["on"], times["off"], strict=True)), 3),
            "off_s": round(statistics.median(times["off"]), 2), "example": example, "epochs": epochs}


def preflight_seconds() -> float:
    """The preflight of examples/mnist1d-mlp.yaml in this (warm) process."""
    spec = config.load(EXAMPLE)
    _, splits, model, loss_fn = prepare(spec)
    start = time.perf_counter()
    preflight(model, loss_fn, **preflight_inputs(spec, splits))
    return time.perf_counter() - start


COLD = """
import time, sys
from babysit import config
from babysit.checks.preflight import preflight
from babysit.families.standard import preflight_inputs  # noqa: E402
from babysit.run import prepare
spec = config.load(sys.argv[1])
_, splits, model, loss_fn = prepare(spec)
start = time.perf_counter()
preflight(model, loss_fn, **preflight_inputs(spec, splits))
print(time.perf_counter() - start)
"""


def cold_preflight_seconds() -> float:
    """The same in a fresh process, as `babysit train` meets it (first use of each kernel)."""
    out = subprocess.run([sys.executable, "-c", COLD, str(EXAMPLE)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    result = {"benchmark": "monitor_overhead", "torch": torch.__version__, "threads": torch.get_num_threads(),
              "every": EVERY}
    for kind in ("mlp", "cnn"):
        result[kind] = measure(kind)
    result["opt_in"] = {name: opt_in(name) for name in OPT_IN}
    result["preflight_mnist1d_mlp_s"] = round(preflight_seconds(), 3)
    result["preflight_mnist1d_mlp_cold_s"] = round(cold_preflight_seconds(), 3)
    print(json.dumps(result))
    ok = all(result[k]["final_val_loss_diff"] <= 1e-6 for k in ("mlp", "cnn"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
