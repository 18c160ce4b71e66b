"""Golden figures of every spec in examples/ and of the run path's options, shortened.

For each case: the SHA-256 of the final weights, the summary.json numbers (times and the
environment left out), the finding ids and the run directory's files (TensorBoard's aside). ``tests/test_golden.py`` compares a run against
``figures.json``: the weights and numbers exactly on the machine that recorded them (same
torch, processor and thread count: floating point differs elsewhere), and what holds
everywhere (the summary's keys, the steps and epochs) on any machine.

Record (one thread, as the test runs):  .venv/bin/python tests/golden/record.py
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FIGURES = Path(__file__).with_name("figures.json")
SHORT = ["train.epochs=2", "schedule.warmup_steps=0"]
# the run path's options that the examples leave out: each changes which branch of the run is taken
CASES: dict[str, tuple[str, list[str]]] = {
    **{p.stem: (p.name, []) for p in sorted(EXAMPLES.glob("*.yaml"))},
    "options-penalties": ("spirals-mlp.yaml", ["regularization.l1=1e-4", "regularization.activity=1e-4",
                                                "regularization.max_norm=3.0", "regularization.input_noise=0.05",
                                                "optimizer.grad_clip=1.0"]),
    "options-newton": ("spirals-mlp.yaml", ["model.hidden=[8]", "optimizer.name=newton", "data.batch_size=full"]),
    "options-lbfgs": ("spirals-mlp.yaml", ["optimizer.name=lbfgs", "optimizer.lr=0.5", "optimizer.weight_decay=0", "data.batch_size=full"]),
    "options-snapshots": ("spirals-mlp.yaml", ["schedule.name=cyclic", "train.snapshots=2", "train.epochs=4"]),
    "options-trajectory": ("spirals-mlp.yaml", ["train.trajectory_every=5"]),
    "options-gru-text": ("text-gpt.yaml", ["model.kind=gru", "model.hidden=[32]", "model.embedding=16"]),
    "options-perceptron-poly": ("perceptron.yaml", ["model.basis=polynomial", "data.samples=200"]),
}
TIMES = {"wall_time_s", "session_time_s", "torch", "python", "platform", "device", "device_name", "threads"}


def fingerprint() -> dict[str, object]:
    """What must match for the weights to be bit-identical: torch, the processor, the threads."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": cpu, "threads": torch.get_num_threads()}


def weights_hash(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def figures_of(case: str, out: Path) -> dict[str, object]:
    from babysit import config
    from babysit.run import run

    spec_file, overrides = CASES[case]
    spec = config.load(EXAMPLES / spec_file, [*SHORT, *overrides])
    result = run(spec, out, quiet=True, report=False)
    summary = {k: v for k, v in json.loads((out / "summary.json").read_text()).items() if k not in TIMES}
    findings = [f["id"] for f in json.loads((out / "findings.json").read_text())]
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*")
                   if p.is_file() and p.parts[len(out.parts)] != "tb" and not p.name.startswith("."))
    return {"weights": weights_hash(result.model), "summary": summary, "findings": findings, "files": files}


def main() -> None:
    torch.set_num_threads(1)
    recorded = {"fingerprint": fingerprint(), "cases": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            recorded["cases"][case] = figures_of(case, Path(tmp) / case)
            print(case, recorded["cases"][case]["findings"], file=sys.stderr)
    FIGURES.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
