"""Stage times: the command clock (`mdlm.clock`), reading them back (`mdlm.stage_times`) and their prose."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from mdlm import clock, prose, stage_times
from mdlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_clock_measures_wall_and_cpu_since_start():
    clock.start()
    time.sleep(0.2)  # wall time without CPU
    slept = clock.elapsed()
    assert slept["wall_s"] >= 0.2 and slept["cpu_s"] < 0.15
    clock.start()  # a second command in the same process starts from zero
    deadline = time.perf_counter() + 0.2
    while time.perf_counter() < deadline:  # busy: CPU time about equal to the wall time
        pass
    busy = clock.elapsed()
    assert 0.2 <= busy["wall_s"] < 1.0 and busy["cpu_s"] >= 0.1


def _write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_stage_names_and_order_are_dvc_yaml_s():
    """The stages the report lists are dvc.yaml's (foreach expanded over params.yaml's schedules), in order."""
    schedules = yaml.safe_load((ROOT / "params.yaml").read_text())["schedules"]
    expected = []
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        items = stage.get("foreach")
        if items is None:
            expected.append(name)
        else:
            keys = schedules if items == "${schedules}" else list(items)  # a list, or a dict's keys
            expected += [f"{name}@{k}" for k in keys]
    listed = [s for s, _ in stage_times.stage_files(Path("run"), schedules)] + ["report"]
    assert listed == expected


def test_collect_reads_each_stage_from_its_output(tmp_path):
    run = tmp_path / "runs" / "smoke"
    schedules = ["all-heavy", "sandwich"]
    _write(run / "importance" / "importance.json", {"bins": [], "stage_time": {"wall_s": 100.0, "cpu_s": 150.5}})
    _write(run / "samples" / "all-heavy.meta.json", {"stage_time": {"wall_s": 20.0, "cpu_s": 19.0}})
    _write(run / "samples" / "sandwich.meta.json", {"wall_time_s": 3.0})  # made before stages kept their time
    _write(run / "metrics" / "sandwich.json", {"stage_time": {"wall_s": 12.5, "cpu_s": 30.0}})
    _write(run / "optimize" / "optimized.json", {"stage_time": {"wall_s": 3.0, "cpu_s": 2.0}})
    _write(run / "optimize" / "optimized-25.json", {"stage_time": {"wall_s": 4.0, "cpu_s": 3.5}})
    _write(run / "metrics" / "search-best.json", {"stage_time": {"wall_s": 0.5, "cpu_s": 0.25}})
    rows = {r["stage"]: (r["wall_s"], r["cpu_s"]) for r in stage_times.collect(run, schedules)}
    assert rows["importance"] == (100.0, 150.5) and rows["sample@all-heavy"] == (20.0, 19.0)
    assert rows["optimize"] == (7.0, 5.5)  # the two `mdlm optimize` runs of the stage
    assert rows["evaluate@sandwich"] == (12.5, 30.0) and rows["evaluate-derived@search-best"] == (0.5, 0.25)
    for untimed in ("assets", "prepare", "train@heavy", "sample@sandwich", "evaluate@all-heavy", "timing",
                    "frontier", "sample-derived@optimized"):
        assert rows[untimed] == (None, None), untimed
    table = stage_times.with_report(stage_times.collect(run, schedules), {"wall_s": 2.0, "cpu_s": 1.75})
    assert table["stages"][-1] == {"stage": "report", "wall_s": 2.0, "cpu_s": 1.75}
    # 100 + 20 + 12.5 + 7 + 0.5 + 2 wall; 150.5 + 19 + 30 + 5.5 + 0.25 + 1.75 CPU; 6 of 4 + 1 + 6 + 2 + 1 + 6 + 1 + 1
    # stages (untimed; importance; sample/evaluate/flops x 2; timing, search; optimize; derived x 6; frontier; report)
    assert table["total"] == {"wall_s": 142.0, "cpu_s": 207.0, "recorded": 6, "stages": 22}


def test_one_untimed_optimize_run_leaves_the_stage_untimed(tmp_path):
    run = tmp_path / "run"
    _write(run / "optimize" / "optimized.json", {"stage_time": {"wall_s": 3.0, "cpu_s": 2.0}})
    assert stage_times.stage_time([run / "optimize" / "optimized.json", run / "optimize" / "optimized-25.json"]) \
        is None


@pytest.mark.parametrize("record", [{"wall_s": 1.0}, {"wall_s": "x", "cpu_s": 1.0}, {"wall_s": -1, "cpu_s": 0},
                                    [1, 2], {"wall_s": float("nan"), "cpu_s": 1.0}])
def test_malformed_stage_time_is_a_one_line_error(tmp_path, record):
    path = tmp_path / "metrics" / "a.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"stage_time": record}))
    with pytest.raises(UserError, match=r"metrics/a.json: stage_time must be"):
        stage_times.recorded_time(path)


@pytest.mark.parametrize("seconds, text", [(None, "–"), (0.04, "0.0 s"), (12.34, "12.3 s"), (59.9, "59.9 s"),
                                           (59.96, "1 min 0 s"), (129.4, "2 min 9 s"), (1074.0, "17 min 54 s"),
                                           (3599.4, "59 min 59 s"), (3900.0, "1 h 5 min")])
def test_duration(seconds, text):
    assert prose.duration(seconds) == text


def _times():
    rows = [{"stage": "assets", "wall_s": None, "cpu_s": None},
            {"stage": "sample@sandwich", "wall_s": 40.0, "cpu_s": 41.5},
            {"stage": "evaluate@sandwich", "wall_s": 80.0, "cpu_s": 150.0}]
    return stage_times.with_report(rows, {"wall_s": 3.0, "cpu_s": 2.5})


def test_stage_time_table_and_total():
    lines = prose.stage_time_table(_times()).splitlines()
    assert lines[0] == "| stage | wall | CPU |"
    assert lines[2:] == ["| assets | – | – |", "| sample@sandwich | 40.0 s | 41.5 s |",
                         "| evaluate@sandwich | 1 min 20 s | 2 min 30 s |", "| report | 3.0 s | 2.5 s |",
                         "| **total** (3 of 4 stages recorded) | **2 min 3 s** | **3 min 14 s** |"]
    section = "\n".join(prose.stage_time_section(_times()))
    assert section.startswith("## Stage times") and "| **total** (3 of 4 stages recorded)" in section
    assert prose.stage_time_section(None) == []


def test_readme_block_states_the_total_only_when_recorded():
    summary = json.loads((ROOT / "reports" / "summary.json").read_text())  # the committed report's
    summary.pop("stage_times", None)
    assert "Stage times" not in prose.readme_block(summary)
    block = prose.readme_block({**summary, "stage_times": _times()})
    assert ("Stage times: 2 min 3 s wall, 3 min 14 s CPU in all, summed over the 3 of 4 pipeline stages that record "
            "their time") in block
    assert "| sample@sandwich |" not in block  # the table is the report's, not the README's
