"""The experiment spec: pydantic models of every key in DESIGN.md, loading and overrides.

An empty spec trains the default network (an MLP on MNIST-1D). Every key has a default;
unknown keys are errors; every bad field is reported as one line naming its dotted path,
what is allowed and what was given, e.g. ``optimizer.lr: must be > 0, got -0.1``.

Example
-------
>>> from babysit.config import Experiment, apply_overrides
>>> spec = apply_overrides(Experiment(), ["optimizer.lr=0.01", "model.hidden=[256,256]"])
>>> spec.optimizer.lr, spec.model.hidden
(0.01, [256, 256])
"""

from __future__ import annotations

import math
import re
import reprlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from babysit.errors import BabysitError

DataSource = Literal["mnist1d", "digits", "spirals", "blobs", "npz", "csv", "folder", "text"]
Preprocess = Literal["center", "standardize", "pca_whiten", "zca_whiten"]
# on the device, training batches only (babysit.data.augment): images flip / crop, sequences shift, any noise
Augmentation = Literal["flip", "crop", "noise", "shift"]
ModelKind = Literal[
    "mlp", "cnn", "resnet", "rnn", "gru", "lstm", "autoencoder", "gan", "gpt", "perceptron"
]
Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "maxout", "sign"]
Norm = Literal["none", "batch", "layer", "group", "weight", "spectral"]
Init = Literal["zeros", "normal", "uniform", "lecun", "xavier", "kaiming", "orthogonal"]
LossName = Literal["mse", "mae", "cross_entropy", "nll", "bce", "hinge", "perceptron"]
Basis = Literal["identity", "polynomial", "fourier"]
RECURRENT_KINDS = ("rnn", "gru", "lstm")
# CS231n, "babysitting the learning process": a loss above about 3x its initial value has
# exploded. The one home of that factor: the monitors' guard (checks.explosion_factor's default),
# babysit.watch, the search's divergence pruner and the studies all read it from here.
EXPLOSION_FACTOR = 3.0
OptimizerName = Literal[
    "sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop", "adagrad", "lbfgs",
    "newton", "quickprop", "perceptron",
]
ScheduleName = Literal[
    "constant", "step", "plateau", "warmup_cosine", "cyclic", "cosine_restarts", "one_cycle"
]
Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["fp32", "bf16", "fp16"]
Monitor = Literal["val_loss", "val_acc", "train_loss", "train_acc"]


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, assignments are validated, and
    every float must be finite (``.inf``, ``.nan`` and ``1e400`` are refused, naming the key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


_BYTE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """A size such as ``'500MB'``, ``'2 GB'`` or ``'1.5GiB'`` in bytes (KB/MB/GB are powers of 10,
    KiB/MiB/GiB powers of 2).

    Example
    -------
    >>> parse_bytes("2GB"), parse_bytes("1.5 KiB"), parse_bytes("300")
    (2000000000, 1536, 300)
    """
    found = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", text)
    unit = found.group(2).lower() if found else None
    if found is None or unit not in _BYTE_UNITS:
        raise ValueError(f"must be a number of bytes or a size such as '500MB', '2GB' or '1.5GiB', got {_echo(text)}")
    return int(float(found.group(1)) * _BYTE_UNITS[unit])


class DataSpec(Section):
    source: DataSource = "mnist1d"
    path: str | None = None  # npz (a .npz file, or a folder of x.npy, y.npy [, x_test.npy, y_test.npy]) / csv / folder
    target: str | int | None = None  # csv: label column (name or index); default the last
    train_size: int | None = Field(None, gt=0)  # keep only the first N training examples
    # decides the data set's examples (generated sources) and its train/val/test carving; the
    # experiment's seed does not move them, so runs that differ only in seed share their splits
    split_seed: int = Field(0, ge=0, lt=2**63)
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # for sources without a test split
    samples: int | None = Field(None, gt=0, le=10_000_000)  # size of generated sets (mnist1d 5000, spirals 1500, blobs 1500)
    context: int = Field(64, ge=2)  # text: characters per example, the language model's context length
    classes: int = Field(3, ge=2)  # spirals / blobs
    noise: float = Field(0.2, ge=0.0)  # spirals / blobs
    preprocess: list[Preprocess] = Field(default_factory=lambda: ["standardize"])
    batch_size: int | Literal["full"] = 128
    augment: list[Augmentation] = Field(default_factory=list)  # random flip / crop (images), noise, shift (sequences)

    # a folder of images or of .npy files (memory-mapped) holding more than this many bytes as
    # float32 streams from disk through a DataLoader, batch by batch; smaller sets are loaded whole
    # (bytes, or a size such as '500MB', '2GB', '1.5GiB'; 0 streams every such set)
    in_memory_limit: int = Field(2_000_000_000, ge=0)
    workers: int = Field(0, ge=0, le=256)  # DataLoader worker processes of the streaming path (0: read in the training process)

    @field_validator("in_memory_limit", mode="before")
    @classmethod
    def _size_in_bytes(cls, value: Any) -> Any:
        return parse_bytes(value) if isinstance(value, str) else value

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be a positive integer or 'full', got {_echo(value)}")
        return value

    @model_validator(mode="after")
    def _path_for_files(self) -> DataSpec:
        if self.source in ("npz", "csv", "folder") and not self.path:
            raise ValueError(f"data.path is required for source '{self.source}'")
        return self

    @field_validator("augment")
    @classmethod
    def _distinct_augmentations(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"each operation at most once, got {', '.join(repeated)} more than once")
        return value

    @model_validator(mode="after")
    def _augment_real_inputs(self) -> DataSpec:
        if self.augment and self.source == "text":
            raise ValueError("data.augment: not for data.source: text (token ids have no neighbours to flip, "
                             "crop, shift or add noise to); leave it []")
        return self


class ModelSpec(Section):
    kind: ModelKind = "mlp"
    hidden: list[int] = Field(default_factory=lambda: [100, 100])  # mlp widths; [] is linear/logistic regression
    channels: list[int] = Field(default_factory=lambda: [25, 25, 25])  # cnn / resnet stages
    kernel_size: int = Field(5, ge=1)
    activation: Activation = "relu"
    maxout_pieces: int = Field(2, ge=2)
    norm: Norm = "none"
    groups: int = Field(4, ge=1)  # for norm: group
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    init: Init = "kaiming"
    init_std: float | None = Field(None, gt=0)  # for init: normal (default 0.01)
    bias_init: float = 0.0
    residual: bool = False
    basis: Basis = "identity"  # perceptron: the fixed features phi(x)
    basis_degree: int = Field(2, ge=1)  # basis: polynomial, all monomials up to this degree
    basis_features: int = Field(256, ge=1)  # basis: fourier, the number of random Fourier features
    bidirectional: bool = False  # rnn / gru / lstm: read the sequence both ways
    embedding: int | None = Field(None, ge=1)  # rnn / gru / lstm: token embedding width; set for token-id inputs (language modelling)
    backbone: Literal["mlp", "cnn"] = "mlp"  # autoencoder / gan: dense layers (widths: hidden) or convolutions (channels)
    bottleneck: int = Field(16, ge=1)  # autoencoder: the code size
    latent: int = Field(32, ge=1)  # gan: the generator's noise size
    layers: int = Field(4, ge=1)  # gpt: transformer blocks
    heads: int = Field(4, ge=1)  # gpt: attention heads per block
    embed: int = Field(128, ge=1)  # gpt: embedding width (a multiple of heads)
    qk_norm: bool = False  # gpt: layer-normalise queries and keys before the dot product (Dehghani et al. 2023)

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, raw: Any) -> Any:
        """Defaults that follow from ``kind``, where the spec leaves the key out: a perceptron
        starts from ``init: zeros`` (Rosenblatt's w = 0, the setting of Novikoff's bound); rnn,
        gru and lstm use ``activation: tanh`` (Elman's unit; gru and lstm gates are fixed)."""
        if isinstance(raw, dict):
            if raw.get("kind") == "perceptron":
                return {"init": "zeros", **raw}
            if raw.get("kind") in RECURRENT_KINDS:
                return {"activation": "tanh", **raw}
        return raw

    @field_validator("hidden", "channels")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        bad = [w for w in value if w < 1]
        if bad:
            raise ValueError(f"widths must be positive integers, got {_echo(value)}")
        if any(w > MAX_WIDTH for w in value):
            raise ValueError(f"widths must be at most {MAX_WIDTH:,} (one layer's weights would not fit in "
                             f"memory), got {_echo(value)}")
        return value


class OptimizerSpec(Section):
    name: OptimizerName = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd uses it as given (0 is plain SGD)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(None, gt=0)  # clip the global gradient norm
    damping: float = Field(1e-3, ge=0.0)  # newton: the initial Levenberg-Marquardt damping λ
    max_growth: float = Field(1.75, gt=0.0)  # quickprop: μ, the largest ratio of a step to the last (Fahlman 1988)
    discriminator_lr: float | None = Field(None, gt=0)  # gan: the discriminator's own lr (default: lr)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= b < 1.0 for b in value):
            raise ValueError(f"both betas must be in [0, 1), got {list(value)}")
        return value


class ScheduleSpec(Section):
    name: ScheduleName = "constant"
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from lr/100, a phase any schedule can have
    step_size: int = Field(10, ge=1)  # step: epochs between decays
    gamma: float = Field(0.1, gt=0.0, le=1.0)  # step: decay factor
    patience: int = Field(5, ge=0)  # plateau: epochs without val_loss improvement
    factor: float = Field(0.1, gt=0.0, lt=1.0)  # plateau: decay factor
    min_lr: float = Field(0.0, ge=0.0)  # floor for cosine / plateau
    base_lr: float | None = Field(None, gt=0)  # cyclic: lower bound (default lr / 10)
    cycle_epochs: int = Field(10, ge=1)  # cyclic: a full cycle; cosine_restarts: the first period
    cycle_mult: int = Field(1, ge=1)  # cosine_restarts: period growth


class EarlyStopping(Section):
    monitor: Monitor = "val_loss"
    patience: int | None = Field(10, ge=1)  # None turns early stopping off
    min_delta: float = Field(0.0, ge=0.0)


class RegularizationSpec(Section):
    l1: float = Field(0.0, ge=0.0)
    max_norm: float | None = Field(None, gt=0)  # cap on each unit's incoming weight norm
    activity: float = Field(0.0, ge=0.0)  # L2 penalty on hidden activations
    input_noise: float = Field(0.0, ge=0.0)  # std of Gaussian noise added to inputs in training


class TrainSpec(Section):
    epochs: int = Field(50, ge=1)
    device: Device = "auto"
    compile: bool = False
    precision: Precision = "fp32"
    # CPU threads for torch (None: 1 for a network under THREADS_PARAMS parameters, where more
    # threads cost more than they give; torch's default above)
    threads: int | None = Field(None, ge=1, le=1024)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    log_every: int | None = Field(None, ge=1)  # steps between logged points (default: once an epoch)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    checkpoint_every_s: float = Field(10.0, ge=0.0)  # save last.pt at most this often (and after the last epoch)
    snapshots: int | None = Field(None, ge=2)  # snapshot ensemble: keep the last K cycle-end weights (cyclic schedules)
    trajectory_every: int | None = Field(None, ge=1)  # steps between weight snapshots in checkpoints/trajectory/ (None: off)
    # a loss above checks.spike_factor x its moving average: stop (the explosion guard, as before),
    # skip that batch's update, or roll back to the last good in-memory state and skip the batches
    on_spike: Literal["stop", "skip", "rollback"] = "stop"


class ChecksSpec(Section):
    preflight: bool = True
    monitors: bool = True
    every: int = Field(10, ge=1)
    explosion_factor: float = Field(EXPLOSION_FACTOR, gt=1.0)
    spike_factor: float = Field(3.0, gt=1.0)  # a loss spike: above this multiple of the loss's moving average
    # opt-in checks that cost more than the monitors' budget (see each finding's advice)
    noise_scale: bool = False  # gradient noise scale B_noise (McCandlish et al. 2018), every N steps
    sharpness_every: int | None = Field(None, ge=1)  # lambda_max of the Hessian every N steps (edge of stability)
    transformer: bool = False  # gpt: attention entropy, attention / output logits, residual-stream norms
    label_noise: bool = False  # confident learning over cross-validated probabilities (k extra fits) -> label_issues.json


class Experiment(Section):
    name: str | None = None  # default: "<data.source>-<model.kind>"
    seed: int = Field(0, ge=0, lt=2**63)  # torch and numpy take seeds in [0, 2**63)
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossName = "cross_entropy"
    loss_weights: Literal["none", "balanced"] = "none"  # balanced: each class weighted by N / (C x its count)
    loss_z: float = Field(0.0, ge=0.0)  # z-loss coefficient on the output logits' log Z (PaLM: 1e-4); 0 is off
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    # babysit search: dotted spec key -> distribution, e.g. {optimizer.lr: loguniform(1e-4, 1)}
    search: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _model_kind_defaults(cls, raw: Any) -> Any:
        """Defaults that follow from ``model.kind``, filled in only where the spec leaves the key out.

        - perceptron: ``loss: perceptron`` and ``optimizer.name: perceptron`` (with that loss):
          Rosenblatt's rule (from w = 0: see :class:`ModelSpec`), and
          ``train.early_stopping.patience: null``: the run goes on until the data are separated
          (or the epochs run out) and keeps the last weights, the separating ones.
        - rnn / gru / lstm: ``optimizer.grad_clip: 1.0`` (Pascanu, Mikolov & Bengio 2013: clipping
          the gradient norm tames the exploding gradients of recurrent nets; ``grad_clip: null``
          turns it off).
        - autoencoder: ``loss: mse`` (reconstruction error). gan: ``loss: bce``, Adam at lr 2e-4
          with betas (0.5, 0.999) and leaky ReLU (DCGAN). gpt: AdamW at lr 1e-3.
        """
        if not isinstance(raw, dict):
            return raw
        kind = _given(raw.get("model")).get("kind")
        if kind == "perceptron":
            raw = {**raw, "loss": raw.get("loss", "perceptron")}
            if raw["loss"] == "perceptron":
                raw["optimizer"] = _with_defaults(raw.get("optimizer"), name="perceptron")
            raw["train"] = _with_defaults(raw.get("train"), early_stopping={"patience": None})
        elif kind in RECURRENT_KINDS:
            raw = {**raw, "optimizer": _with_defaults(raw.get("optimizer"), grad_clip=1.0)}
        elif kind == "autoencoder":  # the inputs are the targets: reconstruction error
            raw = {**raw, "loss": raw.get("loss", "mse")}
        elif kind == "gan":
            # Radford et al. 2016 (DCGAN): Adam at lr 2e-4 with beta1 0.5, leaky ReLU (slope 0.2)
            # in the discriminator; the GAN objective is binary cross-entropy on D's logit
            raw = {**raw, "loss": raw.get("loss", "bce")}
            raw["optimizer"] = _with_defaults(raw.get("optimizer"), name="adam", lr=2e-4, betas=(0.5, 0.999))
            raw["model"] = _with_defaults(raw.get("model"), activation="leaky_relu")
        elif kind == "gpt":  # nanoGPT / GPT-2: AdamW, GELU units (fixed by the architecture)
            raw = {**raw, "optimizer": _with_defaults(raw.get("optimizer"), name="adamw", lr=1e-3)}
        return raw

    @model_validator(mode="after")
    def _batch_norm_needs_batches(self) -> Experiment:
        if self.model.norm == "batch" and self.data.batch_size == 1:
            raise ValueError("model.norm: batch normalisation needs batches of 2 or more examples (its statistics "
                             "of one example are meaningless); data.batch_size is 1: use norm: layer, or a larger batch")
        return self

    @model_validator(mode="after")
    def _perceptron_rule_needs_its_criterion(self) -> Experiment:
        if self.optimizer.name == "perceptron" and self.loss != "perceptron":
            raise ValueError(
                "optimizer.name: 'perceptron' is the perceptron rule, plain SGD on the perceptron "
                f"criterion; set loss: perceptron (got loss: {self.loss})"
            )
        return self

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or "\\" in value or value in (".", "..")
                                  or len(value) > NAME_MAX_CHARS or not value.isprintable()):
            raise ValueError(f"must be a printable name of 1 to {NAME_MAX_CHARS} characters without '/' or '\\' "
                             f"(it names the run directory), got {_echo(value)}")
        return value

    @model_validator(mode="after")
    def _snapshots_need_cycles(self) -> Experiment:
        if self.train.snapshots is not None and self.schedule.name not in ("cosine_restarts", "cyclic"):
            raise ValueError(f"train.snapshots: needs schedule.name cosine_restarts or cyclic (a snapshot is taken at "
                             f"the end of each cycle), got schedule.name {self.schedule.name!r}")
        return self

    @model_validator(mode="after")
    def _search_space_valid(self) -> Experiment:
        for key, text in self.search.items():
            search_distribution(self, key, text)
        return self

    @property
    def run_name(self) -> str:
        return self.name or f"{self.data.source}-{self.model.kind}"

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        if not data.get("search"):
            data.pop("search", None)  # a spec without a search space reads and saves as before
        return data


def _given(section: Any) -> dict[str, Any]:
    """The keys a spec section states: a dict as is, a section model's explicitly set fields."""
    if isinstance(section, BaseModel):
        return section.model_dump(exclude_unset=True)
    return dict(section) if isinstance(section, dict) else {}


def _with_defaults(section: Any, **defaults: Any) -> Any:
    """``section`` with ``defaults`` under the keys it does not state (a value of another type is
    left for validation to reject)."""
    if isinstance(section, BaseModel):  # a section object (also on assignment): keep its type
        missing = {key: value for key, value in defaults.items() if key not in section.model_fields_set}
        return section.model_copy(update=missing) if missing else section
    if section is not None and not isinstance(section, dict):
        return section
    return {**defaults, **(section or {})}


# --------------------------------------------------------------------------- search space


@dataclass(frozen=True)
class SearchDistribution:
    """One entry of a spec's ``search:`` section, parsed (never evaluated) from its text.

    ``loguniform(a, b)`` (floats, uniform in log space: for scales such as a learning rate),
    ``uniform(a, b)``, ``intuniform(a, b)`` (alias ``int(a, b)``: integers a..b inclusive) and
    ``choice(x, y, ...)`` (values read as YAML: ``choice(relu, tanh)``, ``choice([64], [128, 128])``).

    Example
    -------
    >>> parse_distribution("loguniform(1e-4, 1)")
    SearchDistribution(kind='loguniform', low=0.0001, high=1.0, choices=())
    >>> parse_distribution("choice(relu, tanh)").choices
    ('relu', 'tanh')
    """

    kind: Literal["loguniform", "uniform", "intuniform", "choice"]
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"

    @property
    def is_choice(self) -> bool:
        return self.kind == "choice"

    @property
    def is_integer(self) -> bool:
        return self.kind == "intuniform"


SEARCH_EXAMPLES = "loguniform(1e-4, 1), uniform(0, 0.5), intuniform(1, 8) or choice(relu, tanh)"
_CALL = re.compile(r"^\s*([A-Za-z_]+)\s*\((.*)\)\s*$", re.DOTALL)


def parse_distribution(text: str) -> SearchDistribution:
    """Read ``name(arguments)``; a ValueError says what is wrong (the caller names the key)."""
    match = _CALL.match(text) if isinstance(text, str) else None
    if match is None and isinstance(text, str) and text.count("(") > text.count(")"):
        raise ValueError(f"{text!r} was cut at a comma by YAML's {{...}} flow mapping; quote the distribution "
                         f"('{text.strip()}, ...)') or write search: as a block, one key per line")
    if match is None:
        raise ValueError(f"expected a distribution such as {SEARCH_EXAMPLES}; got {_echo(text)}")
    name, arguments = match.group(1), match.group(2)
    kind = {"loguniform": "loguniform", "uniform": "uniform", "intuniform": "intuniform", "int": "intuniform",
            "choice": "choice"}.get(name)
    if kind is None:
        raise ValueError(f"unknown distribution {name!r}; use {SEARCH_EXAMPLES}")
    if kind == "choice":
        try:
            values = safe_yaml(f"[{arguments}]", "search")
        except yaml.YAMLError:
            raise ValueError(f"cannot read the values of {text!r}; write them as YAML, e.g. choice(relu, tanh)") from None
        values = [_number_or_value(v) for v in values]
        if len(values) < 2:
            raise ValueError(f"choice needs at least two values; got {_echo(text)} (to fix a key, set it in the spec)")
        return SearchDistribution("choice", choices=tuple(values))
    bounds = [b.strip() for b in arguments.split(",")]
    if len(bounds) != 2 or not all(bounds):
        raise ValueError(f"{name} takes two bounds, {name}(low, high); got {_echo(text)}")
    try:
        low, high = (float(b) for b in bounds)
    except ValueError:
        raise ValueError(f"{name} bounds must be numbers; got {_echo(text)}") from None
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} bounds must be finite; got {_echo(text)}")
    if kind == "intuniform":
        if not (low.is_integer() and high.is_integer()):
            raise ValueError(f"{name} bounds must be integers; got {_echo(text)}")
        low, high = int(low), int(high)
    if low >= high:
        raise ValueError(f"low must be < high; got {_echo(text)}")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs 0 < low < high (it samples log(value)); got {_echo(text)}")
    return SearchDistribution(kind, low=low, high=high)


def _number_or_value(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as text; a search value that reads as a number is one."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return number if math.isfinite(number) else value
    return value


def search_distribution(spec: Experiment, key: str, text: Any) -> SearchDistribution:
    """Parse ``search.<key>`` and check it against the spec: the key is a spec key (not a
    section), float ranges only for keys that take fractions, and both bounds and every choice
    are valid values of the key. Raises ValueError naming ``search.<key>``."""
    where = f"search.{key}"
    field = _leaf_field(key, where)
    try:
        distribution = parse_distribution(text)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if distribution.kind in ("uniform", "loguniform") and float not in (get_args(field.annotation) or (field.annotation,)):
        raise ValueError(f"{where}: {key} takes integers or names, not fractions; use intuniform(a, b) or choice(...)")
    values = distribution.choices or (distribution.low, distribution.high)
    raw = spec.model_dump(mode="json", exclude={"search"})
    for value in values:
        candidate = {**raw}
        set_dotted(candidate, _copied_path(candidate, key), value)
        try:
            validate(candidate)
        except BabysitError as exc:
            raise ValueError(f"{where}: {value!r} is not a valid value ({exc})") from None
    return distribution


def _leaf_field(key: str, where: str) -> Any:
    """The pydantic field a dotted key names; ValueError when it is no key or a whole section."""
    parts = key.split(".")
    model: type[BaseModel] = Experiment
    for i, part in enumerate(parts):
        field = model.model_fields.get(part) if part != "search" else None
        if field is None:
            inside = f"'{'.'.join(parts[:i])}'" if i else "the top level"
            keys = ", ".join(k for k in model.model_fields if k != "search")
            raise ValueError(f"{where}: not a spec key; keys at {inside}: {keys}")
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            if i == len(parts) - 1:
                keys = ", ".join(field.annotation.model_fields)
                raise ValueError(f"{where}: is a section, not a value; search one of its keys: {keys}")
            model = field.annotation
        elif i < len(parts) - 1:
            raise ValueError(f"{where}: '{'.'.join(parts[:i + 1])}' is a value, not a section")
        else:
            return field
    raise ValueError(f"{where}: not a spec key")  # unreachable: the loop returns or raises


def _copied_path(raw: dict[str, Any], key: str) -> list[str]:
    """Copy the sections along ``key`` in ``raw`` (a shallow copy of the spec's dict) so that
    setting the value does not touch the original; returns the key's parts."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node[part] = dict(node.get(part) or {})
        node = node[part]
    return parts


# --------------------------------------------------------------------------- errors


ECHO_CHARS = 80  # an error message quotes at most this much of the value it refuses
MAX_WIDTH = 1_000_000  # units or channels in one layer
NAME_MAX_CHARS = 100  # a run's name becomes a directory name (file systems allow 255 bytes)


def _echo(value: Any) -> str:
    """``repr(value)`` cut to :data:`ECHO_CHARS` characters (a huge value must not make a huge line)."""
    short = reprlib.Repr()  # Python 3.11's Repr takes no arguments
    short.maxstring, short.maxother, short.maxlist, short.maxdict, short.maxlevel = ECHO_CHARS, ECHO_CHARS, 8, 8, 3
    try:
        text = short.repr(value)
    except RecursionError:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= ECHO_CHARS else text[: ECHO_CHARS - 1] + "…"


# ---- reading YAML safely: no aliases (an alias bomb expands to gigabytes), no duplicate keys,
# a bounded nesting depth and file size
SPEC_MAX_BYTES = 1_000_000
YAML_MAX_DEPTH = 100


class _SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing aliases and duplicate keys and capping the nesting depth."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _YAMLRefused(f"line {mark.line + 1}: YAML aliases (*name) are not accepted; write the value out")
        self._depth += 1
        if self._depth > YAML_MAX_DEPTH:
            raise _YAMLRefused(f"nested more than {YAML_MAX_DEPTH} levels deep")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise _YAMLRefused(f"line {key_node.start_mark.line + 1}: key {_echo(key)} is given twice")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class _YAMLRefused(Exception):
    pass


def safe_yaml(text: str, where: str = "YAML") -> Any:
    """``text`` parsed as YAML without aliases, duplicate keys or deep nesting; a BabysitError
    naming ``where`` otherwise.

    Example
    -------
    >>> safe_yaml("a: [1, 2]")
    {'a': [1, 2]}
    >>> safe_yaml("a: &x [1]\\nb: *x", "spec.yaml")
    Traceback (most recent call last):
    ...
    babysit.errors.BabysitError: spec.yaml: line 2: YAML aliases (*name) are not accepted; write the value out
    """
    if len(text) > SPEC_MAX_BYTES:
        raise BabysitError(f"{where}: larger than {SPEC_MAX_BYTES // 1_000_000} MB; a spec is a few lines")
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 (a SafeLoader subclass)
    except _YAMLRefused as exc:
        raise BabysitError(f"{where}: {exc}") from None
    except RecursionError:
        raise BabysitError(f"{where}: nested too deep") from None


def _format_error(err: dict[str, Any]) -> str:
    """One line for one pydantic error: '<dotted.path>: <what is allowed>, got <value>'."""
    loc = [str(p) for p in err.get("loc", ()) if not str(p).startswith("function-")]
    # drop pydantic's union-branch markers such as 'int' or "literal['full']"
    path = ".".join(p for p in loc if not (p in ("int", "str", "float", "bool") or p.startswith(("literal[", "tuple[", "list["))))
    kind = err.get("type", "")
    given = err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        parent, _, key = path.rpartition(".")
        section = _section_at(parent)
        allowed = ", ".join(section.model_fields) if section else ""
        where = f"in '{parent}'" if parent else "at the top level"
        return f"{path}: unknown key {where}; allowed keys: {allowed}"
    if kind == "literal_error":
        expected = ctx.get("expected", "").replace("'", "")
        return f"{path}: must be one of {expected}; got {_echo(given)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"{path}: must be {sign} {bound}, got {_echo(given)}"
    if kind == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
        return f"{path}: {msg}" if path else msg
    msg = err.get("msg", "invalid value")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{path}: {msg}, got {_echo(given)}" if path else f"{msg}, got {_echo(given)}"


def _section_at(path: str) -> type[BaseModel] | None:
    model: type[BaseModel] = Experiment
    for part in [p for p in path.split(".") if p]:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model


def validate(raw: dict[str, Any]) -> Experiment:
    """Validate a plain dict as an :class:`Experiment`; the first problem becomes a BabysitError."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise BabysitError(f"spec: must be a mapping of keys to values, got {type(raw).__name__}")
    try:
        return Experiment.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = _format_error(errors[0])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise BabysitError(first + more) from None


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'model.hidden=[256,256]'`` -> (['model', 'hidden'], [256, 256]); values are YAML."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise BabysitError(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. optimizer.lr=0.01")
    try:
        parsed = safe_yaml(value, "override") if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def set_dotted(raw: dict[str, Any], path: list[str], value: Any) -> None:
    node = raw
    for part in path[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise BabysitError(f"override {'.'.join(path)}: '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


def apply_overrides(spec: Experiment | dict[str, Any], overrides: list[str]) -> Experiment:
    """Apply ``KEY=VALUE`` overrides (dotted keys, YAML values) and validate the result."""
    raw = spec.to_dict() if isinstance(spec, Experiment) else dict(spec or {})
    for text in overrides:
        path, value = parse_override(text)
        set_dotted(raw, path, value)
    return validate(raw)


# --------------------------------------------------------------------------- files


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file into a dict, with one-line errors for missing, empty or non-YAML files."""
    path = Path(path)
    if not path.exists():
        raise BabysitError(f"{path}: spec file not found")
    if path.is_dir():
        raise BabysitError(f"{path}: is a directory, expected a YAML spec file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BabysitError(f"{path}: cannot read spec file ({exc.__class__.__name__})") from None
    if not text.strip():
        raise BabysitError(f"{path}: spec file is empty; write at least 'name: my-run' or pass no spec for the default")
    try:
        raw = safe_yaml(text, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise BabysitError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise BabysitError(f"{path}: a spec must be a YAML mapping of keys to values, got {type(raw).__name__}")
    return raw


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Experiment:
    """Load a spec file (or the defaults when ``path`` is None) and apply overrides.

    A relative ``data.path`` is resolved against the spec file's folder when it exists there.
    The defaults' run is named ``default-<source>-<kind>`` unless ``name`` is given, so that
    ``babysit train`` (``make demo``) and ``examples/mnist1d-mlp.yaml`` write different folders.
    """
    raw = read_yaml(path) if path is not None else {}
    if isinstance(raw, dict) and raw.get("recorded_by") is not None:  # babysit.watch, the Lightning callback
        raise BabysitError(f"{path}: recorded by babysit.{raw['recorded_by']} from a training loop babysit did not "
                           "drive; not a spec babysit can train, resume or rebuild (babysit report and compare read it)")
    for text in overrides or []:
        keys, value = parse_override(text)
        set_dotted(raw, keys, value)
    spec = validate(raw)
    if path is None and spec.name is None:
        spec.name = f"default-{spec.data.source}-{spec.model.kind}"
    if path is not None and spec.data.path and not Path(spec.data.path).is_absolute():
        beside = Path(path).parent / spec.data.path
        if beside.exists() and not Path(spec.data.path).exists():
            spec.data.path = str(beside)
    return spec


def to_yaml(spec: Experiment) -> str:
    """The spec as the YAML text a run directory's ``config.yaml`` holds."""
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)


def save(spec: Experiment, path: str | Path) -> None:
    """Write the spec to ``path`` as YAML (a run directory's writes go through
    :func:`babysit.rundir.write_text`, which is atomic)."""
    Path(path).write_text(to_yaml(spec), encoding="utf-8")

