"""The reference's fp32 sampling (`precision: float32-reference`, mdlm.sampler_reference).

The law of the reference's fp32 race, derived here from its definition. At a masked position the entries j
(real tokens with q_v = p(v)(t - s), the mask entry with q_mask = s) race with E_j = -log U_j, U_j uniform on
the float32 grid k / N, N = 2**24 (the 1e-10 guards move E by under 0.2% of one grid step near 0 and are
left out). Token v beats the mask iff E_v < x = q_v E_mask / s, i.e. U_v > e^-x, which holds for
ceil(N x) - 1 = floor(N x) of the N grid points when N x is not an integer (x is small: e^-x ~ 1 - x). With
a_v = N q_v / s and E_mask ~ Exp(1):

    E[floor(a_v E_mask)] = sum_{n>=1} P(E_mask >= n / a_v) = 1 / (exp(1 / a_v) - 1)

so P(v wins) = P_exact(v) g(a_v), g(a) = (1/a) / (exp(1/a) - 1), to first order in the (rare, ~1e-3) event
that two tokens beat the mask. g -> 1 for a >> 1 (exact law) and g ~ e^(-1/a)/a for a << 1: tokens whose
q_v / s is below about 1/N are cut off, and the unmask probability sum_v P(v wins) falls below (t - s)/t.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mdlm.errors import UserError
from mdlm.sampler import sample, sample_steps
from mdlm.sampler_reference import race, reference_time_steps, step_uniforms
from mdlm.sampling_law import SamplerConfig, draw_tokens, sampling_protocol, time_grid, unmask_steps
from mdlm.schedule import Schedule

N = 2.0**24
ZIPF_V = 50257  # real tokens; the mask entry is the extra last column
T_STEPS, T_AT = 1000, 0.99


def zipf(vocab: int) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1)
    return p / p.sum()


def fp32_race_law(p: np.ndarray, t: float, s: float) -> tuple[float, np.ndarray]:
    """(unmask probability, token law given unmasking) of the reference's fp32 race (module docstring)."""
    q = p * (t - s)
    exact = q / (s + q.sum())
    a = N * q / s
    with np.errstate(over="ignore"):
        g = (1.0 / a) / np.expm1(1.0 / a)  # expm1 overflows to inf for a << 1: g = 0
    win = exact * g
    return float(win.sum()), win / win.sum()


def entropy(law: np.ndarray) -> float:
    nz = law[law > 0]
    return float(-(nz * np.log(nz)).sum())


def test_closed_form_at_the_issue_example():
    p = zipf(ZIPF_V)
    t = T_AT
    s = t - (1 - 1e-5) / T_STEPS
    rate, law = fp32_race_law(p, t, s)
    assert entropy(p) == pytest.approx(7.566, abs=1e-3)  # the exact law: tokens drawn from p itself
    assert entropy(law) == pytest.approx(5.65, abs=0.01)
    assert rate / ((t - s) / t) == pytest.approx(0.691, abs=0.002)  # 31% of the unmask probability is lost
    # a large step (t - s comparable to s) is nearly exact: every q_v / s is far above 1/N (a_v >= 28)
    rate_big, law_big = fp32_race_law(p, 0.99, 0.5)
    assert rate_big == pytest.approx(0.49 / 0.99, rel=5e-3) and entropy(law_big) == pytest.approx(7.566, abs=0.01)


@pytest.mark.slow
def test_reference_race_matches_the_fp32_closed_form_on_zipf():
    """The race and its uniforms, as the loop runs them, at t = 0.99 of T = 1000 over Zipf(1), 50,257 tokens.

    ~1 min on one core: every draw needs 50,258 uniforms and only ~7e-4 of the draws unmask.
    """
    p = zipf(ZIPF_V)
    t32, s32 = reference_time_steps(T_STEPS, 1e-5)
    i = int(np.argmin(np.abs(t32.numpy() - T_AT)))  # the step that starts at t = 0.99
    t, s = float(t32[i]), float(s32[i])
    rate, law = fp32_race_law(p, t, s)
    probs = torch.from_numpy(np.append(p, 0.0)).float()  # [V + 1], mask column last
    draws, chunk = 40_000, 500
    gen = torch.Generator()
    won = []
    for k in range(draws // chunk):
        u = step_uniforms(1000 + k, i, chunk, ZIPF_V + 1, "cpu", gen)
        out = race(probs.expand(chunk, -1).clone(), t32[i], s32[i], u, ZIPF_V)
        won += out[out != ZIPF_V].tolist()
    n = len(won)
    assert abs(n - draws * rate) < 4 * math.sqrt(draws * rate)
    # unbiased entropy estimate: mean of -log law(v) over the drawn tokens has expectation H(law)
    nll = -np.log(law[np.array(won)])
    assert np.isfinite(nll).all()
    assert abs(nll.mean() - entropy(law)) < 4 * nll.std() / math.sqrt(n)
    assert entropy(law) < entropy(p) - 1.5  # and the exact law is far from it


def test_float64_mode_follows_the_exact_law_on_zipf():
    p = zipf(ZIPF_V)
    grid = time_grid(T_STEPS)
    i = int(np.argmin(np.abs(grid[:-1] - T_AT)))
    # unmask decisions: P(unmask at step i) = grid[i] - grid[i+1] for a position masked at the start
    tau = unmask_steps(7, np.arange(2000), 500, T_STEPS)
    n, expected = (tau == i).sum(), tau.size * (grid[i] - grid[i + 1])
    assert abs(n - expected) < 4 * math.sqrt(expected)
    # tokens: inverse CDF of p, estimated entropy matches H(p)
    logits = torch.from_numpy(np.append(np.log(p), 0.0)).float().expand(200, -1)
    u = np.random.default_rng(0).random(1000)
    tokens = np.concatenate([draw_tokens(logits, ZIPF_V, u[k:k + 200], None, SamplerConfig()).numpy()
                             for k in range(0, 1000, 200)])
    nll = -np.log(p[tokens])
    assert abs(nll.mean() - entropy(p)) < 4 * nll.std() / math.sqrt(len(tokens))


# ---- the loop on toy denoisers -----------------------------------------------------------------------------

V, MASK = 6, 5


class Fixed:
    """Same logits everywhere; counts rows per call."""

    def __init__(self, logits):
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.rows: list[int] = []

    def __call__(self, ids):
        self.rows.append(ids.shape[0])
        return self.logits.expand(ids.shape[0], ids.shape[1], -1).clone()


LOGITS = [1.0, 0.5, 0.0, -0.5, 2.0, 3.0]
REF = SamplerConfig(precision="float32-reference")


def run(denoisers, schedule, n=6, seq_len=8, config=REF, **kwargs):
    return sample(denoisers, schedule, mask_id=MASK, seq_len=seq_len, sample_indices=range(n), seed=3,
                  config=config, **kwargs)


def test_same_seed_same_samples_for_any_batching():
    h = Schedule.from_segments("all-heavy", ["H100%"], 12)
    a = run({"heavy": Fixed(LOGITS)}, h, batch_size=6)
    b = run({"heavy": Fixed(LOGITS)}, h, batch_size=4)
    np.testing.assert_array_equal(a.token_ids, b.token_ids)
    np.testing.assert_array_equal(a.unmask_step, b.unmask_step)
    assert (a.token_ids != MASK).all()


def test_unmask_and_token_law_at_large_steps_is_the_exact_one():
    # T = 2: step 0 goes from t = 1 to s ~ 1/2, so about half the positions unmask there; fp32 truncation
    # is invisible at this scale (every q_j / q_mask >> 2**-24)
    h = Schedule.from_segments("all-heavy", ["H100%"], 2)
    r = run({"heavy": Fixed(LOGITS)}, h, n=50, seq_len=40, config=SamplerConfig(precision="float32-reference",
                                                                                  noise_removal=False))
    t32, s32 = reference_time_steps(2, 1e-5)
    first = (r.unmask_step == 0).mean()
    p0 = 1 - float(s32[0]) / float(t32[0])
    assert abs(first - p0) < 4 * math.sqrt(p0 * (1 - p0) / r.unmask_step.size)
    probs = torch.softmax(torch.tensor(LOGITS[:MASK]), 0).numpy()
    tokens = r.token_ids[r.unmask_step == 0]
    counts = np.bincount(tokens, minlength=MASK)[:MASK]
    stat = (((counts - probs * counts.sum()) ** 2) / (probs * counts.sum())).sum()
    assert stat < 18.47  # chi-square df 4, 0.999 quantile


def test_stored_prediction_reused_until_the_row_changes_and_calls_are_honest():
    steps = 30
    h = Schedule.from_segments("all-heavy", ["H100%"], steps)
    fn = Fixed(LOGITS)
    r = run({"heavy": fn}, h, n=4, seq_len=6)
    for k in range(4):
        tau = r.unmask_step[k]
        changed = sorted(set(tau[tau < steps].tolist()))
        # a forward at step 0, then one at the first step after each change while the row still has masks
        expected = 1 + sum(1 for c in changed if (tau > c).any())
        expected += int((tau == steps).any())  # the final noise-removal pass
        assert r.row_forwards[k, 0] == expected
    assert sum(fn.rows) == r.row_forwards.sum() and len(fn.rows) == r.calls.sum()
    ddpm = run({"heavy": Fixed(LOGITS)}, h, n=4, seq_len=6,
               config=SamplerConfig(precision="float32-reference", predictor="ddpm"))
    assert (ddpm.row_forwards[:, 0] == steps + 1).all()  # every row at every step, and the final pass
    np.testing.assert_array_equal(ddpm.token_ids, r.token_ids)  # same uniforms, same time-agnostic model


def test_a_model_switch_invalidates_stored_predictions():
    steps = 20
    sched = Schedule.from_segments("half", ["H50%", "L50%"], steps)
    heavy, light = Fixed(LOGITS), Fixed(LOGITS)
    r = run({"heavy": heavy, "light": light}, sched, n=5, seq_len=30)
    # at step 10 every row still has masked positions (30 positions, 20 steps), so the light model's first
    # call covers all rows, changed or not
    assert light.rows[0] == 5
    assert r.calls_by_model()["light"] == len(light.rows)


def test_precision_names_and_bad_input():
    assert SamplerConfig(precision="float32").precision == "float32-exact-unmask"
    with pytest.raises(UserError, match="sampler precision 'bf16'"):
        SamplerConfig(precision="bf16").validate()
    x = torch.full((1, 4), MASK)
    with pytest.raises(UserError, match="float32-reference"):
        sample_steps(Fixed(LOGITS), x, (np.zeros((1, 4), np.int32), np.zeros((1, 4)), None), start=0, stop=2,
                     steps=2, mask_id=MASK, config=REF)
    record = sampling_protocol(REF)
    assert record["precision"] == "float32-reference" and "mask entry" in record["token_draw"]
    assert sampling_protocol(SamplerConfig())["unmask_rule"].startswith("exact")


def test_cli_sample_float32_reference_end_to_end(monkeypatch, tmp_path, toy_dit, toy_tokenizer):
    """`mdlm sample --precision float32-reference` on the smoke profile (toy DiTs and a toy tokenizer)."""
    import argparse
    import json
    from pathlib import Path

    from mdlm import sample_runs, sampler
    from mdlm.commands import sample as sample_cmd

    monkeypatch.setenv("MDLM_ROOT", str(Path(__file__).resolve().parents[1]))
    models = {"heavy": toy_dit(3, 0, 11, 32), "light": toy_dit(1, 1, 11, 32)}
    monkeypatch.setattr(sample_cmd, "profile_denoisers",
                        lambda profile, device="cpu": {k: sampler.denoiser_from_model(m) for k, m in models.items()})
    monkeypatch.setattr(sample_cmd, "get_tokenizer", lambda name: toy_tokenizer)
    out = tmp_path / "s.jsonl"
    parser = argparse.ArgumentParser()
    sample_cmd.add_arguments(parser)
    argv = ["--profile", "smoke", "--schedule", "sandwich", "--num-samples", "3", "--batch-size", "2", "--steps", "16",
            "--precision", "float32-reference", "--out", str(out), "--no-progress"]
    assert sample_cmd.main(parser.parse_args(argv)) == 0
    first = out.read_bytes()
    assert sample_cmd.main(parser.parse_args(argv)) == 0
    assert out.read_bytes() == first  # bit-identical for the same seed
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert all(r["precision"] == "float32-reference" and 10 not in r["token_ids"] for r in rows)
    meta = json.loads(sample_runs.meta_path(out).read_text())
    assert meta["precision"] == "float32-reference"
    assert meta["row_forwards"]["heavy"] + meta["row_forwards"]["light"] == sum(
        sum(r["row_forwards"].values()) for r in rows)
