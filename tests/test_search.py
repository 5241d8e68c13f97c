"""Coarse segment search: enumeration, trie traversal == full schedules, paired ranking, outputs, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mdlm import cli, sampler, search
from mdlm import patterns as pat
from mdlm.errors import UserError
from mdlm.schedule import dump_schedule, load_schedule
from mdlm.scores import contrast_ci
from mdlm.stats import paired_ci

ROOT = Path(__file__).resolve().parents[1]
V, L = 40, 12  # toy vocabulary (mask = V - 1) and sequence length
MASK = V - 1


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):  # conftest: torch on one thread for this module
    yield


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))




@pytest.fixture(scope="module")
def denoisers(toy_dit):
    heavy, light = toy_dit(3, 0, V, L), toy_dit(1, 1, V, L)
    return {"heavy": sampler.denoiser_from_model(heavy), "light": sampler.denoiser_from_model(light)}


def decode(rows):
    return [" ".join(map(str, r)) for r in rows]


def toy_score(texts):
    """A deterministic stand-in for the judge: nll from the token ids, one 'token' per id."""
    ids = [list(map(int, t.split())) for t in texts]
    return (np.array([sum((i * 7919) % 13 for i in r) / 5.0 for r in ids]),
            np.array([len(r) for r in ids], dtype=np.int64))


# ---- enumeration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("K,N,T", [(8, 2, 1000), (4, 1, 64), (6, 3, 60), (5, 5, 10)])
def test_enumeration_count_distinct_and_light_steps(K, N, T):
    combos = pat.placements(K, N)
    assert len(combos) == math.comb(K, N)
    patterns = [pat.pattern_of(c, K) for c in combos]
    assert len(set(patterns)) == len(patterns)
    for c, p in zip(combos, patterns, strict=True):
        assert p.count("L") == N and pat.light_segments_of(p) == c
        s = pat.pattern_schedule(p, T)
        assert s.model_steps.get("light", 0) == N * T // K
        assert sum(n for _, n in s.segments) == T


def test_sandwich_and_friends_are_placements():
    assert pat.pattern_schedule("LHHHHHHL", 1000).notation == "L125,H750,L125"
    assert pat.pattern_schedule("HHHLLHHH", 1000).notation == "H375,L250,H375"
    assert pat.pattern_schedule("LLHHHHHH", 1000).notation == "L250,H750"


def test_prefix_count_k8_n2():
    patterns = ["H" * 8] + [pat.pattern_of(c, 8) for c in pat.placements(8, 2)]
    assert pat.prefix_count(patterns) == 120  # vs 29 x 8 = 232 segment runs from scratch


@pytest.mark.parametrize("K,N", [(0, 1), (4, 0), (4, 5), (2.5, 1)])
def test_bad_placement_arguments(K, N):
    with pytest.raises(UserError):
        pat.placements(K, N)


def test_steps_must_split_into_segments():
    with pytest.raises(UserError, match="equal segments"):
        pat.pattern_schedule("LHH", 64)


# ---- sampling --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_trie_traversal_equals_full_schedules(denoisers, precision):
    patterns = ["HHHH"] + [pat.pattern_of(c, 4) for c in pat.placements(4, 2)]
    cfg = sampler.SamplerConfig(precision=precision)
    kw = dict(steps=16, mask_id=MASK, seq_len=L, sample_indices=range(5), seed=3, config=cfg, batch_size=2)
    trie, t_info = pat.sample_patterns(denoisers, patterns, traversal="trie", **kw)
    full, f_info = pat.sample_patterns(denoisers, patterns, traversal="full", **kw)
    assert (t_info.mode, t_info.segment_runs, f_info.segment_runs) == ("trie", 20, 28)
    for p in patterns:
        assert trie[p].shape == (5, L)
        np.testing.assert_array_equal(trie[p], full[p])
        assert not (trie[p] == MASK).any()  # noise removal ran on the last segment
    # the light model changes samples, otherwise this test could not fail
    assert sum((trie[p] != trie["HHHH"]).any() for p in patterns) >= 3


def test_trie_needs_ddpm_cache(denoisers):
    cfg = sampler.SamplerConfig(predictor="ddpm")
    assert not pat.trie_available(cfg)
    with pytest.raises(UserError, match="ddpm_cache"):
        pat.sample_patterns(denoisers, ["HL"], steps=4, mask_id=MASK, seq_len=L, sample_indices=[0], seed=0,
                               config=cfg, traversal="trie")


# ---- scoring, ranking, outputs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result(denoisers):
    return search.run_placements(denoisers, decode, toy_score, segments=4, light=2, steps=16, mask_id=MASK,
                                 seq_len=L, num_samples=6, seed=0, config=sampler.SamplerConfig(), batch_size=4,
                                 bootstrap=200, bootstrap_seed=0)


def test_ranking_is_paired_and_sorted(result):
    assert result.traversal.mode == "trie"
    assert len(result.rows) == 6 and result.baseline == "HHHH"
    deltas = [r["delta_log_ppl"] for r in result.rows]
    assert deltas == sorted(deltas) and [r["rank"] for r in result.rows] == list(range(1, 7))
    base = result.scores["HHHH"]
    for r in result.rows:
        s = result.scores[r["pattern"]]
        d = paired_ci(s.nll_sum, s.n_tokens, base.nll_sum, base.n_tokens, B=200, seed=0)
        assert r["delta_log_ppl"] == pytest.approx(d.point) and r["delta_log_ppl_ci_low"] == pytest.approx(d.low)
        assert r["delta_log_ppl_ci_low"] <= r["delta_log_ppl"] <= r["delta_log_ppl_ci_high"]
    assert sorted(s["segment"] for s in result.sensitivity) == [0, 1, 2, 3]
    for s in result.sensitivity:  # mean delta over the 3 placements with segment k light
        members = [r["delta_log_ppl"] for r in result.rows if s["segment"] in r["light_segments"]]
        assert s["placements"] == 3 and s["mean_delta_log_ppl"] == pytest.approx(np.mean(members))


def test_contrast_ci_matches_paired_ci(result):
    s, b = result.scores["LHHL"], result.scores["HHHH"]
    d = paired_ci(s.entropy, None, b.entropy, None, B=200, seed=0)
    assert contrast_ci(result.scores, {"LHHL": 1, "HHHH": -1}, B=200, metric="entropy") == pytest.approx(d)


def test_outputs_round_trip(result, tmp_path):
    data = search.write_result(result, tmp_path, "search", "toy")
    for suffix in ("json", "csv", "md", "png", "per_sample.jsonl", "samples.jsonl"):
        assert (tmp_path / f"search.{suffix}").is_file()
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = (tmp_path / "search.csv").read_text().splitlines()
    assert len(lines) == 7 and lines[0].startswith("rank,pattern")
    assert data["placements"] == 6 and data["best"] == result.rows[0]["pattern"]
    loaded, scores = search.load_result(tmp_path / "search.json")
    assert loaded["ranking"] == json.loads(json.dumps(result.rows))
    for p, s in result.scores.items():
        np.testing.assert_array_equal(scores[p].nll_sum, s.nll_sum)
    samples = [json.loads(x) for x in (tmp_path / "search.samples.jsonl").read_text().splitlines()]
    assert len(samples) == 7 * 6 and all(len(r["token_ids"]) == L for r in samples)
    sched = search.best_schedule(result)
    dump_schedule(sched, tmp_path / "best.yaml")
    loaded_sched = load_schedule(tmp_path / "best.yaml", 16)
    assert loaded_sched.notation == sched.notation and loaded_sched.model_steps["light"] == 8


def test_load_result_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        search.load_result(tmp_path / "search.json")
    (tmp_path / "search.json").write_text("{}")
    with pytest.raises(UserError, match="lacks"):
        search.load_result(tmp_path / "search.json")


def test_cli_bad_segments_exit_2(capsys):
    # smoke profile: T = 64 does not split into 5 segments; fails before loading any model
    assert cli.main(["search", "--profile", "smoke", "--segments", "5", "--light", "1"]) == 2
    assert "equal segments" in capsys.readouterr().err


# ---- held-out evaluation ---------------------------------------------------------------------------------


def test_search_pick_regresses_to_zero_on_held_out_samples(denoisers):
    """A judge of pure noise: the search's best placement looks better than all-heavy on the samples that
    selected it (the minimum of noisy deltas), but on the disjoint evaluation samples its delta is centred on 0."""
    cfg, trials, n = sampler.SamplerConfig(), 24, 8
    in_sample, held_out = [], []
    for trial in range(trials):
        rng = np.random.default_rng(trial)

        def noise_judge(texts, rng=rng):
            return rng.normal(50.0, 5.0, len(texts)), np.full(len(texts), 10, dtype=np.int64)

        result = search.run_placements(denoisers, decode, noise_judge, segments=4, light=2, steps=8, mask_id=MASK,
                                       seq_len=L, num_samples=n, seed=trial, config=cfg, first_index=100_000,
                                       bootstrap=50)
        assert result.sample_indices == list(range(100_000, 100_000 + n))
        best = result.best["pattern"]
        tokens, _ = pat.sample_patterns(denoisers, [best, "HHHH"], steps=8, mask_id=MASK, seq_len=L,
                                        sample_indices=range(n), seed=trial, config=cfg)  # evaluation range
        scores, _ = search.score_patterns(tokens, decode, noise_judge)
        d = paired_ci(scores[best].nll_sum, scores[best].n_tokens, scores["HHHH"].nll_sum, scores["HHHH"].n_tokens,
                      B=50)
        in_sample.append(result.best["delta_log_ppl"])
        held_out.append(d.point)
    in_sample, held_out = np.array(in_sample), np.array(held_out)
    se = held_out.std(ddof=1) / np.sqrt(trials)
    assert abs(held_out.mean()) < 3 * se  # centred on zero
    assert in_sample.mean() < -3 * in_sample.std(ddof=1) / np.sqrt(trials)  # selection bias: clearly below zero
    assert in_sample.mean() < held_out.mean() - 0.1, (in_sample.mean(), held_out.mean(), se)
