"""The report: table, timing column, figures, the whole `mdlm report` on synthetic stage outputs, README block."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from mdlm import cli, prose
from mdlm.errors import UserError
from mdlm.io import read_json
from mdlm.patterns import Traversal
from mdlm.plots import plot_ppl_vs_flops
from mdlm.report import read_timing, write_plot_data
from mdlm.scores import PatternScores
from mdlm.search import SearchResult, compare_to_baseline, segment_sensitivity, write_result

ROOT = Path(__file__).resolve().parents[1]


def _row(name, light, full, ppl, delta=None):
    return {"schedule": name, "light_steps": light, "steps": 1000, "blocks_only_saving": light / 1000 * 2 / 3,
            "full_saving": full, "effective_saving": full, "executed_saving": light / 1000 * 0.66, "gen_ppl": ppl,
            "gen_ppl_ci_low": ppl * 0.9, "gen_ppl_ci_high": ppl * 1.1, "entropy": 4.2, "entropy_ci_low": 4.1,
            "entropy_ci_high": 4.3, "delta_log_ppl": delta, "ppl_ratio_pct": None if delta is None else 3.0,
            "ppl_ratio_pct_ci_low": None if delta is None else 1.0, "ppl_ratio_pct_ci_high": None if delta is None
            else 5.0}


def test_results_table_has_one_row_per_schedule_and_no_single_run_wall_clock():
    rows = [_row("all-heavy", 0, 0.0, 50.0), _row("sandwich", 250, 0.121, 51.5, 0.03)]
    table = prose.results_table(rows).splitlines()
    assert len(table) == 4 and "wall-clock" not in table[0]
    assert "| all-heavy | 0/1000 | **0.0%** (0.0% / 0.0% / 0.0%) |" in table[2] and "(baseline)" in table[2]
    assert ("| sandwich | 250/1000 | **16.5%** (16.7% / 12.1% / 12.1%) | 51.5 [46.4, 56.7] | +3.0% [+1.0%, +5.0%]"
            in table[3])


def _timing_record(name, point, low, high, executed=None, ratio=None, meets=None, rounds=None):
    return {"schedule": name, "realized_saving": {"point": point, "ci_low": low, "ci_high": high},
            "executed_saving": executed, "ratio_to_executed": ratio, "meets_target": meets,
            "rounds_to_show_target": rounds}


def test_wall_clock_column_only_from_a_controlled_measurement(tmp_path):
    path = tmp_path / "timing.json"
    assert read_timing(path) == {}
    path.write_text(json.dumps({"settings": {"rounds": 6}, "schedules": [
        _timing_record("all-heavy", 0.0, 0.0, 0.0), _timing_record("sandwich", 0.1, 0.08, 0.12),
        _timing_record("light-last", 0.09, None, None)]}))
    timing = read_timing(path)
    assert timing["all-heavy"] == {"wall_saving": 0.0, "wall_saving_ci_low": 0.0, "wall_saving_ci_high": 0.0}
    timing.pop("all-heavy")
    assert timing["sandwich"] == {"wall_saving": 0.1, "wall_saving_ci_low": 0.08, "wall_saving_ci_high": 0.12}
    rows = [_row("all-heavy", 0, 0.0, 50.0), {**_row("sandwich", 250, 0.121, 51.5, 0.03), **timing["sandwich"]},
            {**_row("light-last", 250, 0.121, 52.0, 0.04), **timing["light-last"]}]
    table = prose.results_table(rows).splitlines()
    assert "wall-clock saved [CI]" in table[0]
    assert "| – |" in table[2] and "| 10.0% [8.0%, 12.0%] |" in table[3]
    assert "| 9.0% |" in table[4]  # too few rounds for an interval: the median alone, no made-up bounds
    path.write_text(json.dumps({"settings": {}, "schedules": [{"schedule": "sandwich", "realized_saving": 0.1}]}))
    with pytest.raises(UserError, match="timing.json: not a `mdlm timing` record"):
        read_timing(path)


def test_untimed_schedules_are_named_under_the_results_table():
    timed = {"wall_saving": 0.1, "wall_saving_ci_low": 0.08, "wall_saving_ci_high": 0.12}
    rows = [{"schedule": "all-heavy", **timed}, {"schedule": "sandwich", **timed}, {"schedule": "light-last"},
            {"schedule": "interleaved", "wall_saving": None}]
    assert prose.untimed_note(rows) == ["Wall-clock saved: the controlled measurement of `mdlm timing`; – for "
                                        "light-last, interleaved, which this profile does not time "
                                        "(`timing.schedules`).", ""]
    assert prose.untimed_note(rows[:2]) == []  # every schedule timed
    assert prose.untimed_note(rows[2:]) == []  # no timing stage: no wall-clock column, nothing to explain


def test_timing_section_states_the_target_verdicts():
    timing = {"settings": {"threads": 1, "rounds": 6, "samples": 3, "slice_s": 0.25}, "schedules": [
        _timing_record("all-heavy", 0.0, 0.0, 0.0, 0.0),
        _timing_record("all-light", 0.66, 0.65, 0.67, 0.664, {"point": 0.994, "ci_low": 0.979, "ci_high": 1.01},
                       True),
        _timing_record("sandwich", 0.15, 0.10, 0.19, 0.167, {"point": 0.898, "ci_low": 0.599, "ci_high": 1.138},
                       False, None),
        _timing_record("light-first", 0.19, 0.12, 0.22, 0.188, {"point": 1.011, "ci_low": 0.638, "ci_high": 1.17},
                       False, 41),
        _timing_record("light-last", 0.09, 0.05, 0.12, 0.095, {"point": 0.947, "ci_low": 0.526, "ci_high": 1.26}),
        _timing_record("interleaved", 0.10, 0.09, 0.11, 0.18, {"point": 0.556, "ci_low": 0.5, "ci_high": 0.611},
                       False, None)]}
    lines = prose.timing_section(timing)
    assert lines[0] == "## Wall-clock vs executed FLOPs"
    assert "every schedule in one process (1 thread each), 6 rounds of 3 samples, the schedules' runs " \
        "interleaved in slices of 0.25 s" in lines[2]
    assert "separate runs of the stage on one machine can differ by more" in lines[2]
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ")}
    assert rows["all-light"] == "| all-light | 66.4% | 66.0% [65.0%, 67.0%] | 0.994 [0.979, 1.010] | yes | – |"
    assert rows["sandwich"].endswith("| 0.898 [0.599, 1.138] | not shown | none |")  # straddles 0.95
    assert rows["light-first"].endswith("| not shown | 41 |")
    assert rows["light-last"].endswith("| n/a (< 10% saved) | – |")
    assert rows["interleaved"].endswith("| 0.556 [0.500, 0.611] | no | none |")  # all of it below 0.95
    workers = prose.timing_section({**timing, "batch_size": 16,
                                    "settings": {**timing["settings"], "workers": 2, "samples": 16}})
    assert "every schedule in each of 2 worker processes running at once, which share the rounds (1 thread " \
        "each), 6 rounds of 16 samples (at most 16 rows per call)," in workers[2]
    older = prose.timing_section({**timing, "settings": {"threads": 1, "rounds": 6, "samples": 3}})
    assert "the schedules one after another in rotated order" in older[2]  # a record from before the slices
    assert "This profile times" not in lines[2]  # every schedule of the pipeline was timed
    two = {**timing["settings"], "schedules": ["all-heavy", "all-light"]}
    subset = prose.timing_section({**timing, "settings": two})
    assert "This profile times 2 schedules (`timing.schedules`: all-heavy, all-light)" in subset[2]
    assert "`timing.schedules: null` times every schedule of the pipeline." in subset[2]
    assert prose.timing_section(None) == []


def test_figure_and_plot_data_are_written(tmp_path):
    rows = [_row("all-heavy", 0, 0.0, 50.0), _row("sandwich", 250, 0.121, 51.5, 0.03)]
    extra = [{"name": "LLHHHHHH", "kind": "search", "full_saving": 0.121, "gen_ppl": 52.0, "delta_log_ppl": 0.04}]
    plot_ppl_vs_flops(rows, extra, tmp_path / "f.png")
    write_plot_data(rows, extra, tmp_path)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "ppl_vs_flops.csv").read_text().splitlines()
    assert lines[0].startswith("name,kind,full_flops_fraction") and len(lines) == 4
    assert lines[2].startswith("sandwich,schedule,0.879000")


def test_readme_block_is_what_the_report_generates():
    """README.md's results block equals `prose.readme_block` of the committed reports/summary.json."""
    summary_path = ROOT / "reports" / "summary.json"
    summary = read_json(summary_path) if summary_path.is_file() else None
    assert prose.readme_section((ROOT / "README.md").read_text(encoding="utf-8")) == prose.readme_block(summary)


# ---- `mdlm report` on synthetic stage outputs ------------------------------------------------------------

SCHEDULES = {"all-heavy": 0.0, "all-light": 0.4, "sandwich": 0.05, "light-first": 0.05, "light-last": 0.2,
             "light-middle": 0.1}
N = 32


def _project(tmp_path):
    root = tmp_path / "project"
    (root / "schedules").mkdir(parents=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params.update(profile="smoke", schedules=list(SCHEDULES))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    shutil.copy(ROOT / "README.md", root / "README.md")
    run = root / "runs" / "smoke"
    rng = np.random.default_rng(0)
    base, tok = rng.uniform(5, 6, N), np.full(N, 50)
    heavy = None
    for name, shift in SCHEDULES.items():
        nll = (base + shift + rng.normal(0, 0.02, N)) * tok
        heavy = nll if heavy is None else heavy  # all-heavy comes first
        _write_per_sample(run, name, nll, rng)
        _write(run / "metrics" / f"{name}.json", json.dumps(_metrics(name, shift)))
        light = 0 if name == "all-heavy" else 64 if name == "all-light" else 16
        _write(run / "flops" / f"{name}.json", json.dumps({
            "steps": 64, "steps_per_model": {"heavy": 64 - light, "light": light}, "blocks_only_saving": light / 96,
            "full_saving": light / 128, "effective_saving_vs_baseline": light / 128,
            "stage_time": {"wall_s": 2.0, "cpu_s": 1.5}}))
    # a search on its own sample range, and its pick evaluated on the evaluation range
    scores = {p: PatternScores(rng.normal(300, 10, 4), np.full(4, 50), np.full(4, 4.2)) for p in ("HHHH", "LHHH",
                                                                                                   "HHHL")}
    result = SearchResult(4, 1, 64, 0, list(range(100_000, 100_004)), "HHHH", scores,
                          compare_to_baseline(scores, "HHHH", 64, B=50), segment_sensitivity(scores, "HHHH", B=50),
                          Traversal("trie", 0, 0))
    write_result(result, run / "search", "search", "search")
    _write(run / "metrics" / "search-best.json", json.dumps(_metrics("search-best", 0.02)))
    _write_per_sample(run, "search-best", heavy + 0.02 * tok, rng)  # exactly +0.02 nats/token on every sample
    return root, run


def _write_per_sample(run, name, nll, rng):
    rows = [{"seed": 0, "sample_index": i, "nll_sum": float(nll[i]), "n_tokens": 50,
             "entropy": float(4.2 + rng.normal(0, 0.01))} for i in range(len(nll))]
    _write(run / "metrics" / f"{name}.per_sample.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _metrics(name, shift):
    return {"schedule": name, "num_samples": N, "judge": "toy", "gen_ppl": float(np.exp(5.5 + shift)),
            "gen_ppl_ci_low": 1.0, "gen_ppl_ci_high": 2.0, "entropy": 4.2, "entropy_ci_low": 4.1,
            "entropy_ci_high": 4.3, "delta_log_ppl": shift, "delta_log_ppl_ci_low": shift - 0.01,
            "delta_log_ppl_ci_high": shift + 0.01, "ppl_ratio_pct": 100 * np.expm1(shift),
            "ppl_ratio_pct_ci_low": 0.0, "ppl_ratio_pct_ci_high": 0.0}


def test_report_writes_everything_from_the_outputs(tmp_path, monkeypatch, capsys):
    root, run = _project(tmp_path)
    monkeypatch.setenv("MDLM_ROOT", str(root))
    assert cli.main(["report", "--profile", "smoke"]) == 0
    summary = read_json(root / "reports" / "summary.json")
    verdicts = {c["id"]: c["verdict"] for c in summary["claims"]["claims"]}
    # light-first ≈ sandwich < light-middle < light-last: a1 reproduced, a2 contradicted (shift 0.2 vs 0.1)
    assert verdicts["a1"] == "reproduced" and verdicts["a2"] == "contradicted"
    b = next(c for c in summary["claims"]["claims"] if c["id"] == "b")
    assert {c["contrast"] for c in b["comparisons"]} == {"sandwich − light-first", "sandwich − light-last",
                                                         "sandwich − light-middle"}
    held = summary["heldout"][0]
    assert held["schedule"] == "search-best" and held["in_sample"]["n"] == 4
    assert held["held_out"]["point"] == pytest.approx(0.02) and held["held_out"]["n"] == N
    readme = (root / "README.md").read_text()
    assert prose.readme_section(readme) == prose.readme_block(summary)
    md = (root / "reports" / "results.md").read_text()
    assert "(a1) Early steps tolerate the light model better than middle steps: **reproduced**" in md
    assert "wall-clock" not in md and "in-sample" in md and str(root) not in md.split("## Machine")[0]
    # stage times: the six flops stages carry 2.0 s wall, 1.5 s CPU each; nothing else but the report itself
    times = md.split("## Stage times", 1)[1].split("## Machine")[0]
    assert "| flops@light-middle | 2.0 s | 1.5 s |" in times and "| sample@sandwich | – | – |" in times
    # 4 untimed + importance + 3 x 6 per schedule + timing, search, optimize + 6 derived + frontier + report
    assert "| report | – |" not in times and "| **total** (7 of 34 stages recorded) |" in times
    assert "Stage times:" in readme and "summed over the 7 of 34 pipeline stages" in readme
    assert "claims: a1 reproduced, a2 contradicted" in capsys.readouterr().out


def test_report_bad_input_leaves_no_partial_report(tmp_path, monkeypatch, capsys):
    root, run = _project(tmp_path)
    monkeypatch.setenv("MDLM_ROOT", str(root))
    readme_before = (root / "README.md").read_text()
    (run / "metrics" / "light-last.per_sample.jsonl").unlink()
    assert cli.main(["report", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "light-last.per_sample.jsonl" in err
    assert not (root / "reports").exists() and (root / "README.md").read_text() == readme_before
    # misaligned sample indices
    _project(tmp_path / "second")
    root, run = tmp_path / "second" / "project", tmp_path / "second" / "project" / "runs" / "smoke"
    monkeypatch.setenv("MDLM_ROOT", str(root))
    lines = (run / "metrics" / "sandwich.per_sample.jsonl").read_text().splitlines()
    rows = [json.loads(x) for x in lines]
    rows[0]["sample_index"] = 999
    (run / "metrics" / "sandwich.per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert cli.main(["report", "--profile", "smoke"]) == 2
    assert "do not pair" in capsys.readouterr().err and not (root / "reports").exists()


@pytest.mark.parametrize("override", ["search.first_index=2", "claims.sandwich_margin=0"])
def test_report_rejects_bad_profiles(tmp_path, monkeypatch, capsys, override):
    root, _ = _project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    key, value = override.split("=")
    section, field = key.split(".")
    params["profiles"]["smoke"].setdefault(section, {})[field] = yaml.safe_load(value)
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("MDLM_ROOT", str(root))
    assert cli.main(["report", "--profile", "smoke"]) == 2
    assert "profiles.smoke" in capsys.readouterr().err and not (root / "reports").exists()


def test_sections_say_which_stage_did_not_run(tmp_path):
    from mdlm import report

    run = tmp_path / "runs" / "smoke"
    md, points = report.search_section(run, {}, None)
    assert "Not run (runs/smoke/search/search.json missing)." in md and points == []
    assert "Not run (runs/smoke/importance/importance.json missing)." in report.importance_section(run)
    assert report.swap_section(run) == []
