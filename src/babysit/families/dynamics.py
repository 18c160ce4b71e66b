"""The opt-in training-dynamics checks (``checks.noise_scale``, ``checks.sharpness_every``,
``checks.transformer``) and the always-on ones read from ``metrics.jsonl`` (loss spikes,
fp16 overflow, the input wait), wired into a run: which callbacks a spec turns on, and the findings they
lead to after the run.

Each check is a rule in :mod:`babysit.checks` and, when it samples during training, a
callback in :mod:`babysit.train.callbacks` that writes its own ``<check>.jsonl`` in the run
directory; this module is the one place a family asks for them (:class:`StandardFamily`
and its subclasses call :func:`dynamics_callbacks` and :func:`dynamics_findings`).
"""

from __future__ import annotations

from babysit.checks.findings import Finding
from babysit.checks.input_bound import input_bound_findings
from babysit.checks.noise_scale import noise_scale_findings
from babysit.checks.precision import precision_findings
from babysit.checks.sharpness import sharpness_findings
from babysit.checks.spikes import spike_findings
from babysit.checks.transformer import transformer_findings
from babysit.families.protocol import RunContext
from babysit.rundir import read_jsonl
from babysit.train.callbacks.noise_scale import NoiseScaleCallback
from babysit.train.callbacks.sharpness import SharpnessCallback
from babysit.train.callbacks.transformer import TransformerHealthCallback
from babysit.train.loop import Callback


def dynamics_callbacks(run: RunContext) -> list[Callback]:
    """The callbacks of the opt-in checks the spec turns on."""
    checks = run.spec.checks
    found: list[Callback] = []
    if checks.noise_scale:
        found.append(NoiseScaleCallback(run.path / "noise_scale.jsonl", every=checks.every,
                                        population=len(run.splits.train)))
    if checks.sharpness_every:
        train = run.splits.train
        found.append(SharpnessCallback(run.path / "sharpness.jsonl", every=checks.sharpness_every,
                                       data=(train.x, train.y), loss_fn=run.loss_fn))
    if checks.transformer and run.spec.model.kind == "gpt":
        found.append(TransformerHealthCallback(run.path / "transformer.jsonl", every=checks.every))
    return found


def dynamics_findings(run: RunContext) -> list[Finding]:
    """The findings of these checks over the finished run's files."""
    spec, path = run.spec, run.path
    metrics = read_jsonl(path / "metrics.jsonl")
    found = spike_findings(metrics, on_spike=spec.train.on_spike, spike_factor=spec.checks.spike_factor)
    found += precision_findings(metrics, read_jsonl(path / "monitors.jsonl"), precision=spec.train.precision)
    found += input_bound_findings(metrics)
    if spec.checks.noise_scale:
        batch = spec.data.batch_size if isinstance(spec.data.batch_size, int) else len(run.splits.train)
        found += noise_scale_findings(read_jsonl(path / "noise_scale.jsonl"), batch_size=batch,
                                      train_size=len(run.splits.train))
    if spec.checks.sharpness_every:
        found += sharpness_findings(read_jsonl(path / "sharpness.jsonl"))
    if spec.checks.transformer and spec.model.kind == "gpt":
        found += transformer_findings(read_jsonl(path / "transformer.jsonl"), qk_norm=spec.model.qk_norm,
                                      loss_z=spec.loss_z)
    return found


__all__ = ["dynamics_callbacks", "dynamics_findings"]
