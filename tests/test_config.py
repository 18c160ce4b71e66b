"""The spec: defaults, overrides, and one clear line for every bad field."""

import pytest

from babysit import config
from babysit.config import Experiment, apply_overrides
from babysit.errors import BabysitError


def test_empty_spec_is_the_default_mnist1d_mlp():
    spec = config.validate({})
    assert spec.data.source == "mnist1d"
    assert spec.model.kind == "mlp" and spec.model.hidden == [100, 100]
    assert spec.run_name == "mnist1d-mlp"
    assert spec.loss == "cross_entropy"


def test_every_design_key_exists():
    # the keys DESIGN.md's spec names are the interface
    spec = Experiment().to_dict()
    expected = {
        "data": ["source", "path", "train_size", "val_fraction", "preprocess", "batch_size"],
        "model": ["kind", "hidden", "activation", "norm", "dropout", "init", "init_std", "bias_init", "residual"],
        "optimizer": ["name", "lr", "momentum", "weight_decay"],
        "schedule": ["name", "warmup_steps"],
        "regularization": ["l1", "max_norm", "activity", "input_noise"],
        "train": ["epochs", "device", "compile", "precision", "early_stopping"],
        "checks": ["preflight", "monitors", "every", "explosion_factor"],
    }
    for section, keys in expected.items():
        for key in keys:
            assert key in spec[section], f"{section}.{key}"
    assert spec["train"]["early_stopping"] == {"monitor": "val_loss", "patience": 10, "min_delta": 0.0}
    assert "name" in spec and "seed" in spec and "loss" in spec


def test_overrides_parse_yaml_values():
    spec = apply_overrides(Experiment(), ["optimizer.lr=0.01", "model.hidden=[256,256]", "data.batch_size=full",
                                          "train.early_stopping.patience=3", "data.preprocess=[center]"])
    assert spec.optimizer.lr == 0.01
    assert spec.model.hidden == [256, 256]
    assert spec.data.batch_size == "full"
    assert spec.train.early_stopping.patience == 3
    assert spec.data.preprocess == ["center"]


def test_batch_size_one_and_full():
    assert config.validate({"data": {"batch_size": 1}}).data.batch_size == 1
    assert config.validate({"data": {"batch_size": "full"}}).data.batch_size == "full"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"optimizer": {"lr": -0.1}}, "optimizer.lr: must be > 0"),
        ({"model": {"activation": "relux"}}, "model.activation: must be one of"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"model": {"widht": 3}}, "model.widht: unknown key in 'model'"),
        ({"train": {"early_stopping": {"patiense": 3}}}, "train.early_stopping.patiense: unknown key"),
        ({"data": {"batch_size": 0}}, "data.batch_size"),
        ({"train": {"epochs": "many"}}, "train.epochs"),
        ({"model": {"hidden": [10, 0]}}, "model.hidden"),
        ({"data": {"source": "npz"}}, "data.path is required"),
        ({"model": {"dropout": 1.0}}, "model.dropout: must be < 1"),
        ({"loss": "l2"}, "loss: must be one of"),
        ({"optimizer": "adam"}, "optimizer"),
        ({"data": {"val_fraction": 1.5}}, "data.val_fraction"),
    ],
)
def test_bad_fields_are_one_line_naming_the_field(raw, expected):
    with pytest.raises(BabysitError) as info:
        config.validate(raw)
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_override_errors():
    with pytest.raises(BabysitError, match="expected KEY=VALUE"):
        apply_overrides(Experiment(), ["optimizer.lr"])
    with pytest.raises(BabysitError, match="'lr' is a value, not a section"):
        apply_overrides(Experiment(), ["optimizer.lr.x=1"])


def test_files(tmp_path):
    with pytest.raises(BabysitError, match="spec file not found"):
        config.load(tmp_path / "missing.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("  \n")
    with pytest.raises(BabysitError, match="empty"):
        config.load(empty)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(BabysitError, match="not valid YAML"):
        config.load(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(BabysitError, match="mapping"):
        config.load(scalar)
    good = tmp_path / "good.yaml"
    good.write_text("name: x\noptimizer: {name: adam, lr: 0.003}\n")
    spec = config.load(good, ["train.epochs=2"])
    assert spec.optimizer.name == "adam" and spec.train.epochs == 2 and spec.run_name == "x"
    config.save(spec, tmp_path / "saved.yaml")
    assert config.load(tmp_path / "saved.yaml") == spec


def test_relative_data_path_resolves_beside_the_spec(tmp_path):
    (tmp_path / "d.npz").write_bytes(b"")
    spec_file = tmp_path / "s.yaml"
    spec_file.write_text("data: {source: npz, path: d.npz}\n")
    spec = config.load(spec_file)
    assert spec.data.path == str(tmp_path / "d.npz")
