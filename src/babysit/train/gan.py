"""Training a GAN: alternating discriminator and generator updates, and the GAN's findings.

Goodfellow et al. 2014, "Generative adversarial nets", Algorithm 1 with k = 1, and the
non-saturating generator loss of their section 3. Each step, on a batch of real examples x
and as many noise draws z:

1. discriminator step: ``d_loss = BCE(D(x), 1) + BCE(D(G(z)), 0)``, G's output detached;
2. generator step: ``g_loss = BCE(D(G(z)), 1)``, i.e. maximise log D(G(z)) rather than
   minimise log(1 - D(G(z))), whose gradient vanishes while D rejects G's examples.

Each network has its own optimizer (the spec's, built twice; ``optimizer.discriminator_lr``
gives D another learning rate, as in the two time-scale rule of Heusel et al. 2017). The
generator's backward accumulates into G's parameters only, so after a step each network's
``.grad`` holds its own update's gradient and the monitors read both.

:class:`GANTrainer` has the attributes the standard callbacks use (``model``, ``optimizer``,
``state``, ``schedule``, ``scaler``, ``forward``), so metrics, TensorBoard, the monitors
(fed the discriminator's loss for the explosion guard), checkpoints and the progress bar
work unchanged. Per epoch it logs ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake`` (D's
mean probability of "real" on each) and ``diversity`` (below); every few epochs it keeps
G's examples for a fixed set of noise draws in ``samples.npz``, which the report draws.

Findings: the monitor rules run per network (generator, discriminator) and two GAN rules
read the curves, with ids added to the vocabulary for them:

- ``discriminator_wins``: D tells real from fake almost perfectly and G's loss is high
  (Arjovsky & Bottou 2017, "Towards principled methods for training GANs": a near-perfect D
  leaves G without a useful gradient).
- ``mode_collapse``: G's examples spread much less than the data (Salimans et al. 2016,
  "Improved techniques for training GANs"; Goodfellow 2016 tutorial, section 5.1.1).
  ``diversity`` is the mean pairwise distance between G's examples for fixed noise over
  the mean pairwise distance between as many training examples: near 1 when G covers the
  data's spread, near 0 when every z gives the same example.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from babysit.checks.findings import PREFLIGHT_IDS, Finding
from babysit.config import Experiment
from babysit.errors import BabysitError
from babysit.train import families
from babysit.train.families import save_npz
from babysit.train.loop import Callback, LoopState

# --------------------------------------------------------------------------- thresholds
# Calibrated on digits (8x8) with the digits-gan example (healthy: over its last quarter
# d_loss 1.0-1.3, g_loss 0.8-1.2, diversity 0.85-1.0), a generator at lr 1e-6 against a
# discriminator at 1e-3 (D wins: d_loss 0.01, g_loss 6) and a generator trained against a
# discriminator at lr 1e-7 (collapse: diversity 0.1-0.3).
#
# D wins outright: over the last quarter of the epochs its loss (real + fake BCE) is below
# D_WINS_LOSS, i.e. it gives real and fake examples the right label with probability ~0.97
# or more, and G's loss is above G_LOSES_LOSS (D(G(z)) below e^-3 ~ 0.05).
D_WINS_LOSS = 0.1
G_LOSES_LOSS = 3.0
# Mode collapse: the median diversity over the last quarter below COLLAPSE_DIVERSITY, G's
# examples spread less than half as much as the data do.
COLLAPSE_DIVERSITY = 0.5
TAIL_FRACTION = 0.25
TAIL_MIN_EPOCHS = 3
SAMPLES_KEPT = 16  # examples per snapshot in samples.npz
DIVERSITY_EXAMPLES = 256


class AdversarialOptimizers:
    """The generator's and the discriminator's optimizers, as one object for the callbacks
    (checkpoints save both; the logged lr is the generator's)."""

    def __init__(self, generator: torch.optim.Optimizer, discriminator: torch.optim.Optimizer):
        self.generator = generator
        self.discriminator = discriminator

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.generator.param_groups

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(), "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.discriminator.load_state_dict(state["discriminator"])


def diversity(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean pairwise distance within ``samples`` over that within ``reference`` (both (N, ...)).

    Example
    -------
    >>> x = torch.randn(64, 5)
    >>> diversity(x, x), diversity(torch.zeros(64, 5), x)
    (1.0, 0.0)
    """
    def spread(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1).float()
        n = len(flat)
        distances = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist")  # exact: 0 for equal rows
        return distances.sum() / max(n * (n - 1), 1)  # the diagonal is 0

    ref = spread(reference)
    return float(spread(samples) / ref) if ref > 0 else float("nan")


class GANTrainer:
    """Alternating GAN updates over epochs of real batches, with the standard callbacks.

    Parameters
    ----------
    model : a :class:`babysit.nets.gan.GAN` (``generator``, ``discriminator``, ``noise(n)``).
    optimizers : the two optimizers.
    callbacks : as for :class:`babysit.train.loop.Trainer`; ``on_batch_end`` gets D's loss.
    reference : real examples the diversity is measured against (a few hundred).
    samples_path : where to keep G's examples for fixed noise (``samples.npz``), or None.
    sample_every : keep them every N epochs (and after the last).
    seed : seeds the fixed noise (its own generator: the training draws are not moved).
    to_display : maps G's examples to the data's units for ``samples.npz`` (the
        preprocessing undone); the identity by default.
    """

    schedule = None
    scaler = None

    def __init__(self, model: nn.Module, optimizers: AdversarialOptimizers, *, callbacks: list[Callback] = (),
                 reference: torch.Tensor, samples_path: Path | None = None, sample_every: int = 1, seed: int = 0,
                 to_display: Any = None):
        self.model = self.forward = model
        self.optimizer = optimizers
        self.callbacks = list(callbacks)
        self.state = LoopState()
        self.reference = reference[:DIVERSITY_EXAMPLES]
        self.samples_path = samples_path
        self.sample_every = max(1, sample_every)
        self.fixed_noise = model.noise(len(self.reference), torch.Generator().manual_seed(seed))
        self.snapshots: dict[int, np.ndarray] = _read_samples(samples_path) if samples_path else {}
        self.to_display = to_display or (lambda t: t)

    def _train_epoch(self, batches: Any) -> list[torch.Tensor]:
        """One pass; returns per-step (d_loss, g_loss, D(x), D(G(z))) stacked, on the device."""
        gan, opts = self.model, self.optimizer
        generator, discriminator = gan.generator, gan.discriminator
        g_params = [p for p in generator.parameters() if p.requires_grad]
        hooks = [cb.on_batch_end for cb in self.callbacks if _overrides(cb)]
        rows: list[torch.Tensor] = []
        gan.train()
        for real, _ in batches:
            n = len(real)
            fake = generator(gan.noise(n))
            # 1. discriminator: real -> 1, fake -> 0 (G's output detached: D's step only)
            d_real = discriminator(real)
            d_fake = discriminator(fake.detach())
            d_loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
                      + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
            opts.discriminator.zero_grad(set_to_none=True)
            d_loss.backward()
            opts.discriminator.step()
            # 2. generator, non-saturating: make the updated D call G's examples real
            d_judged = discriminator(fake)
            g_loss = F.binary_cross_entropy_with_logits(d_judged, torch.ones_like(d_judged))
            opts.generator.zero_grad(set_to_none=True)
            g_loss.backward(inputs=g_params)  # into G only: D keeps its own step's gradient
            opts.generator.step()
            d_loss = d_loss.detach()
            rows.append(torch.stack([d_loss, g_loss.detach(), torch.sigmoid(d_real.detach()).mean(),
                                     torch.sigmoid(d_fake.detach()).mean()]))
            self.state.step += 1
            for hook in hooks:
                hook(self, d_loss)
            if self.state.stop:
                break
        return rows

    @torch.no_grad()
    def _snapshot(self) -> float:
        """G's examples for the fixed noise: their diversity, and a few kept every few epochs."""
        was_training = self.model.training
        self.model.eval()
        samples = self.model.generator(self.fixed_noise)
        self.model.train(was_training)
        if self.samples_path is not None:
            self.snapshots[self.state.epoch] = self.to_display(samples[:SAMPLES_KEPT]).float().cpu().numpy()
            save_npz(self.samples_path, epochs=np.array(sorted(self.snapshots), dtype=np.int64),
                     samples=np.stack([self.snapshots[e] for e in sorted(self.snapshots)]))
        return diversity(samples, self.reference)

    def fit(self, train: Any, epochs: int, val: Any = None, state: LoopState | None = None) -> LoopState:
        """Train until ``epochs`` epochs are done or a callback stops the run (``val`` is unused:
        a GAN has no validation loss)."""
        if state is not None:
            self.state = state
        for cb in self.callbacks:
            cb.on_fit_start(self)
        started = time.perf_counter() - self.state.elapsed
        while self.state.epoch < epochs and not self.state.stop:
            for cb in self.callbacks:
                cb.on_epoch_start(self)
            rows = self._train_epoch(train)
            self.state.epoch += 1
            logs: dict[str, float] = {"epoch": self.state.epoch, "step": self.state.step,
                                      "lr": self.optimizer.param_groups[0]["lr"]}
            if rows:
                means = torch.stack(rows).float().mean(0).tolist()
                logs.update(zip(("d_loss", "g_loss", "d_real", "d_fake"), means, strict=True))
            if self.state.epoch % self.sample_every == 0 or self.state.epoch >= epochs or self.state.epoch == 1:
                logs["diversity"] = self._snapshot()
            self.state.elapsed = time.perf_counter() - started
            logs["time"] = self.state.elapsed
            self.state.logs = logs
            for cb in self.callbacks:
                cb.on_epoch_end(self, logs)
        for cb in self.callbacks:
            cb.on_fit_end(self)
        return self.state


def _overrides(callback: Callback) -> bool:
    method = callback.on_batch_end
    return getattr(method, "__func__", method) is not Callback.on_batch_end


def _read_samples(path: Path) -> dict[int, np.ndarray]:
    """The snapshots in ``samples.npz`` (``epochs`` (E,), ``samples`` (E, k, *example_shape)); {} when none."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {int(e): s for e, s in zip(f["epochs"], f["samples"], strict=True)}
    except (OSError, ValueError, KeyError):
        return {}


# --------------------------------------------------------------------------- findings


def _tail(history: list[dict[str, Any]], key: str) -> list[float]:
    values = [r[key] for r in history if isinstance(r.get(key), (int, float))]
    k = max(TAIL_MIN_EPOCHS, round(TAIL_FRACTION * len(values)))
    return values[-k:] if len(values) >= TAIL_MIN_EPOCHS else []


def gan_findings(history: list[dict[str, Any]]) -> list[Finding]:
    """``discriminator_wins`` and ``mode_collapse`` from a GAN run's epoch records (metrics.jsonl).

    Example
    -------
    >>> history = [{"epoch": e, "d_loss": 0.02, "g_loss": 6.0, "diversity": 0.9} for e in range(1, 13)]
    >>> [f.id for f in gan_findings(history)]
    ['discriminator_wins']
    """
    found = []
    d_loss, g_loss = _tail(history, "d_loss"), _tail(history, "g_loss")
    if d_loss and g_loss:
        d, g = statistics.median(d_loss), statistics.median(g_loss)
        if d < D_WINS_LOSS and g > G_LOSES_LOSS:
            found.append(Finding(
                "discriminator_wins", "warning",
                f"The discriminator wins outright: over the last {len(d_loss)} epochs its loss was {d:.3g} "
                f"(it labels real and generated examples right almost every time) while the generator's "
                f"loss was {g:.3g} (D gives its examples a probability of about {np.exp(-g):.2g} of being real). "
                "A discriminator this sure of itself leaves the generator almost no gradient to learn from.",
                "Slow the discriminator down or speed the generator up: a lower optimizer.discriminator_lr "
                "(or a higher optimizer.lr for G), a smaller discriminator (model.hidden / model.channels), "
                "dropout in D (model.dropout), or more noise in its inputs.",
                {"d_loss_median": d, "g_loss_median": g, "epochs": len(d_loss),
                 "thresholds": {"d_loss": D_WINS_LOSS, "g_loss": G_LOSES_LOSS}},
                layer="discriminator"))
    spread = _tail(history, "diversity")
    if spread:
        value = statistics.median(spread)
        if value < COLLAPSE_DIVERSITY:
            found.append(Finding(
                "mode_collapse", "warning",
                f"The generator's examples are much less varied than the data: their mean pairwise distance "
                f"is {value:.2g} of the training examples' (median of the last {len(spread)} measurements). "
                "Different noise gives nearly the same example: the generator has collapsed onto a few "
                "modes of the data.",
                "Strengthen the discriminator (its optimizer.discriminator_lr, its size), lower the generator's "
                "learning rate, or enlarge model.latent; a collapse at the start of training may pass with more epochs.",
                {"diversity_median": value, "measurements": len(spread), "threshold": COLLAPSE_DIVERSITY},
                layer="generator"))
    return found


def per_network_monitor_findings(records: list[dict[str, Any]]) -> list[Finding]:
    """The monitor rules run on the generator's and on the discriminator's layers separately
    (the gradient-depth rule compares a network's first and last layers, not G's first with D's last)."""
    from babysit.checks.monitors import monitor_findings

    found: list[Finding] = []
    for network in ("generator", "discriminator"):
        part = [{**r, "layers": {k: v for k, v in r["layers"].items() if k.startswith(network + ".")}}
                for r in records]
        found += monitor_findings([r for r in part if r["layers"]])
    return found


# --------------------------------------------------------------------------- preflight


def gan_preflight(model: nn.Module, x: torch.Tensor, seed: int = 0, examples: int = 256) -> list[Finding]:
    """The preflight checks of a GAN: all of them on the discriminator as a real-versus-fake
    classifier (real examples and G's, interleaved, labels 1 and 0, BCE with ln 2 as the
    initial loss), and the symmetric-init and gradient checks on the generator (through D,
    with the generator's loss). Layer names start with ``discriminator.`` / ``generator.``.
    """
    from babysit.checks.findings import sort_findings
    from babysit.checks.preflight import ALL, preflight
    from babysit.optim.losses import BinaryBCE

    real = x[:examples]
    with torch.no_grad():
        fake = model.sample(len(real), torch.Generator().manual_seed(seed)).detach()
    mixed = torch.stack([real, fake], dim=1).flatten(0, 1)  # real, fake, real, fake...
    labels = torch.arange(len(mixed), device=x.device) % 2 == 0
    discriminator = nn.Sequential(OrderedDict(discriminator=model.discriminator))
    found = preflight(discriminator, BinaryBCE(), (mixed, labels.long()), task="classification", num_classes=2,
                      loss_name="bce", seed=seed, checks=tuple(c for c in ALL if c != "inputs_not_normalized"))
    # the scaling of the inputs is the data's: judged on the real examples alone
    found += preflight(discriminator, BinaryBCE(), (real, torch.ones(len(real), dtype=torch.long, device=x.device)),
                       task="classification", num_classes=2, loss_name="bce", seed=seed,
                       checks=("inputs_not_normalized",))
    noise = model.noise(len(real), torch.Generator().manual_seed(seed + 1))
    chained = nn.Sequential(OrderedDict(generator=model.generator, discriminator=model.discriminator))
    found += preflight(chained, BinaryBCE(), (noise, torch.ones(len(noise), dtype=torch.long, device=x.device)),
                       task="classification", num_classes=2, loss_name="bce", seed=seed,
                       checks=("symmetric_init", "gradient_check_failed"))
    return sort_findings(found)


# --------------------------------------------------------------------------- the run


def run_gan(spec: Experiment, out: str | Path | None = None, *, resume: bool = False, quiet: bool = False,
            extra_callbacks: list[Callback] | None = None, progress_stream: Any = None) -> Any:
    """What ``babysit train`` does for ``model.kind: gan``: the run directory of
    :func:`babysit.train.runner.run`, with the GAN loop, the GAN preflight and findings, and
    ``samples.npz``. Returns a :class:`babysit.train.runner.RunResult`."""
    from babysit import config as config_module
    from babysit.checks.findings import finding_lines, sort_findings, write_findings
    from babysit.optim import optimizers
    from babysit.train import runner
    from babysit.train.callbacks import (
        Checkpointer,
        MetricsLogger,
        MonitorCallback,
        ProgressReporter,
        TensorBoardLogger,
        truncate_metrics,
    )
    from babysit.train.checkpoint import load_checkpoint, set_rng_state

    if spec.loss not in ("bce", "cross_entropy"):
        raise BabysitError(f"loss: kind gan trains with the GAN objective (binary cross-entropy on the "
                           f"discriminator's logit); use loss: bce, got {spec.loss!r}")
    if spec.optimizer.name in ("lbfgs", "newton", "perceptron"):
        raise BabysitError(f"optimizer.name: kind gan takes a first-order optimizer (adam, sgd...), got "
                           f"{spec.optimizer.name!r}")
    # keys the GAN loop does not use (two optimizers, a fixed objective, fp32): refused, not ignored
    unused = {"train.precision": (spec.train.precision, "fp32"), "train.compile": (spec.train.compile, False),
              "schedule.name": (spec.schedule.name, "constant"), "schedule.warmup_steps": (spec.schedule.warmup_steps, 0),
              "optimizer.grad_clip": (spec.optimizer.grad_clip, None), "regularization.l1": (spec.regularization.l1, 0.0),
              "regularization.max_norm": (spec.regularization.max_norm, None),
              "regularization.activity": (spec.regularization.activity, 0.0),
              "regularization.input_noise": (spec.regularization.input_noise, 0.0)}
    for key, (value, default) in unused.items():
        if value != default:
            raise BabysitError(f"{key}: not used by kind gan (its loop trains two networks on the GAN objective); "
                               f"leave it at {default!r}, got {value!r}")
    path = runner.run_directory(spec, out, resume)
    if resume:
        runner._check_resume_spec(config_module.load(path / "config.yaml"), spec)
    device, splits, model, _ = runner.prepare(spec, two_networks=True)
    g_opt = optimizers.build_optimizer(spec.optimizer, model.generator)
    d_spec = spec.optimizer.model_copy(update={"lr": spec.optimizer.discriminator_lr or spec.optimizer.lr})
    d_opt = optimizers.build_optimizer(d_spec, model.discriminator)
    opts = AdversarialOptimizers(g_opt, d_opt)
    generator = torch.Generator().manual_seed(spec.seed)
    from babysit.data.batching import Batches

    batches = Batches(splits.train.x, splits.train.y, spec.data.batch_size, generator)

    path.mkdir(parents=True, exist_ok=True)
    (path / "checkpoints").mkdir(exist_ok=True)
    config_module.save(spec, path / "config.yaml")
    findings: list[Finding] = []
    if spec.checks.preflight and not resume:
        findings = gan_preflight(model, splits.train.x, spec.seed)
        write_findings(path / "findings.json", findings)
        if not quiet:
            for line in finding_lines(findings):
                print(f"preflight {line}", file=progress_stream or sys.stdout)

    state = LoopState()
    if resume:
        checkpoint = load_checkpoint(path / "checkpoints" / "last.pt", map_location="cpu")
        model.load_state_dict(checkpoint["model"])
        opts.load_state_dict(checkpoint["optimizer"])
        state = LoopState.from_checkpoint(checkpoint["loop"])
        generator.set_state(checkpoint["generator"])
        set_rng_state(checkpoint["rng"])
        truncate_metrics(path / "metrics.jsonl", state.step)
        preflight_found = [Finding(**f) for f in runner.read_jsonl_list(path / "findings.json")
                           if f["id"] in PREFLIGHT_IDS]
        findings = preflight_found

    metrics = MetricsLogger(path / "metrics.jsonl", spec.train.log_every)
    monitors = None
    if spec.checks.monitors:
        if resume:
            truncate_metrics(path / "monitors.jsonl", state.step)
        # the guard watches D's loss for NaN / inf only: CS231n's "3x the initial loss" is a rule for a
        # loss being minimised, while D's loss swings by more than that whenever G gets ahead for a while
        # (checks.explosion_factor does not apply to a GAN)
        monitors = MonitorCallback(path / "monitors.jsonl", every=spec.checks.every, explosion_factor=math.inf,
                                   initial_loss=runner._first_loss(path / "monitors.jsonl") if resume else None)
    callbacks: list[Callback] = [
        metrics,
        TensorBoardLogger(path / "tb", monitors=monitors),
        *([monitors] if monitors is not None else []),
        Checkpointer(path / "checkpoints", generator=generator, epochs=spec.train.epochs,
                     every_s=spec.train.checkpoint_every_s,
                     before_save=[metrics.flush] + ([monitors.flush] if monitors is not None else [])),
        *(extra_callbacks or []),
    ]
    if not quiet:
        callbacks.append(ProgressReporter(spec.train.epochs, len(batches), stream=progress_stream))
    trainer = GANTrainer(model, opts, callbacks=callbacks, reference=splits.train.x, samples_path=path / "samples.npz",
                         sample_every=max(1, spec.train.epochs // 10), seed=spec.seed,
                         to_display=families.to_data_units(splits))
    started = time.perf_counter()
    state = trainer.fit(batches, spec.train.epochs, state=state)

    history = [r for r in runner.read_jsonl(path / "metrics.jsonl") if "epoch" in r]
    last = history[-1] if history else {}
    summary: dict[str, Any] = {"name": spec.run_name}
    for key in ("d_loss", "g_loss", "d_real", "d_fake"):
        if key in last:
            summary[key] = last[key]
    spread = [r["diversity"] for r in history if isinstance(r.get("diversity"), (int, float))]
    if spread:
        summary["diversity"] = spread[-1]
    summary.update({
        "epochs": state.epoch,
        "steps": state.step,
        "stopped_early": bool(state.stop),
        "stop_reason": state.stop_reason,
        "diverged": state.diverged,
        "wall_time_s": round(state.elapsed, 3),
        "session_time_s": round(time.perf_counter() - started, 3),
        "parameters": sum(p.numel() for p in model.parameters()),
        "generator_parameters": sum(p.numel() for p in model.generator.parameters()),
        "discriminator_parameters": sum(p.numel() for p in model.discriminator.parameters()),
        **runner.environment(device),
    })
    found = list(findings)
    if monitors is not None:
        if monitors.guard is not None:
            found.append(monitors.guard)
        found += per_network_monitor_findings(runner.read_jsonl(path / "monitors.jsonl"))
    # the after-run rules of checks/diagnose.py read train and validation losses; a GAN's two
    # adversarial losses are not losses to minimise (a rising g_loss can be a sharper D), so
    # they do not apply: the GAN rules above read the adversarial curves instead
    found += gan_findings(history)
    found = sort_findings(found)
    write_findings(path / "findings.json", found)
    summary["findings"] = {sev: sum(f.severity == sev for f in found) for sev in ("error", "warning", "info")}
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    runner._findings_to_tensorboard(path / "tb", found, state.step)
    runner._write_report(path)
    return runner.RunResult(path=path, summary=summary, model=model, splits=splits, findings=found)


__all__ = ["AdversarialOptimizers", "GANTrainer", "diversity", "gan_findings", "gan_preflight",
           "per_network_monitor_findings", "run_gan"]
