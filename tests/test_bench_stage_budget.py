"""`bench.stage_budget`: stage names to groups, and the sums, on stage times worked by hand."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench import stage_budget as sb
from mdlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

STAGES = [
    {"stage": "assets", "wall_s": None, "cpu_s": None},
    {"stage": "importance", "wall_s": 100.0, "cpu_s": 150.0},
    {"stage": "sample@all-heavy", "wall_s": 50.0, "cpu_s": 100.0},
    {"stage": "evaluate@all-heavy", "wall_s": 20.0, "cpu_s": 30.0},
    {"stage": "flops@all-heavy", "wall_s": 3.0, "cpu_s": 3.0},
    {"stage": "timing", "wall_s": 300.0, "cpu_s": 590.0},
    {"stage": "search", "wall_s": 180.0, "cpu_s": 350.0},
    {"stage": "optimize", "wall_s": 6.0, "cpu_s": 6.0},
    {"stage": "sample-derived@optimized", "wall_s": 40.0, "cpu_s": 80.0},
    {"stage": "sample-derived@search-best", "wall_s": 45.0, "cpu_s": 85.0},
    {"stage": "evaluate-derived@optimized", "wall_s": 25.0, "cpu_s": 40.0},
    {"stage": "evaluate-derived@optimized-25", "wall_s": 26.0, "cpu_s": 41.0},
    {"stage": "frontier", "wall_s": 170.0, "cpu_s": 330.0},
    {"stage": "report", "wall_s": 2.0, "cpu_s": 2.0},
]


def test_groups_by_hand():
    g = sb.grouped(STAGES)
    assert g["main"] == {"wall_s": 73.0, "cpu_s": 133.0, "stages": 3}
    assert g["timing"] == {"wall_s": 300.0, "cpu_s": 590.0, "stages": 1}
    # importance, search, optimize and the optimizer's schedule: 100 + 180 + 6 + 40 + 25
    assert g["optimizer"] == {"wall_s": 351.0, "cpu_s": 626.0, "stages": 5}
    assert g["extras"] == {"wall_s": 241.0, "cpu_s": 456.0, "stages": 3}  # search-best, optimized-25, frontier
    assert g["report"] == {"wall_s": 2.0, "cpu_s": 2.0, "stages": 1}


def test_an_unknown_stage_is_an_error():
    with pytest.raises(UserError, match="'distill'"):
        sb.group_of("distill")


def test_the_command_prints_cumulative_times_and_the_unrecorded_rest(tmp_path):
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"stage_times": {"stages": STAGES}}))
    out = subprocess.run([sys.executable, "-m", "bench.stage_budget", str(summary), "--dvc-seconds", "1000"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    lines = {line.split()[0]: line for line in out.splitlines()[1:6]}
    assert lines["optimizer"].endswith("12 min  4.0 s")  # 73 + 300 + 351 = 724 s
    assert lines["extras"].endswith("16 min  7.0 s")  # + 2 + 241 = 967 s
    assert "0 min 33.0 s of 16 min 40.0 s" in out  # 1000 - 967
