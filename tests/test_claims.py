"""The pre-stated claim tests: every decision rule and verdict branch, Holm, power numbers, bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from mdlm import claims, stats
from mdlm.errors import UserError
from mdlm.profiles import load_profile
from mdlm.scores import PatternScores

N = 48
TS = claims.TestSettings(sandwich_margin=0.05, entropy_margin=0.05, alpha=0.05, power=0.8, bootstrap=400, seed=0)


def make_scores(shifts: dict[str, float], noise: float = 0.01, ent_shift: dict[str, float] | None = None,
                ent_noise: float = 1e-3, seed: int = 0) -> dict[str, PatternScores]:
    """Schedules whose per-sample log PPL is a shared base + shift + independent noise (100 tokens each), so
    Δ log gen-PPL(a − b) ≈ shift[a] − shift[b]."""
    rng = np.random.default_rng(seed)
    tok = np.full(N, 100, dtype=np.int64)
    base = rng.uniform(5.0, 6.0, N)
    ent = rng.uniform(4.0, 4.5, N)
    out = {}
    for name, d in shifts.items():
        nll = (base + d + rng.normal(0, noise, N)) * tok
        e = ent + (ent_shift or {}).get(name, 0.0) + rng.normal(0, ent_noise, N)
        out[name] = PatternScores(nll, tok, e)
    return out


ALL = ("all-heavy", "all-light", "sandwich", "light-first", "light-last", "light-middle", "interleaved")


def by_id(result):
    return {c["id"]: c for c in result["claims"]}


# ---- decision rules ------------------------------------------------------------------------------------------


def test_superiority_branches():
    assert claims.superiority(-0.3, -0.1) == "better"
    assert claims.superiority(0.1, 0.3) == "worse"
    assert claims.superiority(-0.1, 0.1) == "undecided"


def test_non_inferiority_branches():
    rule = claims.non_inferiority(0.05)
    assert rule(-0.2, 0.04) == "non-inferior"  # upper bound below the margin, even if the point is above 0
    assert rule(0.06, 0.2) == "inferior"
    assert rule(0.0, 0.1) == "undecided"


def test_equivalence_branches():
    rule = claims.equivalence(0.05)
    assert rule(-0.04, 0.04) == "equivalent"
    assert rule(0.06, 0.1) == "different" and rule(-0.1, -0.06) == "different"
    assert rule(-0.01, 0.07) == "undecided" and rule(-0.2, 0.2) == "undecided"


def test_holm_levels_by_hand():
    # p ordered 0.01 < 0.03 < 0.04: levels 1 - 0.05/3, 1 - 0.05/2, 1 - 0.05/1
    out = stats.holm_levels([0.01, 0.04, 0.03], 0.05)
    assert [r for r, _ in out] == [0, 2, 1]
    assert [lvl for _, lvl in out] == pytest.approx([1 - 0.05 / 3, 0.95, 0.975])


def test_bootstrap_p_inverts_the_interval():
    reps = np.linspace(-1, 3, 4001)  # 25% of the replicates are <= 0
    assert stats.bootstrap_p(reps, 0.0) == pytest.approx(0.5, abs=1e-3)
    assert stats.bootstrap_p(reps, 5.0) == 0.0


# ---- claim verdicts on synthetic scores --------------------------------------------------------------------


def test_a1_reproduced_a2_contradicted():
    sc = make_scores({"all-heavy": 0, "light-first": 0.0, "light-middle": 0.2, "light-last": 0.5})
    got = by_id(claims.evaluate_claims(sc, TS))
    a1, a2 = got["a1"], got["a2"]
    assert a1["verdict"] == "reproduced" and a1["comparisons"][0]["decision"] == "better"
    assert a1["comparisons"][0]["point"] == pytest.approx(-0.2, abs=0.02)
    assert a2["verdict"] == "contradicted" and a2["comparisons"][0]["point"] == pytest.approx(0.3, abs=0.02)
    # one Holm family of two: the adjusted levels are 97.5% and 95%
    assert sorted(c["comparisons"][0]["level"] for c in (a1, a2)) == pytest.approx([0.95, 0.975])


def test_a_inconclusive_under_noise_and_when_not_evaluated():
    sc = make_scores({"all-heavy": 0, "light-first": 0.0, "light-middle": 0.0, "light-last": 0.0}, noise=0.5)
    got = by_id(claims.evaluate_claims(sc, TS))
    assert got["a1"]["verdict"] == got["a2"]["verdict"] == "inconclusive"
    assert got["a1"]["comparisons"][0]["samples_to_decide"] is None or got["a1"]["comparisons"][0][
        "samples_to_decide"] > N
    got = by_id(claims.evaluate_claims(make_scores({"all-heavy": 0, "light-first": 0}), TS))
    assert got["a1"]["verdict"] == "inconclusive" and "not evaluated" in got["a1"]["reason"]


def test_b_reproduced_when_every_comparison_is_non_inferior():
    sc = make_scores({"all-heavy": 0, "sandwich": 0.1, "light-first": 0.1, "light-last": 0.2, "light-middle": 0.15,
                      "interleaved": 0.1}, noise=0.005)
    b = by_id(claims.evaluate_claims(sc, TS))["b"]
    assert b["verdict"] == "reproduced"
    assert [c["contrast"] for c in b["comparisons"]] == [f"sandwich − {o}" for o in claims.B_COMPARATORS]
    assert {c["decision"] for c in b["comparisons"]} == {"non-inferior"}
    assert all(c["ci_high"] < 0.05 for c in b["comparisons"])
    assert sorted(c["level"] for c in b["comparisons"]) == pytest.approx([1 - 0.05 / k for k in (1, 2, 3, 4)])


def test_b_contradicted_when_one_comparison_is_inferior():
    sc = make_scores({"all-heavy": 0, "sandwich": 0.3, "light-first": 0.3, "light-last": 0.1, "light-middle": 0.3,
                      "interleaved": 0.3}, noise=0.005)
    b = by_id(claims.evaluate_claims(sc, TS))["b"]
    assert b["verdict"] == "contradicted"
    assert {c["contrast"]: c["decision"] for c in b["comparisons"]}["sandwich − light-last"] == "inferior"


def test_b_inconclusive_when_wide():
    sc = make_scores({"all-heavy": 0, "sandwich": 0, "light-first": 0, "light-last": 0}, noise=0.4)
    b = by_id(claims.evaluate_claims(sc, TS))["b"]
    assert b["verdict"] == "inconclusive" and len(b["comparisons"]) == 2
    b = by_id(claims.evaluate_claims(make_scores({"all-heavy": 0, "light-first": 0}), TS))["b"]
    assert b["verdict"] == "inconclusive" and b["comparisons"] == []


def test_c_branches():
    base = {"all-heavy": 0, "sandwich": 0}
    got = by_id(claims.evaluate_claims(make_scores(base, ent_shift={"sandwich": 0.01}), TS))["c"]
    assert got["verdict"] == "reproduced" and got["comparisons"][0]["level"] == pytest.approx(0.9)
    assert got["comparisons"][0]["point"] == pytest.approx(0.01, abs=2e-3)
    got = by_id(claims.evaluate_claims(make_scores(base, ent_shift={"sandwich": -0.3}), TS))["c"]
    assert got["verdict"] == "contradicted"
    got = by_id(claims.evaluate_claims(make_scores(base, ent_noise=0.3), TS))["c"]
    assert got["verdict"] == "inconclusive"
    got = by_id(claims.evaluate_claims(make_scores({"all-heavy": 0}), TS))["c"]
    assert got["verdict"] == "inconclusive" and got["comparisons"] == []


def test_holm_step_down_stops_at_the_first_undecided():
    # two copies of one contrast (equal p): ranks 0 and 1 at 97.5% and 95%. Find a shift whose 95% interval
    # excludes 0 but whose 97.5% one does not: Holm must then leave both undecided.
    for shift in np.linspace(0.0, 0.3, 61):
        sc = make_scores({"all-heavy": 0, "x": shift}, noise=0.3, seed=1)
        terms = [(1.0, sc["x"].nll_sum, sc["x"].n_tokens), (-1.0, sc["all-heavy"].nll_sum, sc["all-heavy"].n_tokens)]
        lo95 = stats.contrast_ci(terms, B=TS.bootstrap, seed=0, level=0.95).low
        lo975 = stats.contrast_ci(terms, B=TS.bootstrap, seed=0, level=0.975).low
        if lo95 > 0 >= lo975:
            break
    else:
        pytest.fail("no shift separates the two levels")
    specs = [claims.Spec(k, "x", "all-heavy", "log_ppl", 0.0, claims.superiority, abs) for k in ("one", "two")]
    first, second = claims.run_family(specs, sc, TS)
    assert first["decision"] == second["decision"] == "undecided"
    assert sorted([first["holm_stopped"], second["holm_stopped"]]) == [False, True]
    # without Holm, the 95% interval decides it
    alone = claims.run_family(specs[:1], sc, TS, holm=False, level=0.95)[0]
    assert alone["decision"] == "worse"


# ---- power -------------------------------------------------------------------------------------------------


def test_power_numbers_by_hand():
    assert stats.detectable_effect(1.0) == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    # (2.8016 * 0.1 / 0.1)^2 * 16 = 125.6 -> 126
    assert stats.samples_to_decide(16, 0.1, 0.1) == 126
    assert stats.samples_to_decide(16, 0.1, 0.0) is None
    assert stats.samples_to_decide(16, 0.1, 1.0) == 2  # already decided: fewer samples would do


def test_mde_follows_the_paired_standard_error():
    sc = make_scores({"all-heavy": 0, "sandwich": 0}, ent_noise=0.1)
    c = by_id(claims.evaluate_claims(sc, TS))["c"]["comparisons"][0]
    diff = sc["sandwich"].entropy - sc["all-heavy"].entropy
    se = diff.std(ddof=0) / math.sqrt(N)  # the standard error of a mean of paired differences
    assert c["se"] == pytest.approx(se, rel=0.15)
    assert c["mde"] == pytest.approx(2.8016 * c["se"], rel=1e-3)
    assert json.dumps(c)  # JSON-ready


# ---- reading evaluation outputs, bad input -------------------------------------------------------------------


def write_per_sample(folder, name, scores, indices):
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"seed": 0, "sample_index": int(i), "nll_sum": float(a), "n_tokens": int(b), "entropy": float(c)}
            for i, a, b, c in zip(indices, scores.nll_sum, scores.n_tokens, scores.entropy, strict=True)]
    (folder / f"{name}.per_sample.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_evaluation_scores_pairs_by_key_and_rejects_bad_files(tmp_path):
    sc = make_scores({"all-heavy": 0, "sandwich": 0.1})
    write_per_sample(tmp_path, "all-heavy", sc["all-heavy"], range(N))
    rev = sc["sandwich"].take(np.arange(N)[::-1])
    write_per_sample(tmp_path, "sandwich", rev, range(N)[::-1])
    got = claims.evaluation_scores(tmp_path, ("all-heavy", "sandwich"))
    np.testing.assert_array_equal(got["sandwich"].nll_sum, sc["sandwich"].nll_sum)
    with pytest.raises(UserError, match="light-first.per_sample.jsonl.*not found"):
        claims.evaluation_scores(tmp_path, ("all-heavy", "light-first"))
    write_per_sample(tmp_path, "sandwich", sc["sandwich"], range(1, N + 1))  # indices shifted by one
    with pytest.raises(UserError, match="do not pair"):
        claims.evaluation_scores(tmp_path, ("all-heavy", "sandwich"))
    with pytest.raises(UserError, match="all-heavy"):
        claims.evaluation_scores(tmp_path, ("sandwich",))


@pytest.mark.parametrize("margin", [0.0, -0.1])
def test_margins_must_be_positive(margin, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("MDLM_ROOT", str(Path(__file__).resolve().parents[1]))
    with pytest.raises(UserError, match=r"profiles\.smoke\.claims\.sandwich_margin"):
        load_profile("smoke", overrides={"claims": {"sandwich_margin": margin}})
    with pytest.raises(UserError, match=r"profiles\.smoke\.claims\.entropy_margin"):
        load_profile("smoke", overrides={"claims": {"entropy_margin": margin}})
    with pytest.raises(UserError, match="margin > 0"):
        claims.TestSettings(sandwich_margin=margin)


def test_overlapping_sample_ranges_are_a_profile_error(monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("MDLM_ROOT", str(Path(__file__).resolve().parents[1]))
    ranges = load_profile("smoke").sample_ranges()
    assert len(ranges) == 3 and sorted(ranges.values())[0][0] == 0  # evaluation starts at index 0
    with pytest.raises(UserError, match=r"profiles\.smoke: sample-index ranges overlap: evaluation .*\[0, 4\)"):
        load_profile("smoke", overrides={"search": {"first_index": 3}})
    with pytest.raises(UserError, match="search .* and swap sensitivity"):
        load_profile("smoke", overrides={"importance": {"swap_first_index": 100_003}})
    load_profile("smoke", overrides={"search": {"first_index": 4}})  # adjacent ranges do not overlap
