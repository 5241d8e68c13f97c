"""Per-timestep loss/KL of heavy vs light on the same masked inputs, step mapping, outputs, errors."""

from __future__ import annotations

import argparse
import csv
import io
import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from mdlm import cli, importance, sampler, search
from mdlm.commands import importance as importance_cmd
from mdlm.diffusion import loss_at_t
from mdlm.errors import UserError
from mdlm.plots import plot_importance

ROOT = Path(__file__).resolve().parents[1]
V, L, MASK = 40, 12, 39


@pytest.fixture(autouse=True, scope="module")
def _single_thread(one_thread):  # conftest: torch on one thread for this module
    yield




def fwd(model, ids, rows, pos):
    """The denoiser protocol from the module's full logits (independent of the sampler's adapter)."""
    return model(ids, None)[rows, pos]


@pytest.fixture(scope="module")
def models(toy_dit):
    return toy_dit(3, 0, V, L), toy_dit(1, 1, V, L)


@pytest.fixture(scope="module")
def sequences():
    return np.random.default_rng(0).integers(0, MASK, size=(10, L))  # real tokens only


def test_kl_of_identical_models_is_exactly_zero(models, sequences):
    heavy = partial(fwd, models[0])
    raw = importance.timestep_profile(heavy, heavy, sequences, bins=5, mask_id=MASK, batch_size=4, seed=0)
    assert raw["kl"].shape == (10, 5)
    assert np.all(raw["kl"] == 0.0)
    np.testing.assert_array_equal(raw["nll_heavy"], raw["nll_light"])
    assert raw["masked"].sum() > 0 and raw["nll_heavy"].sum() > 0


def test_kl_matches_direct_computation_and_is_positive(models):
    torch.manual_seed(0)
    lh, ll = torch.randn(2, 5, V), torch.randn(2, 5, V)
    x0 = torch.randint(0, MASK, (2, 5))
    x_t = x0.clone()
    x_t[0, 1] = x_t[1, 3] = x_t[1, 4] = MASK
    rows, pos = importance.masked_positions(x_t, MASK)
    assert rows.tolist() == [0, 1, 1] and pos.tolist() == [1, 3, 4]
    s = importance.masked_stats(lh[rows, pos], ll[rows, pos], x0, x_t, MASK)
    real = [v for v in range(V) if v != MASK]
    expected_kl, expected_nll = np.zeros(2), np.zeros(2)
    for b, p in [(0, 1), (1, 3), (1, 4)]:
        ph, pl = torch.softmax(lh[b, p, real].double(), -1), torch.softmax(ll[b, p, real].double(), -1)
        expected_kl[b] += float((ph * (ph.log() - pl.log())).sum())
        expected_nll[b] -= float(ph.log()[real.index(int(x0[b, p]))])
    np.testing.assert_allclose(s["kl"].numpy(), expected_kl, rtol=1e-5)
    np.testing.assert_allclose(s["nll_heavy"].numpy(), expected_nll, rtol=1e-5)
    assert s["masked"].tolist() == [1.0, 2.0] and (s["kl"] > 0).all()


def test_heavy_loss_agrees_with_diffusion_loss_at_t(models, sequences):
    heavy, light = models
    x0 = torch.from_numpy(sequences[:4])
    raw = importance.timestep_profile(partial(fwd, heavy), partial(fwd, light), sequences[:4], bins=2, mask_id=MASK,
                                      batch_size=4, seed=3)
    for k, t in enumerate(importance.bin_centres(2)):
        gen = torch.Generator().manual_seed(3 * 1_000_003)  # the profile's generator seed of batch 0
        ref = loss_at_t(heavy, x0, float(t), MASK, generator=gen)
        np.testing.assert_allclose(raw["nll_heavy"][:, k], ref["nll"].double().numpy(), rtol=1e-5)
        np.testing.assert_array_equal(raw["masked"][:, k], ref["masked"].numpy())
    assert (raw["masked"][:, 0] <= raw["masked"][:, 1]).all()  # nested masks: more masked at larger t


@pytest.fixture(scope="module")
def rows(models, sequences):
    raw = importance.timestep_profile(partial(fwd, models[0]), partial(fwd, models[1]), sequences, bins=6,
                                      mask_id=MASK, batch_size=4, seed=0)
    return importance.summarize_profile(raw, L, B=100, seed=0)


def test_outputs_well_formed(rows, tmp_path):
    assert [r["bin"] for r in rows] == list(range(6))
    assert all(0 < r["t"] <= 1 for r in rows) and rows[0]["t"] == pytest.approx(1 / 12)
    for r in rows:
        assert r["kl"] > 0 and r["kl_ci_low"] <= r["kl"] <= r["kl_ci_high"]
        assert r["ce_gap"] == pytest.approx(r["ce_light"] - r["ce_heavy"])
        assert r["ce_gap_ci_low"] <= r["ce_gap"] <= r["ce_gap_ci_high"]
        assert r["nelbo_heavy"] == pytest.approx(r["ce_heavy"] * r["masked_tokens"] / (10 * L) / r["t"], rel=1e-3)
    data = importance.importance_json(rows, {"profile": "toy"})
    text = importance.profile_csv(rows)
    table = list(csv.DictReader(io.StringIO(text)))
    assert len(table) == 6 and set(table[0]) == set(importance.CSV_FIELDS)
    json.dumps(data, allow_nan=False)
    plot_importance(rows, tmp_path / "importance.png", "toy")
    assert (tmp_path / "importance.png").read_bytes()[:4] == b"\x89PNG"


def test_step_signals_mapping(rows):
    data = importance.importance_json(rows, {})
    swap = {"segments": 4, "ranking": [{"light_segments": [k], "delta_log_ppl": d}
                                       for k, d in enumerate([0.1, 0.4, 0.3, 0.05])]}
    sig = importance.step_signals(400, data, swap)
    assert set(sig) == {"kl", "ce_gap", "swap"} and all(v.shape == (400,) for v in sig.values())
    # step 0 is t near 1: the largest-t bin's value; the last step: the smallest-t bin's
    assert sig["kl"][0] == pytest.approx(rows[-1]["kl"]) and sig["kl"][-1] == pytest.approx(rows[0]["kl"])
    # a segment's steps sum to about its swap delta (linear interpolation between segment centres)
    sums = sig["swap"].reshape(4, 100).sum(1)
    np.testing.assert_allclose(sums, [0.1, 0.4, 0.3, 0.05], atol=0.05)
    assert sig["swap"].sum() == pytest.approx(0.85, abs=0.02)
    with pytest.raises(UserError, match="one light segment"):
        importance.step_signals(400, None, {"segments": 4, "ranking": [{"light_segments": [0, 1],
                                                                        "delta_log_ppl": 0.1}]})


def test_bad_inputs(models, sequences):
    heavy = partial(fwd, models[0])
    with pytest.raises(UserError, match="bins"):
        importance.timestep_profile(heavy, heavy, sequences, bins=0, mask_id=MASK, batch_size=4, seed=0)
    with pytest.raises(UserError, match="mask id"):
        importance.timestep_profile(heavy, heavy, np.full((2, L), MASK), bins=2, mask_id=MASK, batch_size=2, seed=0)
    with pytest.raises(UserError, match="only 10 rows"):
        importance.select_sequences(sequences, 11, 0)
    picked, idx = importance.select_sequences(sequences, 4, 0)
    assert list(idx) == sorted(idx) and (picked == sequences[idx]).all()


class _FakeTokenizer:
    mask_id = MASK

    @staticmethod
    def batch_decode(rows):
        return [" ".join(map(str, r)) for r in rows]


def _fake_stage_inputs(monkeypatch, models, sequences):
    """The smoke profile with toy models, toy sequences and a toy tokenizer (no prepared data, no checkpoints)."""
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))
    monkeypatch.setattr(importance_cmd, "validation_rows", lambda profile: sequences)
    monkeypatch.setattr(importance_cmd, "get_tokenizer", lambda name: _FakeTokenizer())
    monkeypatch.setattr(importance_cmd, "profile_denoisers", lambda p: {
        "heavy": sampler.denoiser_from_model(models[0]), "light": sampler.denoiser_from_model(models[1])})


def _toy_judge(profile):
    def score(texts):
        ids = [list(map(int, t.split())) for t in texts]
        return np.array([sum((i * 7919) % 13 for i in r) / 5.0 for r in ids]), np.array([len(r) for r in ids])

    return score, {"judge": "toy"}


def test_cli_writes_outputs(monkeypatch, tmp_path, models, sequences):
    _fake_stage_inputs(monkeypatch, models, sequences)
    # smoke profile: 10 bins, 8 sequences; swap sensitivity off (it needs the judge)
    assert cli.main(["importance", "--profile", "smoke", "--out", str(tmp_path), "--no-swap"]) == 0
    data = json.loads((tmp_path / "importance.json").read_text())
    assert data["num_bins"] == len(data["bins"]) == 10 and data["num_sequences"] == 8
    assert data["stage_time"]["wall_s"] > 0 and data["stage_time"]["cpu_s"] > 0  # the command's own time
    assert (tmp_path / "importance.csv").is_file() and (tmp_path / "importance.png").is_file()
    assert not (tmp_path / "swap_sensitivity.json").exists()


def test_cli_swap_sensitivity(monkeypatch, tmp_path, models, sequences):
    _fake_stage_inputs(monkeypatch, models, sequences)
    monkeypatch.setattr(importance_cmd, "judge_scorer", _toy_judge)
    # smoke: T = 64, swap_segments 4, search.num_samples 4
    assert cli.main(["importance", "--profile", "smoke", "--out", str(tmp_path), "--no-progress"]) == 0
    swap, scores = search.load_result(tmp_path / "swap_sensitivity.json")
    assert swap["segments"] == 4 and swap["light"] == 1 and swap["num_samples"] == 4
    assert sorted(r["light_segments"][0] for r in swap["ranking"]) == [0, 1, 2, 3]
    assert set(scores) == {"HHHH", "LHHH", "HLHH", "HHLH", "HHHL"}
    assert swap["traversal"] == {"mode": "trie", "segment_runs": 4 + 10, "full_runs": 20}
    for suffix in ("csv", "png"):
        assert (tmp_path / f"swap_sensitivity.{suffix}").is_file()
    # importance.json comes last: it carries the time of the whole stage, swap profile included
    swap_time = (tmp_path / "swap_sensitivity.json").stat().st_mtime_ns
    assert (tmp_path / "importance.json").stat().st_mtime_ns >= swap_time


def test_cli_unknown_profile_exit_2(monkeypatch, capsys):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))
    assert cli.main(["importance", "--profile", "nope"]) == 2
    assert "unknown profile" in capsys.readouterr().err


def test_add_arguments_defaults():
    p = argparse.ArgumentParser()
    importance_cmd.add_arguments(p)
    a = p.parse_args([])
    assert a.swap is True and a.out is None


def test_logits_must_match_the_masked_positions():
    x0 = torch.randint(0, MASK, (2, 5))
    x_t = x0.clone()
    x_t[0, 1] = MASK
    with pytest.raises(UserError, match=r"logits for 2 and 1 positions, expected one row per masked position \(1\)"):
        importance.masked_stats(torch.zeros(2, V), torch.zeros(1, V), x0, x_t, MASK)
