"""The command line: training end to end, and bad input that ends in one line and exit code 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import FAST, run_cli


def test_train_writes_the_run_directory(tmp_path, capsys):
    code, out, err = run_cli(["train", *FAST, "--out", str(tmp_path / "run"), "-q"], capsys)
    assert code == 0, err
    assert "run directory:" in out and "results" in out
    assert re.search(r"test\W+\d\.\d{4}\W+\d+\.\d\d%", out), out
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (tmp_path / "run" / name).exists(), name
    assert list((tmp_path / "run" / "tb").glob("events.out.tfevents.*"))


def test_default_run_directory_never_overwrites(tmp_path, capsys):
    for _ in range(2):
        code, _, err = run_cli(["train", *FAST, "name=twice", "-q"], capsys, cwd=tmp_path)
        assert code == 0, err
    assert (tmp_path / "runs" / "twice" / "summary.json").exists()
    assert (tmp_path / "runs" / "twice-2" / "summary.json").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def bad_inputs(tmp: Path) -> list[tuple[list[str], str]]:
    """(arguments, text the one error line must contain)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=50)
    x_nan = x.copy()
    x_nan[3, 1] = np.nan
    spec = lambda name, text: str(_write(tmp / name, text))  # noqa: E731
    data_spec = lambda name, path: spec(name, f"data: {{source: npz, path: {path}}}\n")  # noqa: E731
    return [
        ([spec("unknown.yaml", "modle: {kind: mlp}\n")], "modle: unknown key"),
        ([spec("nested.yaml", "model: {hiden: [10]}\n")], "model.hiden: unknown key"),
        ([spec("type.yaml", "train: {epochs: ten}\n")], "train.epochs"),
        ([spec("neglr.yaml", "optimizer: {lr: -0.1}\n")], "optimizer.lr: must be > 0"),
        ([spec("act.yaml", "model: {activation: swishy}\n")], "model.activation: must be one of"),
        ([spec("notyaml.yaml", "model: {kind: [mlp\n")], "not valid YAML"),
        ([spec("empty.yaml", "")], "empty"),
        ([spec("list.yaml", "- a\n- b\n")], "mapping"),
        ([str(tmp / "nope.yaml")], "nope.yaml: spec file not found"),
        ([data_spec("missing.yaml", tmp / "missing.npz")], "missing.npz"),
        ([data_spec("len.yaml", _npz(tmp / "len.npz", x=x, y=y[:40]))], "len.npz"),
        ([data_spec("nan.yaml", _npz(tmp / "nan.npz", x=x_nan, y=y))], "nan.npz"),
        ([data_spec("neg.yaml", _npz(tmp / "neg.npz", x=x, y=y - 1))], "neg.npz"),
        ([data_spec("range.yaml", _npz(tmp / "range.npz", x=x, y=y, x_test=x[:5], y_test=np.array([0, 1, 2, 9, 1])))], "range.npz"),
        ([data_spec("noy.yaml", _npz(tmp / "noy.npz", x=x))], "noy.npz"),
        ([data_spec("garbage.yaml", _write(tmp / "garbage.npz", "not a zip file"))], "garbage.npz"),
        ([spec("csvmissing.yaml", f"data: {{source: csv, path: {tmp / 'none.csv'}}}\n")], "none.csv"),
        ([spec("csvtext.yaml", f"data: {{source: csv, path: {_write(tmp / 'text.csv', 'a,b,label' + chr(10) + '1,x,0' + chr(10) + '2,y,1' + chr(10))}}}\n")], "text.csv"),
        (["optimizer.lr=-1"], "optimizer.lr: must be > 0"),
        (["optimizer.lr"], "KEY=VALUE"),
        (["model.kind=gpt"], "model.kind"),
        (["data.source=npz"], "data.path is required"),
        (["loss=cross_entropy", "data.source=npz", f"data.path={_npz(tmp / 'reg.npz', x=x, y=rng.normal(size=50))}"], "cross_entropy"),
    ]


def test_bad_input_is_one_line_exit_2_no_traceback(tmp_path, capsys):
    cases = bad_inputs(tmp_path)
    assert len(cases) >= 15
    for args, expected in cases:
        code, out, err = run_cli(["train", *args, "-q", "--out", str(tmp_path / "never")], capsys)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (args, err, out)
        assert len(lines) == 1, (args, err)
        assert lines[0].startswith("error: "), (args, err)
        assert expected in lines[0], (args, lines[0])
        assert "Traceback" not in err + out


def test_resume_needs_a_checkpoint(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "--out", str(tmp_path / "fresh"), "--resume"], capsys)
    assert code == 2 and "not a babysit run (no config.yaml); nothing to resume" in err


def test_console_script_and_module_entry(tmp_path):
    exe = Path(sys.executable).with_name("babysit")
    result = subprocess.run([str(exe), "train", "optimizer.lr=-1"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: optimizer.lr: must be > 0.0, got -1"
    result = subprocess.run([sys.executable, "-m", "babysit", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.parametrize("args", [["--help"], ["train", "--help"]])
def test_help_explains(args, capsys):
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert "babysit" in out.lower() or "spec" in out.lower()


def test_usage_errors_exit_2_without_traceback(capsys):
    code, out, err = run_cli(["train", "--bogus"], capsys)
    assert code == 2 and "No such option" in err and "Traceback" not in err
    code, out, err = run_cli([], capsys)
    assert code == 2 and "train" in out + err and "Traceback" not in out + err


def test_check_runs_only_the_preflight(tmp_path, capsys):
    code, out, err = run_cli(["check", *FAST], capsys, cwd=tmp_path)
    assert code == 0, err
    assert "no problems found" in out
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written
    code, out, err = run_cli(["check", *FAST, "model.init=zeros"], capsys, cwd=tmp_path)
    assert "symmetric_init" in out
    code, out, err = run_cli(["check", "optimizer.lr=-1"], capsys)
    assert code == 2 and err.startswith("error: optimizer.lr")


def test_train_writes_preflight_findings(tmp_path, capsys):
    code, _, err = run_cli(["train", *FAST, "model.init=zeros", "--out", str(tmp_path / "z"), "-q"], capsys)
    assert code == 0, err
    findings = json.loads((tmp_path / "z" / "findings.json").read_text())
    assert any(f["id"] == "symmetric_init" for f in findings)
    for f in findings:
        assert {"id", "severity", "message", "advice", "evidence"} <= set(f)
    code, _, err = run_cli(["train", *FAST, "checks.preflight=false", "--out", str(tmp_path / "off"), "-q"], capsys)
    assert code == 0
    from babysit.checks.findings import PREFLIGHT_IDS

    after = json.loads((tmp_path / "off" / "findings.json").read_text())  # monitors and diagnosis only
    assert not any(f["id"] in PREFLIGHT_IDS for f in after)
