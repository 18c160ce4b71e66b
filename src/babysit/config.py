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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from babysit.errors import BabysitError

DataSource = Literal["mnist1d", "digits", "spirals", "blobs", "npz", "csv", "folder"]
Preprocess = Literal["center", "standardize", "pca_whiten", "zca_whiten"]
ModelKind = Literal[
    "mlp", "cnn", "resnet", "rnn", "gru", "lstm", "autoencoder", "gan", "gpt", "perceptron"
]
Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "prelu", "elu", "maxout", "sign"]
Norm = Literal["none", "batch", "layer", "group", "weight", "spectral"]
Init = Literal["zeros", "normal", "uniform", "lecun", "xavier", "kaiming", "orthogonal"]
LossName = Literal["mse", "mae", "cross_entropy", "nll", "bce", "hinge"]
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
    """Base of every spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataSpec(Section):
    source: DataSource = "mnist1d"
    path: str | None = None  # npz / csv / folder
    target: str | int | None = None  # csv: label column (name or index); default the last
    train_size: int | None = Field(None, gt=0)  # keep only the first N training examples
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)  # for sources without a test split
    samples: int | None = Field(None, gt=0)  # size of generated sets (mnist1d 5000, spirals 1500, blobs 1500)
    classes: int = Field(3, ge=2)  # spirals / blobs
    noise: float = Field(0.2, ge=0.0)  # spirals / blobs
    preprocess: list[Preprocess] = Field(default_factory=lambda: ["standardize"])
    batch_size: int | Literal["full"] = 128

    @field_validator("batch_size")
    @classmethod
    def _positive_batch(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"must be a positive integer or 'full', got {value}")
        return value

    @model_validator(mode="after")
    def _path_for_files(self) -> DataSpec:
        if self.source in ("npz", "csv", "folder") and not self.path:
            raise ValueError(f"data.path is required for source '{self.source}'")
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

    @field_validator("hidden", "channels")
    @classmethod
    def _positive_widths(cls, value: list[int]) -> list[int]:
        bad = [w for w in value if w < 1]
        if bad:
            raise ValueError(f"widths must be positive integers, got {value}")
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
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    log_every: int | None = Field(None, ge=1)  # steps between logged points (default: once an epoch)
    deterministic: bool = False  # torch.use_deterministic_algorithms (slower on CUDA)
    checkpoint_every_s: float = Field(10.0, ge=0.0)  # save last.pt at most this often (and after the last epoch)


class ChecksSpec(Section):
    preflight: bool = True
    monitors: bool = True
    every: int = Field(10, ge=1)
    explosion_factor: float = Field(3.0, gt=1.0)


class Experiment(Section):
    name: str | None = None  # default: "<data.source>-<model.kind>"
    seed: int = 0
    data: DataSpec = Field(default_factory=DataSpec)
    model: ModelSpec = Field(default_factory=ModelSpec)
    loss: LossName = "cross_entropy"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    regularization: RegularizationSpec = Field(default_factory=RegularizationSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and (not value or "/" in value or value in (".", "..")):
            raise ValueError(f"must be a non-empty name without '/', got {value!r}")
        return value

    @property
    def run_name(self) -> str:
        return self.name or f"{self.data.source}-{self.model.kind}"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- errors


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
        return f"{path}: must be one of {expected}; got {given!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        sign = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()), "?")
        return f"{path}: must be {sign} {bound}, got {given!r}"
    if kind == "value_error":
        msg = str(ctx.get("error", err.get("msg", "")))
        return f"{path}: {msg}" if path else msg
    msg = err.get("msg", "invalid value")
    msg = msg[0].lower() + msg[1:] if msg else msg
    return f"{path}: {msg}, got {given!r}" if path else f"{msg}, got {given!r}"


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
        parsed = yaml.safe_load(value) if value.strip() else None
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
        raw = yaml.safe_load(text)
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
    """
    raw = read_yaml(path) if path is not None else {}
    for text in overrides or []:
        keys, value = parse_override(text)
        set_dotted(raw, keys, value)
    spec = validate(raw)
    if path is not None and spec.data.path and not Path(spec.data.path).is_absolute():
        beside = Path(path).parent / spec.data.path
        if beside.exists() and not Path(spec.data.path).exists():
            spec.data.path = str(beside)
    return spec


def save(spec: Experiment, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False), encoding="utf-8")


def is_finite_number(value: float) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)
