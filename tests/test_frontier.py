"""The frontier grid, its executed-FLOP cost, Pareto front, equal-compute pairing and prose; `mdlm frontier` end to
end with toy models, a toy tokenizer and a toy judge."""

import json
import math
from decimal import Decimal
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


def test_generated_name_colliding_with_a_schedule_file():
    with pytest.raises(UserError, match=r"'light-first-25-T64' collides with schedules/light-first-25-T64.yaml"):
        fr.frontier_schedules(settings(), steps=64, taken_names=["sandwich", "light-first-25-T64"])
    shipped = [p.stem for p in (ROOT / "schedules").glob("*.yaml")]
    repo = yaml.safe_load((ROOT / "params.yaml").read_text())["profiles"]
    for name in ("smoke", "tiny", "tiny-frontier"):  # the shipped grids do not collide
        fr.frontier_schedules(FrontierSettings(**repo[name]["frontier"]), repo[name]["sample"]["steps"], shipped)


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
    return smoke_root


def test_cli_writes_the_frontier(toy_project):
    assert cli.main(["frontier", "--profile", "smoke", "--num-samples", "3"]) == 0
    out = toy_project / "runs" / "smoke" / "frontier"
    result = json.loads((out / "frontier.json").read_text())
    names = [r["name"] for r in result["schedules"]]
    assert names[0] == "all-heavy-T64" and len(names) == 6 and result["judge"] == "toy"
    rows = [json.loads(line) for line in (out / "frontier.per_sample.jsonl").read_text().splitlines()]
    assert len(rows) == 6 * 3 and {r["sample_index"] for r in rows} == {0, 1, 2}
    csv_lines = (out / "frontier.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,family,kind,steps") and len(csv_lines) == 7
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert "Quality–compute frontier" in (out / "frontier.md").read_text()
    assert [b["steps"] for b in result["budgets"]] == [64, 64, 16]  # both families at T = 64, the sandwich at 16


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
    ranges = load_profile("tiny-frontier", params_file=ROOT / "params.yaml").sample_ranges()
    assert ranges["evaluation (frontier.num_samples)"] == (0, 64)
