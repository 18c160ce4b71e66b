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

The GAN trains in the standard loop (:class:`babysit.train.loop.Trainer`) with its own
:class:`AdversarialStep`, so metrics, TensorBoard, the monitors (fed the discriminator's
loss for the explosion guard), checkpoints, resume and the progress bar are the standard
ones. Per epoch the loop logs ``d_loss``, ``g_loss``, ``d_real`` and ``d_fake`` (D's mean
probability of "real" on each), and :class:`GeneratorSamples` adds ``diversity`` (below);
every few epochs it keeps G's examples for a fixed set of noise draws in ``samples.npz``,
which the report draws. A GAN has no validation loss: its data are the training split.

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

import math
import statistics
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from babysit import nets
from babysit.checks.findings import Finding, sort_findings
from babysit.checks.monitors import monitor_findings
from babysit.checks.preflight import ALL, preflight
from babysit.config import Experiment
from babysit.data import Splits
from babysit.errors import BabysitError
from babysit.families.protocol import RunContext
from babysit.families.standard import to_data_units
from babysit.optim import losses, optimizers
from babysit.optim.losses import BinaryBCE
from babysit.rundir import read_jsonl, save_npz
from babysit.train.loop import Callback, Trainer

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


class AdversarialStep:
    """One GAN update on a batch of real examples (a :class:`babysit.train.loop.Step`): D's
    step, then G's non-saturating step against the updated D (module docstring). Returns
    ``(d_loss, g_loss, D(x), D(G(z)))``, D's loss first: the monitors' guard watches it."""

    names = ("d_loss", "g_loss", "d_real", "d_fake")

    def __init__(self, model: nn.Module, optimizers: AdversarialOptimizers):
        self.model = model
        self.optimizers = optimizers
        self.g_params = [p for p in model.generator.parameters() if p.requires_grad]

    def __call__(self, trainer: Trainer, real: torch.Tensor, _labels: torch.Tensor) -> torch.Tensor:
        gan, opts = self.model, self.optimizers
        generator, discriminator = gan.generator, gan.discriminator
        fake = generator(gan.noise(len(real)))
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
        g_loss.backward(inputs=self.g_params)  # into G only: D keeps its own step's gradient
        opts.generator.step()
        return torch.stack([d_loss.detach(), g_loss.detach(), torch.sigmoid(d_real.detach()).mean(),
                            torch.sigmoid(d_fake.detach()).mean()])


class GeneratorSamples(Callback):
    """G's examples for a fixed set of noise draws: their ``diversity`` in the epoch's logs
    (after the first epoch, every ``every`` epochs and after the last), and the examples
    themselves kept in ``samples.npz`` (in the data's units) for the report.

    Put it before the metrics logger: it adds to the epoch's logs. ``seed`` seeds the fixed
    noise with its own generator, so the training draws are not moved. On resume the
    snapshots already in ``samples.npz`` are kept."""

    def __init__(self, model: nn.Module, reference: torch.Tensor, path: Path | None, *, every: int, epochs: int,
                 seed: int = 0, to_display: Any = None):
        self.model = model
        self.reference = reference[:DIVERSITY_EXAMPLES]
        self.path = path
        self.every = max(1, every)
        self.epochs = epochs
        self.fixed_noise = model.noise(len(self.reference), torch.Generator().manual_seed(seed))
        self.snapshots: dict[int, np.ndarray] = _read_samples(path) if path else {}
        self.to_display = to_display or (lambda t: t)

    def on_epoch_end(self, trainer: Trainer, logs: dict[str, float]) -> None:
        epoch = trainer.state.epoch
        if epoch % self.every == 0 or epoch >= self.epochs or epoch == 1:
            logs["diversity"] = self._snapshot(epoch)

    @torch.no_grad()
    def _snapshot(self, epoch: int) -> float:
        was_training = self.model.training
        self.model.eval()
        samples = self.model.generator(self.fixed_noise)
        self.model.train(was_training)
        if self.path is not None:
            self.snapshots[epoch] = self.to_display(samples[:SAMPLES_KEPT]).float().cpu().numpy()
            save_npz(self.path, epochs=np.array(sorted(self.snapshots), dtype=np.int64),
                     samples=np.stack([self.snapshots[e] for e in sorted(self.snapshots)]))
        return diversity(samples, self.reference)


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


# --------------------------------------------------------------------------- the family

# keys the GAN loop does not use (two optimizers, a fixed objective, fp32): refused, not ignored
_UNUSED = {"train.precision": ("train", "precision", "fp32"), "train.compile": ("train", "compile", False),
           "schedule.name": ("schedule", "name", "constant"), "schedule.warmup_steps": ("schedule", "warmup_steps", 0),
           "optimizer.grad_clip": ("optimizer", "grad_clip", None), "regularization.l1": ("regularization", "l1", 0.0),
           "regularization.max_norm": ("regularization", "max_norm", None),
           "regularization.activity": ("regularization", "activity", 0.0),
           "regularization.input_noise": ("regularization", "input_noise", 0.0),
           "train.snapshots": ("train", "snapshots", None),
           "data.augment": ("data", "augment", [])}


class GANFamily:
    """``model.kind: gan``: two networks, two optimizers, the adversarial step."""

    name = "gan"
    result_keys = ("d_loss", "g_loss", "d_real", "d_fake", "diversity")
    early_stopping = False  # no validation loss to stop on
    single_network_refusal = ("model.kind: gan trains two networks against each other; babysit train and "
                              "babysit check take it, this command takes a single network")

    def claims(self, spec: Experiment) -> bool:
        return spec.model.kind == "gan"

    def validate(self, spec: Experiment) -> None:
        if spec.loss not in ("bce", "cross_entropy"):
            raise BabysitError(f"loss: kind gan trains with the GAN objective (binary cross-entropy on the "
                               f"discriminator's logit); use loss: bce, got {spec.loss!r}")
        if spec.optimizer.name in ("lbfgs", "newton", "perceptron"):
            raise BabysitError(f"optimizer.name: kind gan takes a first-order optimizer (adam, sgd...), got "
                               f"{spec.optimizer.name!r}")
        for key, (section, field, default) in _UNUSED.items():
            value = getattr(getattr(spec, section), field)
            if value != default:
                raise BabysitError(f"{key}: not used by kind gan (its loop trains two networks on the GAN objective); "
                                   f"leave it at {default!r}, got {value!r}")
        for check in ("noise_scale", "sharpness_every", "transformer", "label_noise"):  # one network, one loss
            if getattr(spec.checks, check):
                raise BabysitError(f"checks.{check}: not available for kind gan (the check follows one network "
                                   f"trained on one loss); leave it off")
        for key, default in (("loss_z", 0.0), ("loss_weights", "none")):  # top-level keys
            if getattr(spec, key) != default:
                raise BabysitError(f"{key}: not used by kind gan (its loop trains two networks on the GAN objective); "
                                   f"leave it at {default!r}, got {getattr(spec, key)!r}")

    def adapt(self, spec: Experiment, splits: Splits) -> Splits:
        return splits

    def build(self, spec: Experiment, splits: Splits) -> tuple[nn.Module, Any]:
        out_dim = losses.output_dim(spec.loss, splits.task, splits.num_classes, splits.target_dim)
        model = nets.build(spec.model, splits.input_shape, out_dim)
        return model, losses.build_loss(spec.loss, splits.task, splits.num_classes)

    def optimizer(self, spec: Experiment, model: nn.Module, steps_per_epoch: int) -> tuple[Any, Any]:
        g_opt = optimizers.build_optimizer(spec.optimizer, model.generator)
        d_spec = spec.optimizer.model_copy(update={"lr": spec.optimizer.discriminator_lr or spec.optimizer.lr})
        return AdversarialOptimizers(g_opt, optimizers.build_optimizer(d_spec, model.discriminator)), None

    def train_step(self, spec: Experiment, model: nn.Module, optimizer: Any) -> AdversarialStep:
        return AdversarialStep(model, optimizer)

    def callbacks(self, run: RunContext) -> list[Callback]:
        return [GeneratorSamples(run.model, run.splits.train.x, run.path / "samples.npz",
                                 every=max(1, run.spec.train.epochs // 10), epochs=run.spec.train.epochs,
                                 seed=run.spec.seed, to_display=to_data_units(run.splits))]

    def explosion_factor(self, spec: Experiment) -> float:
        # the guard watches D's loss for NaN / inf only: CS231n's "3x the initial loss" is a rule for a
        # loss being minimised, while D's loss swings by more than that whenever G gets ahead for a while
        # (checks.explosion_factor does not apply to a GAN)
        return math.inf

    def preflight(self, spec: Experiment, model: nn.Module, loss_fn: Any, splits: Splits,
                  run_dir: Path | None = None) -> list[Finding]:
        return gan_preflight(model, splits.train.x, spec.seed)  # no held-out split to leak into

    def findings(self, run: RunContext) -> list[Finding]:
        # the after-run rules of checks/diagnose.py read train and validation losses; a GAN's two
        # adversarial losses are not losses to minimise (a rising g_loss can be a sharper D), so
        # they do not apply: the GAN rules read the adversarial curves instead
        found = per_network_monitor_findings(read_jsonl(run.path / "monitors.jsonl")) if run.spec.checks.monitors else []
        return found + gan_findings([r for r in read_jsonl(run.path / "metrics.jsonl") if "epoch" in r])

    def metrics(self, run: RunContext, trainer: Trainer) -> dict[str, Any]:
        history = [r for r in read_jsonl(run.path / "metrics.jsonl") if "epoch" in r]
        last = history[-1] if history else {}
        found = {key: last[key] for key in ("d_loss", "g_loss", "d_real", "d_fake") if key in last}
        spread = [r["diversity"] for r in history if isinstance(r.get("diversity"), (int, float))]
        if spread:
            found["diversity"] = spread[-1]
        return found

    def summary_extra(self, run: RunContext, summary: dict[str, Any]) -> dict[str, Any]:
        return {"generator_parameters": sum(p.numel() for p in run.model.generator.parameters()),
                "discriminator_parameters": sum(p.numel() for p in run.model.discriminator.parameters())}

    def artifacts(self, run: RunContext) -> None:
        return None  # samples.npz is written while training (GeneratorSamples)


GAN = GANFamily()

__all__ = ["GAN", "AdversarialOptimizers", "AdversarialStep", "GANFamily", "GeneratorSamples", "diversity",
           "gan_findings", "gan_preflight", "per_network_monitor_findings"]
