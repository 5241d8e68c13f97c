"""Budgeted schedule optimizer, signal choice by rank correlation, report numbers and the paper's claims."""

from __future__ import annotations

import itertools
import json
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from mdlm import claims, cli, flops, optimize, report, search
from mdlm import patterns as pat
from mdlm.commands.optimize import model_costs, model_forward_macs
from mdlm.errors import UserError
from mdlm.profiles import load_profile
from mdlm.schedule import load_schedule
from mdlm.scores import PatternScores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))


# ---- budget -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", ["smoke", "tiny"])
@pytest.mark.parametrize("share", ["0.001", "0.1", "0.2501", "0.5", "0.9999", "1"])
def test_budget_met_exactly_or_just_exceeded(profile, share):
    costs = model_costs(load_profile(profile))
    T = 1000
    all_light = Fraction(costs["heavy"] - costs["light"], costs["heavy"])
    b = Fraction(share) * all_light  # a share of the largest possible saving, so every budget is feasible
    n = optimize.light_steps_for_budget(b, T, costs["heavy"], costs["light"])
    assert optimize.exact_saving(n, T, costs["heavy"], costs["light"]) >= b
    assert optimize.exact_saving(n - 1, T, costs["heavy"], costs["light"]) < b
    # flops.py's float accounting of the same step counts agrees
    realised = flops.saving({"heavy": T - n, "light": n}, costs)
    assert realised == pytest.approx(float(optimize.exact_saving(n, T, costs["heavy"], costs["light"])))


def test_sandwich_budget_gives_its_light_steps():
    costs = model_costs(load_profile("tiny"))
    budget, source = optimize.parse_budget("sandwich", 1000, costs)
    assert "sandwich" in source
    assert optimize.light_steps_for_budget(budget, 1000, costs["heavy"], costs["light"]) == 250
    # blocks-only costs reproduce the paper's 16.7% at 250 light steps
    assert float(optimize.exact_saving(250, 1000, 12, 4)) == pytest.approx(1 / 6)


@pytest.mark.parametrize("budget", ["0", "1", "-0.1", "0.9", "not-a-schedule"])
def test_bad_budgets(budget):
    costs = model_costs(load_profile("tiny"))
    with pytest.raises(UserError):
        b, _ = optimize.parse_budget(budget, 1000, costs)
        optimize.light_steps_for_budget(b, 1000, costs["heavy"], costs["light"])


# ---- placement ------------------------------------------------------------------------------------------


def brute_force(cost, n, M):
    best = None
    for S in itertools.combinations(range(len(cost)), n):
        light = np.zeros(len(cost), dtype=bool)
        light[list(S)] = True
        if len(optimize.runs_of(light)) <= M:
            c = cost[list(S)].sum()
            best = c if best is None else min(best, c)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_dp_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    cost = rng.normal(size=11)
    for n, M in [(1, 1), (3, 1), (4, 2), (5, 3), (11, 1)]:
        runs = optimize.place_light_steps(cost, n, M)
        assert len(runs) <= M and sum(b - a for a, b in runs) == n
        got = sum(cost[a:b].sum() for a, b in runs)
        assert got == pytest.approx(brute_force(cost, n, M))


def test_u_shaped_cost_gives_a_sandwich():
    T = 100
    x = (np.arange(T) + 0.5) / T
    cost = (x - 0.5) ** 2 * -1 + 1.0  # high in the middle, low at both ends, symmetric
    runs = optimize.place_light_steps(cost, 20, 2)
    assert runs == [(0, 10), (90, 100)]
    assert optimize.place_light_steps(cost, 20, 1) in ([(0, 20)], [(80, 100)])


def test_place_light_steps_errors():
    with pytest.raises(UserError):
        optimize.place_light_steps(np.array([1.0, np.nan]), 1, 1)
    with pytest.raises(UserError):
        optimize.place_light_steps(np.ones(4), 5, 1)
    with pytest.raises(UserError):
        optimize.place_light_steps(np.ones(4), 2, 0)


# ---- signals --------------------------------------------------------------------------------------------


def test_spearman():
    assert optimize.spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert optimize.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert optimize.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486832980505138)  # ties averaged
    assert optimize.spearman([1, 1, 1], [1, 2, 3]) is None and optimize.spearman([1, 2], [2, 1]) is None


def test_choose_signal():
    corr = {"kl": {"spearman": 0.2, "placements": 28}, "swap": {"spearman": 0.8, "placements": 28},
            "ce_gap": {"spearman": None, "placements": 28}}
    name, why = optimize.choose_signal(["kl", "swap", "ce_gap"], corr)
    assert name == "swap" and "0.800" in why
    assert optimize.choose_signal(["kl", "ce_gap"], corr)[0] == "kl"
    assert optimize.choose_signal(["kl", "swap"], None)[0] == "swap"
    with pytest.raises(UserError, match="mdlm importance"):
        optimize.choose_signal([], None)


# ---- synthetic stage outputs ----------------------------------------------------------------------------

PENALTY = np.array([0.01, 0.30, 0.50, 0.40, 0.25, 0.02])  # per-segment cost: outer segments robust


def synthetic_result(K, N, steps, penalty=PENALTY, n=40, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.uniform(300, 400, size=n)
    tok = np.full(n, 100, dtype=np.int64)
    ent = rng.uniform(4.0, 4.5, size=n)
    patterns = ["H" * K] + [pat.pattern_of(c, K) for c in pat.placements(K, N)]
    scores = {}
    for p in patterns:
        extra = sum(penalty[k] for k in pat.light_segments_of(p)) * 100
        scores[p] = PatternScores(base + extra + rng.normal(0, 1, n), tok, ent + rng.normal(0, 1e-3, n))
    rows = search.compare_to_baseline(scores, "H" * K, steps, B=200)
    sens = search.segment_sensitivity(scores, "H" * K, B=200)
    return search.SearchResult(K, N, steps, 0, list(range(n)), "H" * K, scores, rows, sens,
                               pat.Traversal("trie", 0, 0))


@pytest.fixture
def stage_dirs(tmp_path):
    imp, srch = tmp_path / "importance", tmp_path / "search"
    search.write_result(synthetic_result(6, 1, 60), imp, "swap_sensitivity", "swap", markdown=False)
    search.write_result(synthetic_result(6, 2, 60), srch, "search", "search")
    t = (np.arange(10) + 0.5) / 10
    kl = 1.0 - np.abs(t - 0.5)  # peaks mid-trajectory, like the swap penalty
    bins = [{"t": float(a), "kl": float(k), "ce_gap": float(0.5 - a)} for a, k in zip(t, kl, strict=True)]
    (imp / "importance.json").write_text(json.dumps({"bins": bins, "num_sequences": 8,
                                                     "nelbo_estimate": {"heavy": 5.0, "light": 5.5}}))
    return imp, srch


def test_signal_correlations_rank_the_swap_profile_first(stage_dirs):
    imp, srch = stage_dirs
    signals, search_json, corr = optimize.load_signals(60, imp, srch)
    assert set(signals) == {"kl", "ce_gap", "swap"}
    assert corr["swap"]["spearman"] > 0.9 and corr["swap"]["placements"] == 15
    assert corr["swap"]["spearman"] > corr["ce_gap"]["spearman"]
    assert optimize.choose_signal(list(signals), corr)[0] == "swap"


def test_cli_optimize_writes_valid_schedule(stage_dirs, tmp_path):
    imp, srch = stage_dirs
    out = tmp_path / "sched" / "opt-test.yaml"
    argv = ["optimize", "--profile", "smoke", "--steps", "60", "--budget", "0.2", "--out", str(out),
            "--importance", str(imp), "--search", str(srch)]
    assert cli.main(argv) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    sched = load_schedule(out, 60, known_models=["heavy", "light"])
    assert sched.name == "opt-test" and "mdlm optimize" in sched.description
    costs = model_costs(load_profile("smoke"))
    n = sched.model_steps["light"]
    assert n == record["light_steps"]
    assert flops.schedule_savings(sched.model_steps, {m: flops.ForwardMacs(c, 0, 0) for m, c in costs.items()}
                                  )["full_saving"] >= 0.2
    assert optimize.exact_saving(n - 1, 60, costs["heavy"], costs["light"]) < Fraction("0.2")
    assert record["signal"] == "swap" and record["full_saving"] >= 0.2 > record["full_saving_one_fewer_light_step"]
    assert len(record["light_runs"]) <= 2
    # the swap penalty is lowest in segments 0 and 5: light runs at both ends
    assert sched.model_at(0) == "L" and sched.model_at(59) == "L" and sched.model_at(25) == "H"
    assert "predicted_delta_log_ppl" in record and record["calibration"]["r2"] > 0.5


def test_cli_optimize_errors(tmp_path, capsys):
    argv = ["optimize", "--profile", "smoke", "--budget", "0.99", "--out", str(tmp_path / "x.yaml"),
            "--importance", str(tmp_path), "--search", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "all-light" in capsys.readouterr().err
    argv[4] = "0.1"
    assert cli.main(argv) == 2  # no importance outputs
    assert "mdlm importance" in capsys.readouterr().err
    argv[6] = str(tmp_path / "x.txt")
    assert cli.main(argv) == 2


# ---- report numbers -------------------------------------------------------------------------------------


def named_placements(scores):
    """The pipeline schedules that are placements of a K-segment, N-light search (K, N even)."""
    K = len(next(iter(scores)))
    N = max(p.count("L") for p in scores)
    light = {"all-heavy": (), "light-first": range(N), "light-last": range(K - N, K),
             "sandwich": [*range(N // 2), *range(K - N // 2, K)], "light-middle": range((K - N) // 2, (K + N) // 2)}
    return {name: scores[pat.pattern_of(tuple(ks), K)] for name, ks in light.items()}


def write_metrics(mdir, name, scores, keys):
    mdir.mkdir(parents=True, exist_ok=True)
    rows = [{"seed": k[0], "sample_index": k[1], "nll_sum": float(a), "n_tokens": int(b), "entropy": float(c)}
            for k, a, b, c in zip(keys, scores.nll_sum, scores.n_tokens, scores.entropy, strict=True)]
    (mdir / f"{name}.per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (mdir / f"{name}.json").write_text(json.dumps({"schedule": name, "gen_ppl": 10.0, "num_samples": len(rows)}))


def test_gather_comparison(tmp_path):
    res = synthetic_result(8, 2, 80, penalty=np.array([0.1, 0.1, 0.3, 0.5, 0.5, 0.3, 0.1, 0.1]))
    named = named_placements(res.scores)
    mdir = tmp_path / "metrics"
    keys = [(0, i) for i in range(40)]
    for name in ("sandwich", "all-heavy", "light-first"):
        write_metrics(mdir, name, named[name], keys)
    # the optimized schedule's file lists the samples in another order: pairing must follow the keys
    write_metrics(mdir, "opt", named["sandwich"], keys)
    perm = np.arange(40)[::-1]
    opt_rev = PatternScores(named["sandwich"].nll_sum[perm], named["sandwich"].n_tokens[perm],
                                   named["sandwich"].entropy[perm])
    write_metrics(mdir, "opt", opt_rev, [keys[i] for i in perm])
    cmp = claims.gather_comparison(mdir, "opt", B=100, seed=0)
    assert cmp["schedules"]["optimized"]["gen_ppl"] == 10.0
    assert any("search-best" in m for m in cmp["missing"])
    d = cmp["paired"]["optimized_minus_sandwich"]
    assert d["point"] == 0 and d["ci_low"] == 0 and d["ci_high"] == 0
    assert cmp["paired"]["optimized_minus_all_heavy"]["point"] > 0


def test_analysis_summary_for_the_report(stage_dirs, tmp_path, monkeypatch):
    profile = load_profile("smoke")
    run = tmp_path / "project" / "runs" / "smoke"
    imp, srch = stage_dirs
    shutil.copytree(imp, run / "importance")
    shutil.copytree(srch, run / "search")
    argv = ["optimize", "--profile", "smoke", "--steps", "60", "--budget", "0.05", "--name", "optimized",
            "--out", str(run / "optimize" / "optimized.yaml"), "--importance", str(imp), "--search", str(srch)]
    assert cli.main(argv) == 0
    _, scores = search.load_result(srch / "search.json")
    named = named_placements(scores)
    keys = [(0, i) for i in range(40)]
    for name in ("all-heavy", "sandwich", "light-first", "light-last", "light-middle"):
        write_metrics(run / "metrics", name, named[name], keys)
    write_metrics(run / "metrics", "optimized", named["sandwich"], keys)
    out = report.analysis_summary(run, [{"schedule": "all-heavy", "gen_ppl": 20.0}], model_forward_macs(profile),
                                  B=2000, seed=0)
    md = out["markdown"]
    for title in ("## Step importance", "## Coarse segment search", "## Budgeted optimizer"):
        assert title in md
    kinds = [p["kind"] for p in out["points"]]
    assert kinds.count("search") == 15 and kinds.count("optimizer") == 1
    best = next(p for p in out["points"] if p["kind"] == "search")
    assert best["gen_ppl"] == pytest.approx(20.0 * np.exp(best["delta_log_ppl"]))  # anchored to all-heavy
    assert 0 < best["full_saving"] < best["blocks_only_saving"]
    assert "search-best" in md  # listed as not evaluated
