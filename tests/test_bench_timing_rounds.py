"""`bench.timing_rounds`: per-round ratios and the medians of a record's parts, on a record worked by hand."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

from bench import timing_rounds as tr

ROOT = Path(__file__).resolve().parents[1]

# three rounds: all-heavy 10, 10, 20 s; "mixed" 8, 9, 15 s, executed saving 0.25 -> savings 0.2, 0.1, 0.25 ->
# ratios 0.8, 0.4, 1.0; rounds 0-1 ran in worker 0, round 2 in worker 1
RECORD = {"reference": "all-heavy", "worker_of_round": [0, 0, 1], "schedules": [
    {"schedule": "all-heavy", "wall_s": [10.0, 10.0, 20.0], "executed_saving": 0.0},
    {"schedule": "mixed", "wall_s": [8.0, 9.0, 15.0], "executed_saving": 0.25}]}


def test_round_ratios_by_hand():
    ratios = tr.round_ratios(RECORD)
    assert list(ratios) == ["mixed"]  # the reference saves nothing, so has no ratio
    np.testing.assert_allclose(ratios["mixed"], [0.8, 0.4, 1.0])


def test_part_medians_by_hand():
    (w0, m0, a0, b0), (w1, m1, a1, b1) = tr.part_medians(np.array([0.8, 0.4, 1.0]), np.array([0, 0, 1]))
    assert (w0, w1) == (0, 1)
    assert math.isclose(m0, 0.6) and (a0, b0) == (0.8, 0.4)
    assert m1 == 1.0 and math.isnan(a1) and b1 == 1.0  # one round: no first half


def test_committed_record_agrees_with_its_own_figures():
    path = ROOT / "bench" / "records" / "timing-64-f24858e.json"
    record = json.loads(path.read_text())
    stored = {s["schedule"]: s["ratio_to_executed"]["point"] for s in record["schedules"] if s["ratio_to_executed"]}
    medians = {name: float(np.median(r)) for name, r in tr.round_ratios(record).items()}
    assert medians.keys() == stored.keys()
    for name, value in stored.items():
        # the record keeps round times to the microsecond, its ratios from the unrounded times
        assert math.isclose(medians[name], value, rel_tol=1e-5), name


def test_bad_record_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"schedules": []}))
    proc = subprocess.run([sys.executable, "-m", "bench.timing_rounds", str(bad)], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and str(bad) in proc.stderr and "Traceback" not in proc.stderr
