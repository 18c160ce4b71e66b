"""Users see no change: every example spec and each run-path option, shortened, ends as the
golden figures recorded in tests/golden/figures.json (see tests/golden/record.py).

On the machine that recorded them (same torch, processor and thread count) the final weights'
hash, every summary number and the finding ids must be identical. Elsewhere floating point
differs, so only what holds on every machine is compared: the summary's keys, the epochs and
steps, the parameter count and the run directory's files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "golden"))
import record  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
GOLDEN = json.loads(record.FIGURES.read_text())


@pytest.mark.parametrize("case", sorted(record.CASES))
def test_a_run_ends_as_recorded(case, tmp_path):
    expected = GOLDEN["cases"][case]
    got = record.figures_of(case, tmp_path / case)
    assert got["files"] == expected["files"]
    assert sorted(got["summary"]) == sorted(expected["summary"])
    for key in ("epochs", "steps", "parameters", "name"):
        assert got["summary"][key] == expected["summary"][key], key
    if record.fingerprint() != GOLDEN["fingerprint"]:
        pytest.skip("weights and numbers are compared exactly only on the machine that recorded them")
    assert got["findings"] == expected["findings"]
    assert got["summary"] == expected["summary"]
    assert got["weights"] == expected["weights"]
