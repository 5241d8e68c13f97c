"""The frontier grid, its executed-FLOP cost, Pareto front, equal-compute pairing and prose; `mdlm frontier` end to
end with toy models, a toy tokenizer and a toy judge."""

import json
import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mdlm import cli
from mdlm import frontier as fr
from mdlm import frontier_report as frr
from mdlm.commands import frontier as frontier_cmd
from mdlm.config import FrontierSettings
from mdlm.errors import UserError
from mdlm.model import DiTConfig
from mdlm.optimize import held_out_optimizer
from mdlm.sampler import SamplerConfig

ROOT = Path(__file__).resolve().parents[1]


def settings(**kw):
    base = dict(step_counts=[16], baseline_models=["heavy", "light"], families=["sandwich", "light-first"],
                fractions=[0.25], reduced_steps=[16], reduced_families=["sandwich"])
    return FrontierSettings(**{**base, **kw})


# ---- grid generation, names and rounding ---------------------------------------------------------------------

def test_grid_names_and_segments():
    points = fr.frontier_schedules(settings(), steps=64)
    got = [(p.name, p.schedule.notation, p.kind, p.family) for p in points]
    assert got == [
        ("all-heavy-T64", "H64", "baseline", "all-heavy"),  # the reference, always first
        ("all-heavy-T16", "H16", "baseline", "all-heavy"),
        ("all-light-T16", "L16", "baseline", "all-light"),
        ("sandwich-25-T64", "L8,H48,L8", "family", "sandwich"),  # 12.5% of 64 = 8 at each end
        ("light-first-25-T64", "L16,H48", "family", "light-first"),
        ("sandwich-25-T16", "L2,H12,L2", "family", "sandwich"),  # the combination at the reduced T
    ]


def test_every_family_places_the_light_steps():
    s = settings(step_counts=[1000], baseline_models=["heavy"], reduced_steps=[],
                 families=["sandwich", "light-first", "light-last", "light-middle"], fractions=[0.1, 0.6])
    by_name = {p.name: p.schedule.notation for p in fr.frontier_schedules(s, steps=1000)}
    assert by_name == {
        "all-heavy-T1000": "H1000",  # listed in step_counts too: generated once
        "sandwich-10-T1000": "L50,H900,L50", "sandwich-60-T1000": "L300,H400,L300",
        "light-first-10-T1000": "L100,H900", "light-first-60-T1000": "L600,H400",
        "light-last-10-T1000": "H900,L100", "light-last-60-T1000": "H400,L600",
        "light-middle-10-T1000": "H450,L100,H450", "light-middle-60-T1000": "H200,L600,H200",
    }


def test_percent_boundaries_round_half_up():
    # sandwich 25% at T = 10: boundaries 1.25 -> 1 and 8.75 -> 9, so L1,H8,L1 (light fraction 0.2, not 0.25)
    # light-middle 60% at T = 7: boundaries 1.4 -> 1 and 5.6 -> 6, so H1,L5,H1
    s = settings(step_counts=[10], baseline_models=["heavy"], families=["sandwich", "light-middle"],
                 fractions=[0.25, 0.6], reduced_steps=[7], reduced_families=["light-middle"])
    points = {p.name: p for p in fr.frontier_schedules(s, steps=10)}
    assert points["sandwich-25-T10"].schedule.notation == "L1,H8,L1"
    assert points["sandwich-25-T10"].schedule.light_fraction == pytest.approx(0.2)
    assert points["sandwich-25-T10"].nominal_fraction == 0.25
    assert points["light-middle-60-T7"].schedule.notation == "H1,L5,H1"


def test_fraction_names_and_exact_percent_segments():
    assert fr.family_segments("sandwich", Decimal("0.125")) == ["L6.25%", "H87.5%", "L6.25%"]
    points = fr.frontier_schedules(settings(fractions=[0.125], reduced_steps=[]), steps=64)
    assert "sandwich-12.5-T64" in [p.name for p in points]


# ---- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, steps, message", [
    ({"fractions": [0.0]}, 64, "where.fractions: 0.0 is not a light fraction in (0, 1)"),
    ({"fractions": [1.0]}, 64, "where.fractions: 1.0 is not"),
    ({"fractions": [0.25, 0.25]}, 64, "where.fractions: [0.25, 0.25] lists a fraction twice"),
    ({"step_counts": [0]}, 64, "where.step_counts: T = 0 outside [1, 256]"),
    ({"reduced_steps": [257]}, 64, "where.reduced_steps: T = 257 outside [1, 256]"),
    ({"reduced_steps": [64]}, 64, "schedule 'sandwich-25-T64' is generated twice"),
    ({"fractions": [0.1], "reduced_steps": [4]}, 64, "where: schedule 'sandwich-10-T4': segment"),
])
def test_bad_grid_is_one_line_naming_the_key(kw, steps, message):
    with pytest.raises(UserError) as err:
        fr.frontier_schedules(settings(**kw), steps=steps, where="where")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_generated_name_colliding_with_a_schedule_file(tmp_path):
    with pytest.raises(UserError, match=r"'light-first-25-T64' collides with schedules/light-first-25-T64.yaml"):
        fr.frontier_schedules(settings(), steps=64, taken_names=["sandwich", "light-first-25-T64"])
    shipped = [p.stem for p in (ROOT / "schedules").glob("*.yaml")]
    # the optimize stage's outputs (dvc.yaml: optimized, optimized-25) are taken too
    taken = {**{n: f"schedules/{n}.yaml" for n in shipped}, "optimized": "o", "optimized-25": "o"}
    optimizer = toy_optimizer(tmp_path)
    repo = yaml.safe_load((ROOT / "params.yaml").read_text())["profiles"]
    for name in ("smoke", "tiny", "tiny-frontier", "owt"):  # the shipped grids do not collide
        grid = fr.frontier_schedules(FrontierSettings(**repo[name]["frontier"]), repo[name]["sample"]["steps"],
                                     taken, optimizer=optimizer)
        assert any(p.family == "optimized" for p in grid)


# ---- the optimizer's schedules at the grid's budgets ----------------------------------------------------------

TOY_COSTS = {"heavy": 3, "light": 1}  # full MACs per forward: one light step saves 2/3 of a step


def write_toy_selection(run: Path, importance: bool = True, search: bool = True) -> None:
    """Toy importance and search outputs under ``run`` (a runs/<profile> folder).

    KL and CE gap grow with t, so the early steps (t near 1) are predicted the most sensitive; the search's
    Δ log gen-PPL falls from the first segment to the last, ranking both signals perfectly (ρ = 1, a tie that
    the optimizer breaks for kl). The cheapest light steps are therefore always the last ones.
    """
    if importance:
        (run / "importance").mkdir(parents=True, exist_ok=True)
        bins = [{"t": t, "kl": t, "ce_gap": 2 * t} for t in (0.05, 0.25, 0.5, 0.75, 0.95)]
        (run / "importance" / "importance.json").write_text(json.dumps({"bins": bins}))
    if search:
        (run / "search").mkdir(parents=True, exist_ok=True)
        ranking = [{"pattern": "".join("L" if j == k else "H" for j in range(4)), "light_segments": [k],
                    "delta_log_ppl": 0.4 - 0.1 * k} for k in range(4)]
        (run / "search" / "search.json").write_text(json.dumps(
            {"segments": 4, "steps": 64, "baseline": {"pattern": "HHHH"}, "ranking": ranking}))
        (run / "search" / "search.per_sample.jsonl").write_text("")


def toy_optimizer(root: Path):
    write_toy_selection(root)
    return held_out_optimizer(TOY_COSTS, 2, root / "importance", root / "search", "where.optimized")


def light_steps(point) -> int:
    return point.schedule.model_steps.get("light", 0)


def test_optimized_points_at_each_fraction_and_reduced_t(tmp_path):
    s = settings(families=["sandwich", "light-last"], fractions=[0.25, 0.6], reduced_steps=[10],
                 reduced_families=None, optimized=True)
    points = fr.frontier_schedules(s, steps=64, optimizer=toy_optimizer(tmp_path))
    optimized = {p.name: p for p in points if p.family == "optimized"}
    # ceil(fraction x T) light steps, all at the end (the toy signals): 16, ceil(38.4) = 39, ceil(2.5) = 3, 6
    assert {n: p.schedule.notation for n, p in optimized.items()} == {
        "optimized-25-T64": "H48,L16", "optimized-60-T64": "H25,L39", "optimized-25-T10": "H7,L3",
        "optimized-60-T10": "H4,L6"}
    assert all(p.kind == "family" for p in optimized.values())
    assert optimized["optimized-60-T10"].nominal_fraction == 0.6
    record = optimized["optimized-25-T64"].selection
    assert record["signal"] == "kl" and record["light_steps"] == 16
    assert "predicted_delta_log_ppl" in record  # calibrated on the search, which ran at T = 64
    assert "predicted_delta_log_ppl" not in optimized["optimized-25-T10"].selection


def test_optimized_budget_equals_the_family_points_within_one_step(tmp_path):
    s = settings(families=["sandwich", "light-first", "light-last", "light-middle"], fractions=[0.25, 0.6],
                 reduced_steps=[128, 10], reduced_families=None, optimized=True)
    points = fr.frontier_schedules(s, steps=1000, optimizer=toy_optimizer(tmp_path))
    one_step = {t: Fraction(2, 3) / t for t in (1000, 128, 10)}  # full saving of one light step at T
    compared = 0
    for opt in (p for p in points if p.family == "optimized"):
        saving = Fraction(opt.selection["full_saving_exact"])
        assert saving == Fraction(light_steps(opt), opt.steps) * Fraction(2, 3)
        for fam in (p for p in points if p.kind == "family" and p.family != "optimized"
                    and (p.steps, p.nominal_fraction) == (opt.steps, opt.nominal_fraction)):
            fam_saving = Fraction(light_steps(fam), fam.steps) * Fraction(2, 3)
            assert abs(saving - fam_saving) <= one_step[opt.steps], (opt.name, fam.name)
            compared += 1
    assert compared == 4 * 2 * 3
    # at T = 128, 60% is 76.8 light steps: the optimizer takes 77; the sandwich's boundaries round to 38 + 38
    by_name = {p.name: p for p in points}
    assert (light_steps(by_name["optimized-60-T128"]), light_steps(by_name["sandwich-60-T128"])) == (77, 76)
    assert light_steps(by_name["optimized-25-T1000"]) == 250


def test_optimized_names_collide_with_the_optimize_stage_outputs(tmp_path):
    s = settings(reduced_steps=[], optimized=True)
    with pytest.raises(UserError, match=r"^where: generated schedule name 'optimized-25-T64' collides with "
                                        r"the optimize stage's optimized-25-T64.yaml$"):
        fr.frontier_schedules(s, steps=64, taken_names={"optimized-25-T64": "the optimize stage's "
                                                        "optimized-25-T64.yaml"}, where="where",
                              optimizer=toy_optimizer(tmp_path))


def test_optimized_needs_the_optimizer_and_the_switch():
    with pytest.raises(UserError, match=r"where.optimized: the grid has optimized schedules but no optimizer"):
        fr.frontier_schedules(settings(optimized=True), steps=64, where="where")
    with pytest.raises(ValueError, match="reduced_families lists optimized but optimized is false"):
        settings(reduced_families=["sandwich", "optimized"])
    assert settings().optimized is False  # off by default: a profile without importance/search still runs


def test_optimized_switch_rule_is_a_one_line_profile_error(tmp_path):
    from mdlm.profiles import load_profile

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"]["smoke"]["frontier"]["optimized"] = False  # but reduced_families still lists optimized
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(UserError) as err:
        load_profile("smoke", params_file=tmp_path / "params.yaml")
    assert str(err.value).endswith("profiles.smoke.frontier: reduced_families lists optimized but optimized is false")


@pytest.mark.parametrize("importance, search, message", [
    (True, False, r"where.optimized: \S+/search/search.json is missing; run `mdlm search` first"),
    (False, True, r"where.optimized: neither \S+/importance/importance.json nor swap_sensitivity.json exists"),
])
def test_missing_selection_outputs_are_one_line_errors(tmp_path, importance, search, message):
    write_toy_selection(tmp_path, importance, search)
    with pytest.raises(UserError, match=message) as err:
        held_out_optimizer(TOY_COSTS, 2, tmp_path / "importance", tmp_path / "search", "where.optimized")
    assert "\n" not in str(err.value)


# ---- executed FLOPs --------------------------------------------------------------------------------------

# Toy DiTs for the FLOP count: d 16, 2 heads, cond 8, L 8, V 11, MLP ratio 4; heavy 3 blocks, light 1.
# Per block: 12 d^2 L (qkv, out, MLP) + 2 L^2 d (QK^T, PV) = 24576 + 2048 = 26624 MACs.
# Conditioning: 6 d c per block (adaLN) + 2 d c (final adaLN) + 256 c + c^2 (time MLP) = 768 n + 2368.
# Head: d V = 176 MACs per position.
TOY_CONFIGS = {name: DiTConfig(vocab_size=11, hidden_size=16, n_blocks=n, n_heads=2, cond_dim=8, length=8)
               for name, n in (("heavy", 3), ("light", 1))}
PER_ROW = {"heavy": 3 * 26624 + 3 * 768 + 2368, "light": 26624 + 768 + 2368}
HEAD = 176


def test_result_flops_use_head_positions_when_the_sampler_records_them():
    from types import SimpleNamespace

    rows = {"heavy": np.array([2, 4])}  # 6 row-forwards over 2 samples
    old = SimpleNamespace(sample_indices=np.arange(2), row_forwards_by_model=lambda: rows)
    assert fr.result_flops_per_sample(old, TOY_CONFIGS) == (2 * 6 * (PER_ROW["heavy"] + 8 * HEAD) / 2, "full")
    new = SimpleNamespace(sample_indices=np.arange(2), row_forwards_by_model=lambda: rows,
                          head_positions_by_model=lambda: {"heavy": 9})
    assert fr.result_flops_per_sample(new, TOY_CONFIGS) == (2 * (6 * PER_ROW["heavy"] + 9 * HEAD) / 2, "selected")


# ---- Pareto front and equal-compute pairing ------------------------------------------------------------------

def test_pareto_front_on_hand_points():
    points = [(1, 10), (2, 5), (3, 5), (3, 4), (0.5, 20), (2, 6), (2, 5)]
    # (3, 5) is beaten by (2, 5); (2, 6) by (2, 5); the two (2, 5) tie and both stay
    assert fr.pareto_front(points) == [True, True, False, True, True, False, True]


def test_nearest_baseline_by_flops():
    baselines = [("T1000", 100.0), ("T128", 50.0), ("T16", 10.0)]
    assert fr.nearest_baseline(70.0, baselines) == "T128"  # 20 from T128, 30 from T1000
    assert fr.nearest_baseline(75.0, baselines) == "T1000"  # a tie goes to the costlier baseline
    assert fr.nearest_baseline(1.0, baselines) == "T16"
    with pytest.raises(UserError):
        fr.nearest_baseline(1.0, [])


def _run(point, nll, flops, tokens=10, indices=None):
    n = len(nll)
    return fr.PointRun(point, np.arange(n) if indices is None else np.asarray(indices), 0,
                       np.asarray(nll, float), np.full(n, tokens), {"heavy": np.ones(n)}, flops, "full", 0.0, 0.0)


def test_budget_table_pairs_the_best_family_with_the_nearest_step_count_baseline():
    s = settings(step_counts=[16], baseline_models=["heavy"], reduced_steps=[])
    p = {q.name: q for q in fr.frontier_schedules(s, steps=64)}
    # per-sample NLL sums over 10 tokens each: log gen-PPL = mean(nll) / 10
    runs = [_run(p["all-heavy-T64"], [40, 42, 44, 46], 100.0), _run(p["all-heavy-T16"], [50, 50, 52, 52], 40.0),
            _run(p["sandwich-25-T64"], [41, 43, 45, 47], 90.0), _run(p["light-first-25-T64"], [50, 51, 52, 53], 85.0)]
    records = fr.point_records(runs, B=200, seed=0)
    assert records[0]["gen_ppl"] == pytest.approx(math.exp(4.3))
    assert records[2]["delta_log_ppl"] == pytest.approx(0.1)  # (176 - 172) / 40
    # light-first (85 FLOPs, 5.15) is beaten by all-heavy-T16 (40, 5.1); nothing is cheaper and better than the rest
    assert [r["on_front"] for r in records] == [True, True, True, False]
    rows = fr.budget_table(runs, records, B=200, seed=0)
    assert [r["name"] for r in rows] == ["light-first-25-T64", "sandwich-25-T64"]  # every family, none picked
    first, row = rows
    assert (row["baseline"], first["baseline"]) == ("all-heavy-T64", "all-heavy-T64")  # 90, 85 nearer 100 than 40
    assert row["delta_log_ppl"] == pytest.approx(0.1)
    # every pair differs by exactly +0.1 nats/token: the paired interval collapses on it, adjusted or not
    assert row["delta_log_ppl_ci_low"] == pytest.approx(0.1) and row["delta_log_ppl_ci_high"] == pytest.approx(0.1)
    assert row["delta_log_ppl_adj_low"] == pytest.approx(0.1) and row["verdict"] == "baseline better"
    assert row["flops_ratio"] == pytest.approx(0.9)
    # light-first: +(206 - 172) / 40 = +0.85 on every pair; two tests, Holm levels 1 - 0.05/2 then 1 - 0.05
    assert first["delta_log_ppl"] == pytest.approx(0.85) and first["verdict"] == "baseline better"
    assert sorted(r["adjusted_level"] for r in rows) == pytest.approx([0.95, 0.975])


def test_runs_on_other_indices_do_not_pair():
    p = fr.frontier_schedules(settings(reduced_steps=[]), steps=64)
    runs = [_run(p[0], [1, 2], 1.0), _run(p[1], [1, 2], 1.0, indices=[0, 2])]
    with pytest.raises(UserError, match="not sampled on the same indices"):
        fr.point_records(runs, B=10)


# ---- prose -----------------------------------------------------------------------------------------------

def _row(low, high):
    return {"name": "light-first-25-T1000", "steps": 1000, "light_fraction": 0.25, "flops_per_sample": 2.5e9,
            "family": "light-first", "gen_ppl": 1200.0, "baseline": "all-heavy-T128", "baseline_steps": 128,
            "baseline_flops_per_sample": 2.4e9, "baseline_gen_ppl": 1100.0, "delta_log_ppl": (low + high) / 2,
            "delta_log_ppl_ci_low": low, "delta_log_ppl_ci_high": high, "delta_log_ppl_adj_low": low - 0.01,
            "delta_log_ppl_adj_high": high + 0.01, "verdict": fr.verdict(low, high)}


@pytest.mark.parametrize("low, high, phrase", [
    (-0.1, 0.2, "no difference detectable."),
    (0.0, 0.2, "no difference detectable."),  # an interval that touches 0 contains it
    (0.05, 0.2, "all-heavy-T128 (all-heavy at T = 128) is better at this compute."),
    (-0.3, -0.01, "the scheduled run is better at this compute."),
])
def test_budget_sentence_branches(low, high, phrase):
    text = frr.budget_sentence(_row(low, high))
    assert text.endswith(phrase)
    assert text.startswith("light-first at T = 1000 with 25% light steps (2.50 GFLOPs/sample, gen-PPL 1200.0)")
    assert f"{100 * math.expm1(low):+.1f}%" in text and "all-heavy-T128" in text


def test_section_counts_the_verdicts_and_lists_the_front():
    records = [{"name": "a", "num_samples": 8, "on_front": True, "flops_per_sample": 1e9, "gen_ppl": 9.0},
               {"name": "b", "num_samples": 8, "on_front": False, "flops_per_sample": 2e9, "gen_ppl": 10.0}]
    table = [_row(-0.1, 0.2), _row(0.05, 0.2), _row(0.01, 0.3)]
    text = frr.frontier_section(records, table, figure="frontier.png")
    assert "![gen-PPL vs executed FLOPs per sample](frontier.png)" in text
    assert "Pareto front (lower gen-PPL at lower executed FLOPs): a (1.00 GFLOPs, 9.0)." in text
    assert ("scheduling better at 0, the nearest all-heavy step-count baseline better at 2, no difference "
            "detectable at 1." in text)
    assert text.count("| light-first-25-T1000 |") == 3


# ---- sampling and the command, with toy models --------------------------------------------------------------

V, MASK = 11, 10


class ToyDenoiser:
    def __init__(self, seed):
        self.table = torch.randn(V, V, generator=torch.Generator().manual_seed(seed))

    def __call__(self, ids, rows=None, pos=None):  # [R, L] -> [R, L, V], context-dependent through the row mean
        e = self.table[ids]
        logits = e + e.mean(1, keepdim=True)
        return logits if rows is None else logits[rows, pos]  # a sampler that asks for positions: [N, V]


class ToyTokenizer:
    mask_id = MASK

    def batch_decode(self, rows):
        return [" ".join(map(str, r)) for r in rows]


def toy_score(texts):  # a toy judge: NLL grows with the digit sum; one token per id
    nll = np.array([sum(int(c) for c in t if c.isdigit()) / 10 for t in texts])
    return nll, np.array([len(t.split()) for t in texts])


def test_run_point_counts_flops_from_the_row_forwards():
    points = fr.frontier_schedules(settings(reduced_steps=[]), steps=64)
    denoisers = {"heavy": ToyDenoiser(0), "light": ToyDenoiser(1)}
    kw = dict(mask_id=MASK, seq_len=8, sample_indices=range(6), seed=3, config=SamplerConfig(), batch_size=4)
    runs = [fr.run_point(p, denoisers, toy_score, ToyTokenizer().batch_decode, TOY_CONFIGS, **kw) for p in points]
    for run in runs:
        rf = {m: v.sum() for m, v in run.row_forwards.items()}
        if run.head == "full":  # a sampler that computes the head on whole rows
            assert run.head_positions is None
            full = sum(rf[m] * (PER_ROW[m] + 8 * HEAD) for m in ("heavy", "light"))
            assert run.flops_per_sample == pytest.approx(2 * full / 6)
        else:  # the head ran once per position (8 x 6 in all)
            assert run.head == "selected" and sum(run.head_positions.values()) == 48
            expected = rf["heavy"] * PER_ROW["heavy"] + rf["light"] * PER_ROW["light"] + HEAD * 48
            assert run.flops_per_sample == pytest.approx(2 * expected / 6)
    again = fr.run_point(points[3], denoisers, toy_score, ToyTokenizer().batch_decode, TOY_CONFIGS, **kw)
    assert np.array_equal(again.nll_sum, runs[3].nll_sum)  # same seed: same samples and scores
    assert not np.array_equal(runs[1].nll_sum, runs[2].nll_sum)  # the models differ: the scores do too


@pytest.fixture
def toy_project(smoke_root, monkeypatch):
    denoisers = {"heavy": ToyDenoiser(0), "light": ToyDenoiser(1)}
    monkeypatch.setattr(frontier_cmd, "profile_denoisers", lambda profile, device="cpu": denoisers)
    monkeypatch.setattr(frontier_cmd, "get_tokenizer", lambda name: ToyTokenizer())
    monkeypatch.setattr(frontier_cmd, "scorer", lambda settings, tokenizer: (toy_score, {"judge": "toy"}))
    (smoke_root / "schedules").mkdir()
    write_toy_selection(smoke_root / "runs" / "smoke")  # the smoke grid has optimized points
    return smoke_root


def test_cli_writes_the_frontier(toy_project):
    assert cli.main(["frontier", "--profile", "smoke", "--num-samples", "3"]) == 0
    out = toy_project / "runs" / "smoke" / "frontier"
    result = json.loads((out / "frontier.json").read_text())
    names = [r["name"] for r in result["schedules"]]
    assert names[0] == "all-heavy-T64" and len(names) == 8 and result["judge"] == "toy"
    rows = [json.loads(line) for line in (out / "frontier.per_sample.jsonl").read_text().splitlines()]
    assert len(rows) == 8 * 3 and {r["sample_index"] for r in rows} == {0, 1, 2}
    csv_lines = (out / "frontier.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,family,kind,steps") and len(csv_lines) == 9
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    # two families and the optimizer's schedule at T = 64; the sandwich and the optimizer's at T = 16
    assert [(b["steps"], b["family"]) for b in result["budgets"]] == [
        (64, "light-first"), (64, "optimized"), (64, "sandwich"), (16, "optimized"), (16, "sandwich")]
    optimized = {r["name"]: r for r in result["schedules"] if r["family"] == "optimized"}
    # 25% of 64 and of 16 steps, placed last by the toy signals (kl, chosen on the selection outputs)
    assert {n: (r["segments"], r["optimizer"]["light_steps"]) for n, r in optimized.items()} == {
        "optimized-25-T64": ("H48,L16", 16), "optimized-25-T16": ("H12,L4", 4)}
    section = (out / "frontier.md").read_text()
    assert "Quality–compute frontier" in section and "| optimized-25-T16 |" in section
    assert "optimized-25-T64 = H48,L16 (16 light steps, signal kl, predicted Δ log gen-PPL" in section


def test_cli_optimized_needs_the_search(toy_project, capsys):
    (toy_project / "runs" / "smoke" / "search" / "search.json").unlink()
    assert cli.main(["frontier", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params.yaml: profiles.smoke.frontier.optimized: ") and "\n" not in err
    assert err.endswith("runs/smoke/search/search.json is missing; run `mdlm search` first (or turn the switch off)")
    assert not (toy_project / "runs" / "smoke" / "frontier").exists()


def test_cli_optimized_name_collides_with_an_optimize_output(toy_project, capsys):
    (toy_project / "runs" / "smoke" / "optimize").mkdir()
    (toy_project / "runs" / "smoke" / "optimize" / "optimized-25.yaml").write_text("name: optimized-25\n")
    assert cli.main(["frontier", "--profile", "smoke", "--list"]) == 0  # the stage's own names never collide
    (toy_project / "runs" / "smoke" / "optimize" / "optimized-25-T16.yaml").write_text("name: x\n")
    assert cli.main(["frontier", "--profile", "smoke"]) == 2
    assert ("'optimized-25-T16' collides with the optimize stage's optimized-25-T16.yaml"
            in capsys.readouterr().err)
    assert not (toy_project / "runs" / "smoke" / "frontier").exists()


def test_cli_bad_grid_exits_2_and_writes_nothing(toy_project, capsys):
    params = yaml.safe_load((toy_project / "params.yaml").read_text())
    params["profiles"]["smoke"]["frontier"]["fractions"] = [1.5]
    (toy_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert cli.main(["frontier", "--profile", "smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: params.yaml: profiles.smoke.frontier.fractions: 1.5 is not a light fraction in (0, 1)"
    assert not (toy_project / "runs" / "smoke" / "frontier").exists()


def test_cli_name_collision_with_a_schedule_file(toy_project, capsys):
    (toy_project / "schedules" / "sandwich-25-T16.yaml").write_text("name: sandwich-25-T16\nsegments: [H100%]\n")
    assert cli.main(["frontier", "--profile", "smoke"]) == 2
    assert "collides with schedules/sandwich-25-T16.yaml" in capsys.readouterr().err
    assert not (toy_project / "runs" / "smoke" / "frontier").exists()


def test_cli_list_and_only(toy_project, capsys):
    assert cli.main(["frontier", "--profile", "smoke", "--list", "--only", "all-light-T16"]) == 0
    assert capsys.readouterr().out.splitlines() == ["all-heavy-T64\tH64", "all-light-T16\tL16"]  # + the reference
    assert cli.main(["frontier", "--profile", "smoke", "--only", "all-light-T99"]) == 2
    assert "--only: all-light-T99 not in the grid of profile smoke" in capsys.readouterr().err
    assert not (toy_project / "runs" / "smoke" / "frontier").exists()


def test_frontier_samples_count_as_evaluation_samples(tmp_path):
    from mdlm.profiles import load_profile

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["profiles"]["tiny"]["frontier"]["num_samples"] = 100_005  # reaches the search's first index 100000
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with pytest.raises(UserError, match=r"evaluation \(frontier.num_samples\) \[0, 100005\) and search"):
        load_profile("tiny", params_file=tmp_path / "params.yaml")
    wider = params["profiles"]["tiny"]["sample"]["num_samples"] + 32
    params["profiles"]["tiny"]["frontier"]["num_samples"] = wider  # more than sample.num_samples: extends it
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    ranges = load_profile("tiny", params_file=tmp_path / "params.yaml").sample_ranges()
    assert ranges["evaluation (frontier.num_samples)"] == (0, wider)
    assert "evaluation (sample.num_samples)" not in ranges
