"""Sampler tests on hand-built toy denoisers whose outputs (and so the exact sample law) are known."""

import dataclasses
import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from mdlm import sample_runs, sampler, sampling_law
from mdlm.errors import UserError
from mdlm.sample_runs import merge_results
from mdlm.sampler import sample
from mdlm.sampling_law import SamplerConfig, time_grid, unmask_steps
from mdlm.schedule import Schedule

ROOT = Path(__file__).resolve().parents[1]
V, MASK = 6, 5  # toy vocabulary: real tokens 0..4, mask 5 (last id, as GPT-2)
FIXED = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, 3.0])  # a large mask logit that SUBS must ignore


class Fixed:
    """Same logits at every position, whatever the input: final tokens are iid softmax(real logits)."""

    def __init__(self, logits):
        self.logits = torch.as_tensor(logits, dtype=torch.float32)
        self.rows = []  # rows per call
        self.positions = []  # requested positions per call

    def __call__(self, ids, rows, pos):
        self.rows.append(ids.shape[0])
        self.positions.append(pos.shape[0])
        return self.logits.expand(pos.shape[0], -1).clone()


def one_hot_logits(token, vocab=V):
    z = torch.full((vocab,), -30.0)
    z[token] = 30.0
    return z


class CountUnmasked:
    """Predicts (almost surely) token = (#unmasked positions of the row) mod MASK: depends on the state."""

    def __init__(self, mask_id=MASK, vocab=V):
        self.mask_id, self.vocab = mask_id, vocab
        self.inputs = []

    def __call__(self, ids, rows, pos):
        self.inputs.append(ids.clone())
        count = (ids != self.mask_id).sum(1) % self.mask_id  # [R]
        z = torch.full((pos.shape[0], self.vocab), -30.0)
        z[torch.arange(pos.shape[0]), count[rows]] = 30.0
        return z


def chi_square(tokens, probs):
    counts = np.bincount(np.asarray(tokens).ravel(), minlength=len(probs)).astype(float)
    expected = np.asarray(probs) * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "a zero-probability token was sampled"
    return float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum()), int(keep.sum() - 1)


def run(denoisers, schedule, n=8, seq_len=16, seed=0, **kwargs):
    return sample(denoisers, schedule, mask_id=MASK, seq_len=seq_len, sample_indices=range(n), seed=seed,
                  **kwargs)


H = Schedule.from_segments("all-heavy", ["H100%"], 16)


# ---- the sample law ----------------------------------------------------------------------------------------

# chi-square 0.999 quantiles: df 4 -> 18.47, df 2 -> 13.82 (fixed seeds: deterministic, but a wrong sampler
# gives values in the hundreds)


def test_fixed_logits_marginals_float64():
    r = run({"heavy": Fixed(FIXED)}, H, n=400)
    probs = torch.softmax(FIXED[:MASK].double(), 0).numpy()
    stat, df = chi_square(r.token_ids, [*probs, 0.0])
    assert df == 4 and stat < 18.47
    assert (r.token_ids != MASK).all()


def test_fixed_logits_marginals_float32_race():
    r = run({"heavy": Fixed(FIXED)}, H, n=400, config=SamplerConfig(precision="float32"))
    probs = torch.softmax(FIXED[:MASK].double(), 0).numpy()
    stat, df = chi_square(r.token_ids, [*probs, 0.0])
    assert df == 4 and stat < 18.47
    f64 = run({"heavy": Fixed(FIXED)}, H, n=400)
    assert not np.array_equal(r.token_ids, f64.token_ids)  # the switch changes the draws


def test_top_p_marginals():
    # sorted probabilities of tokens 4, 0, 1, 2, 3 are .47, .17, .10, .06, .04 (of the 5 real tokens)
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, 2.0, 9.0])
    p = torch.softmax(logits[:MASK].double(), 0).numpy()
    top_p = 0.8  # keeps 4, 0, 1 (mass before 1 is < 0.8), drops 2, 3
    kept = np.zeros(V)
    order = np.argsort(-p)
    cum = np.cumsum(p[order]) - p[order]
    kept[order[cum < top_p]] = p[order[cum < top_p]]
    assert set(np.flatnonzero(kept)) == {4, 0, 1}
    for precision in ("float64", "float32"):
        r = run({"heavy": Fixed(logits)}, H, n=300, config=SamplerConfig(top_p=top_p, precision=precision))
        stat, df = chi_square(r.token_ids, kept / kept.sum())
        assert df == 2 and stat < 13.82


def test_mask_logit_is_never_sampled():
    for precision in ("float64", "float32"):
        r = run({"heavy": Fixed([0, 0, 0, 0, 0, 1e4])}, H, n=20, config=SamplerConfig(precision=precision))
        assert (r.token_ids != MASK).all()


def test_mask_in_the_middle_of_the_vocabulary():
    # BERT-style: the mask id is not the last one
    logits = one_hot_logits(2)
    logits[1] = 1e4  # the mask column
    r = sample({"heavy": Fixed(logits)}, H, mask_id=1, seq_len=8, sample_indices=range(4), seed=0)
    assert (r.token_ids == 2).all()


def test_unmasking_times_follow_the_grid():
    # P(position still masked after step i) = grid[i+1]
    steps = 10
    tau = unmask_steps(0, np.arange(800), 16, steps)
    grid = time_grid(steps)
    masked_after = np.array([(tau > i).mean() for i in range(steps)])
    assert np.abs(masked_after - grid[1:]).max() < 0.02
    assert tau.min() >= 0 and tau.max() <= steps


def test_inverse_cdf_edges_never_pick_zero_weights():
    w = torch.tensor([[0.0, 0.3, 0.7, 0.0, 0.0]], dtype=torch.float64)
    for u, expected in ((0.0, 1), (0.3 / 1.0 - 1e-12, 1), (0.3 + 1e-12, 2), (1 - 2**-53, 2)):
        assert sampling_law._inverse_cdf(w, torch.tensor([u], dtype=torch.float64)).item() == expected


# ---- schedules: model switching, state seen by the model, noise removal ----------------------------------------


def test_tokens_come_from_the_model_of_their_segment():
    s = Schedule.from_segments("lhl", ["L2", "H4", "L2"], 8)
    heavy, light = Fixed(one_hot_logits(1)), Fixed(one_hot_logits(2))
    for predictor in ("ddpm_cache", "ddpm"):
        r = run({"heavy": heavy, "light": light}, s, n=16, seq_len=32, config=SamplerConfig(predictor=predictor))
        step_model = np.array([s.model_at(i) for i in range(8)])
        inner = r.unmask_step < 8
        expected = np.where(step_model[r.unmask_step[inner]] == "H", 1, 2)
        assert np.array_equal(r.token_ids[inner], expected)
        # the first step of each segment unmasked something, so a switch was exercised
        assert {0, 2, 6} <= set(np.unique(r.unmask_step).tolist())


def test_denoiser_sees_the_state_before_its_step():
    # token at a position = #unmasked positions of its row when it was drawn, i.e. before its step
    s = Schedule.from_segments("lh", ["L3", "H5"], 8)
    for predictor in ("ddpm_cache", "ddpm"):
        r = run({"heavy": CountUnmasked(), "light": CountUnmasked()}, s, n=6, seq_len=24,
                config=SamplerConfig(predictor=predictor))
        for row in range(6):
            tau = r.unmask_step[row]
            for pos in np.flatnonzero(tau < 8):
                assert r.token_ids[row, pos] == (tau < tau[pos]).sum() % MASK


def test_noise_removal_uses_the_last_model_and_counts():
    s = Schedule.from_segments("hl", ["H4", "L4"], 8)
    cfg = SamplerConfig(t_min=0.3)  # ~30% of positions are still masked after the loop
    heavy, light = Fixed(one_hot_logits(1)), Fixed(one_hot_logits(2))
    r = run({"heavy": heavy, "light": light}, s, n=8, seq_len=16, config=cfg)
    left = r.unmask_step == 8
    assert left.any()
    assert (r.token_ids[left] == 2).all()  # argmax of the light (last-step) model
    assert np.array_equal(r.final_pass, left.any(1))
    light_steps = [len({t for t in row if 4 <= t < 8}) for row in r.unmask_step]
    assert np.array_equal(r.row_forwards_by_model()["light"], np.array(light_steps) + r.final_pass)

    off = run({"heavy": heavy, "light": light}, s, n=8, seq_len=16,
              config=SamplerConfig(t_min=0.3, noise_removal=False))
    assert np.array_equal(off.token_ids == MASK, left)
    assert not off.final_pass.any()
    assert off.calls_by_model()["light"] == r.calls_by_model()["light"] - 1


def test_schedule_with_three_models():
    s = Schedule.from_segments("3", ["A2", "B2", "C2"], 6, models={"A": "a", "B": "b", "C": "c"})
    fns = {m: Fixed(one_hot_logits(t)) for m, t in (("a", 0), ("b", 1), ("c", 2))}
    r = run(fns, s, n=4, seq_len=32)
    inner = r.unmask_step < 6
    assert np.array_equal(r.token_ids[inner], r.unmask_step[inner] // 2)


# ---- prefixes -------------------------------------------------------------------------------------------


def test_prefix_is_preserved_and_seen_by_the_model():
    toy = CountUnmasked()
    prefixes = [[3, 1, 4], [2, 2], [0], [4, 4, 4, 4]]
    r = sample({"heavy": toy}, H, mask_id=MASK, seq_len=12, sample_indices=range(4), seed=1,
               prefixes=prefixes, batch_size=2)
    for k, prefix in enumerate(prefixes):
        assert r.token_ids[k, :len(prefix)].tolist() == prefix
        assert (r.unmask_step[k, :len(prefix)] == -1).all()
        assert (r.unmask_step[k, len(prefix):] >= 0).all()
    assert r.prefix_len.tolist() == [3, 2, 1, 4]
    for ids in toy.inputs:  # every call saw its rows' prefixes
        assert any(ids[0, :len(p)].tolist() == p for p in prefixes)
    assert (r.token_ids != MASK).all()


def test_prefix_validation():
    with pytest.raises(UserError, match="longer than the sequence length 4"):
        sample({"heavy": Fixed(FIXED)}, H, mask_id=MASK, seq_len=4, sample_indices=[0], seed=0,
               prefixes=[[1, 2, 3, 4, 0]])
    with pytest.raises(UserError, match="not the mask id"):
        sample({"heavy": Fixed(FIXED)}, H, mask_id=MASK, seq_len=8, sample_indices=[0], seed=0,
               prefixes=[[1, MASK]])
    with pytest.raises(UserError, match="no prefix for sample 1"):
        sample({"heavy": Fixed(FIXED)}, H, mask_id=MASK, seq_len=8, sample_indices=[0, 1], seed=0,
               prefixes=[[1]])


# ---- determinism, common random numbers, batching -----------------------------------------------------------


def test_same_seed_same_samples_other_seed_other_samples():
    a = run({"heavy": CountUnmasked()}, H, n=6, seed=3)
    b = run({"heavy": CountUnmasked()}, H, n=6, seed=3)
    c = run({"heavy": CountUnmasked()}, H, n=6, seed=4)
    assert np.array_equal(a.token_ids, b.token_ids) and np.array_equal(a.unmask_step, b.unmask_step)
    assert not np.array_equal(a.unmask_step, c.unmask_step)


def test_common_random_numbers_across_schedules():
    sandwich = Schedule.from_segments("sandwich", ["L12.5%", "H75%", "L12.5%"], 16)
    heavy, light = Fixed(FIXED), Fixed([2.0, 0.0, 1.0, 0.5, -1.0, 0.0])
    a = run({"heavy": heavy, "light": light}, H, n=32)
    b = run({"heavy": heavy, "light": light}, sandwich, n=32)
    assert np.array_equal(a.unmask_step, b.unmask_step)  # same positions unmask at the same steps
    heavy_steps = np.array([sandwich.model_at(i) == "H" for i in range(16)] + [False])
    in_heavy = heavy_steps[a.unmask_step]
    assert np.array_equal(a.token_ids[in_heavy], b.token_ids[in_heavy])  # same model, same uniform
    assert not np.array_equal(a.token_ids[~in_heavy], b.token_ids[~in_heavy])


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_sample_steps_chained_equals_one_schedule(precision):
    """[0, 5) light, [5, 11) heavy, [11, 16) light from carried states == the L5,H6,L5 schedule, bit for bit."""
    cfg = SamplerConfig(precision=precision)
    fns = {"heavy": CountUnmasked(), "light": Fixed(FIXED)}
    s = Schedule.from_segments("lhl", ["L5", "H6", "L5"], 16)
    ref = run(fns, s, n=6, config=cfg)
    idx = np.arange(6)
    noise = sampling_law.batch_noise(0, idx, 16, 16, cfg)
    x = torch.full((6, 16), MASK, dtype=torch.long)
    for model, start, stop in [("light", 0, 5), ("heavy", 5, 11), ("light", 11, 16)]:
        y = sampler.sample_steps(fns[model], x, noise, start=start, stop=stop, steps=16, mask_id=MASK, config=cfg)
        assert (x != MASK).sum() <= (y != MASK).sum()  # the input state is not modified in place
        x = y
    assert np.array_equal(x.numpy(), ref.token_ids)
    # stopping early leaves exactly the positions that unmask later (or never) masked: no final pass
    mid = sampler.sample_steps(fns["light"], torch.full((6, 16), MASK, dtype=torch.long), noise, start=0, stop=5,
                               steps=16, mask_id=MASK, config=cfg)
    assert np.array_equal(mid.numpy() == MASK, noise[0] >= 5)


def test_sample_steps_rejects_ddpm_and_bad_ranges():
    noise = sampling_law.batch_noise(0, np.arange(2), 8, 8, SamplerConfig())
    x = torch.full((2, 8), MASK, dtype=torch.long)
    with pytest.raises(UserError, match="ddpm_cache"):
        sampler.sample_steps(Fixed(FIXED), x, noise, start=0, stop=4, steps=8, mask_id=MASK,
                             config=SamplerConfig(predictor="ddpm"))
    with pytest.raises(UserError, match="start 5, stop 4"):
        sampler.sample_steps(Fixed(FIXED), x, noise, start=5, stop=4, steps=8, mask_id=MASK, config=SamplerConfig())


@pytest.mark.parametrize("predictor", ["ddpm_cache", "ddpm"])
def test_batch_size_and_split_independence(predictor):
    cfg = SamplerConfig(predictor=predictor)
    s = Schedule.from_segments("lh", ["L4", "H12"], 16)
    fns = {"heavy": CountUnmasked(), "light": Fixed(FIXED)}
    ref = run(fns, s, n=4, batch_size=4, config=cfg)
    for batch_size in (1, 2, 3):
        other = run(fns, s, n=4, batch_size=batch_size, config=cfg)
        assert np.array_equal(ref.token_ids, other.token_ids)
        assert np.array_equal(ref.row_forwards, other.row_forwards)
    parts = [sample(fns, s, mask_id=MASK, seq_len=16, sample_indices=idx, seed=0, config=cfg)
             for idx in ([3, 0], [2], [1])]
    merged = merge_results(parts)
    assert merged.sample_indices.tolist() == [0, 1, 2, 3]
    assert np.array_equal(merged.token_ids, ref.token_ids)


def test_ddpm_and_ddpm_cache_give_the_same_samples():
    s = Schedule.from_segments("lhl", ["L2", "H10", "L4"], 16)
    fns = {"heavy": CountUnmasked(), "light": Fixed(FIXED)}
    a = run(fns, s, n=8, config=SamplerConfig(predictor="ddpm", t_min=0.05))
    b = run(fns, s, n=8, config=SamplerConfig(predictor="ddpm_cache", t_min=0.05))
    assert np.array_equal(a.token_ids, b.token_ids)


# ---- event batching vs the step-synchronous law, on small random DiTs ---------------------------------------


def step_synchronous(models, schedule, *, n, seq_len, mask_id, seed, config, prefixes=None):
    """The reference law, slowly: step by step, each row with a position unmasking at the step runs the step's
    model alone (full logits [1, L, V]); the final pass runs the last step's model on rows with masks left."""
    idx = np.arange(n)
    tau, u_token, race = sampling_law.batch_noise(seed, idx, seq_len, schedule.steps, config)
    x = torch.full((n, seq_len), mask_id, dtype=torch.long)
    for r, p in enumerate(prefixes or []):
        x[r, :len(p)], tau[r, :len(p)] = torch.tensor(p), -1
    row_forwards = {name: np.zeros(n, dtype=np.int64) for name in models}
    with torch.no_grad():
        for i in range(schedule.steps + 1):
            name = schedule.model_name_at(min(i, schedule.steps - 1))
            for r in range(n):
                pos = np.flatnonzero(tau[r] == i)
                if pos.size == 0 or (i == schedule.steps and not config.noise_removal):
                    continue
                logits = models[name](x[r:r + 1])[0, torch.from_numpy(pos)]  # [n_pos, V]
                row_forwards[name][r] += 1
                if i < schedule.steps:
                    keys = (None if race is None
                            else sampling_law._splitmix64(race[[r] * pos.size] + pos.astype(np.uint64)))
                    x[r, pos] = sampling_law.draw_tokens(logits, mask_id, u_token[r, pos], keys, config)
                else:
                    logits[:, mask_id] = float("-inf")
                    x[r, pos] = logits.argmax(-1)
    return x.numpy(), row_forwards


@pytest.fixture(scope="module")
def smoke_dits():
    """Random DiTs of the smoke profile's sizes (hidden 32, 12 / 4 blocks, vocabulary 8192, L = 32) and a
    third, 2-block one; every parameter random (the adaLN-zero init would predict uniform logits)."""
    from mdlm.model import MDLM, DiTConfig

    out = {}
    for name, blocks, seed in (("heavy", 12, 0), ("light", 4, 1), ("tiny", 2, 2)):
        torch.manual_seed(seed)
        m = MDLM(DiTConfig(vocab_size=8192, hidden_size=32, n_blocks=blocks, n_heads=2, cond_dim=16, length=32,
                           dropout=0.0))
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.3)
        out[name] = m.eval()
    return out


@pytest.mark.parametrize("case", ["float64", "top_p", "float32", "three_models"])
def test_event_batching_gives_the_step_synchronous_samples(smoke_dits, one_thread, case):
    config = {"float64": SamplerConfig(t_min=0.05), "top_p": SamplerConfig(top_p=0.9, t_min=0.05),
              "float32": SamplerConfig(precision="float32", t_min=0.05),
              "three_models": SamplerConfig(t_min=0.05)}[case]
    if case == "three_models":
        s = Schedule.from_segments("abc", ["A6", "B12", "C6", "B6"], 30, models={"A": "light", "B": "heavy",
                                                                                "C": "tiny"})
    else:
        s = Schedule.from_segments("lhl", ["L6", "H18", "L6"], 30)
    prefixes = [[5, 6, 7], [], [9], [], [3, 3], [], [], [8]]
    ref, ref_rf = step_synchronous(smoke_dits, s, n=8, seq_len=32, mask_id=1, seed=3, config=config,
                                   prefixes=prefixes)
    for batch_size in (3, None):  # None: all 8 rows may share a call
        r = sample(smoke_dits, s, mask_id=1, seq_len=32, sample_indices=range(8), seed=3, config=config,
                   batch_size=batch_size, prefixes=prefixes)
        assert np.array_equal(r.token_ids, ref), f"{(r.token_ids != ref).sum()} tokens differ"
        assert {k: v.tolist() for k, v in r.row_forwards_by_model().items() if k in ref_rf} == \
            {k: v.tolist() for k, v in ref_rf.items() if v.any()}
        assert r.final_pass.any() and (r.token_ids != 1).all()
    busy_steps = len({(s.model_at(min(i, 29)), i) for i in np.unique(r.unmask_step[r.unmask_step >= 0])})
    assert int(r.calls.sum()) < busy_steps  # the step-synchronous loop makes one call per busy step
    d = sample(smoke_dits, s, mask_id=1, seq_len=32, sample_indices=range(8), seed=3, batch_size=3,
               config=dataclasses.replace(config, predictor="ddpm"), prefixes=prefixes)
    assert np.array_equal(d.token_ids, ref)  # ddpm: every row every step, full logits
    # the DiTs run folded (their conditioning computed once, not per row), and the run record says so
    assert r.conditioning_rows_by_model() == d.conditioning_rows_by_model() == {m: 0 for m in r.models.values()}


def test_sample_steps_of_a_dit_equal_sample(smoke_dits, one_thread):
    cfg = SamplerConfig(t_min=0.05)
    s = Schedule.from_segments("lhl", ["L8", "H14", "L8"], 30)
    ref = sample(smoke_dits, s, mask_id=1, seq_len=32, sample_indices=range(6), seed=1, config=cfg)
    noise = sampling_law.batch_noise(1, np.arange(6), 32, 30, cfg)
    x = torch.full((6, 32), 1, dtype=torch.long)
    for name, start, stop in (("light", 0, 8), ("heavy", 8, 15), ("heavy", 15, 22), ("light", 22, 30)):
        x = sampler.sample_steps(smoke_dits[name], x, noise, start=start, stop=stop, steps=30, mask_id=1, config=cfg)
    assert np.array_equal(x.numpy(), ref.token_ids)


def test_sample_by_call_yields_progress_and_returns_the_samples_of_sample(smoke_dits, one_thread):
    """One model call per step: the fractions of row events done rise to 1, one per call, and the result is
    `sample`'s (tokens and every count); grad mode is never left in inference mode between steps."""
    cfg = SamplerConfig(t_min=0.05)
    s = Schedule.from_segments("lhl", ["L6", "H18", "L6"], 30)
    kwargs = dict(mask_id=1, seq_len=32, sample_indices=range(5), seed=2, config=cfg, batch_size=2,
                  prefixes=[[4], [], [7, 7], [], []])
    ref = sample(smoke_dits, s, **kwargs)
    steps = sampler.sample_by_call(smoke_dits, s, **kwargs)
    fractions = []
    while True:
        try:
            fractions.append(next(steps))
        except StopIteration as stop:
            result = stop.value
            break
        assert not torch.is_inference_mode_enabled()
    assert len(fractions) == int(ref.calls.sum())
    assert fractions == sorted(fractions) and fractions[0] > 0 and fractions[-1] == 1.0
    assert np.array_equal(result.token_ids, ref.token_ids)
    for field in ("row_forwards", "calls", "head_positions", "last_block_positions", "final_pass", "unmask_step"):
        assert np.array_equal(getattr(result, field), getattr(ref, field)), field


def test_sample_by_call_needs_ddpm_cache():
    ddpm = SamplerConfig(predictor="ddpm")
    with pytest.raises(UserError, match="sample_by_call: needs the ddpm_cache predictor"):
        next(sampler.sample_by_call({"heavy": Fixed(FIXED)}, H, mask_id=MASK, seq_len=8, sample_indices=[0],
                                    seed=0, config=ddpm))


# ---- NFE accounting -------------------------------------------------------------------------------------


def test_nfe_ddpm_is_one_call_per_step_on_every_row():
    s = Schedule.from_segments("lhl", ["L3", "H10", "L3"], 16)
    heavy, light = Fixed(FIXED), Fixed(FIXED)
    r = run({"heavy": heavy, "light": light}, s, n=6, batch_size=4, config=SamplerConfig(predictor="ddpm"))
    # two batches (4 + 2 rows); noise removal: one more light call per batch
    assert r.calls_by_model() == {"heavy": 2 * 10, "light": 2 * (6 + 1)}
    assert r.calls_by_alias() == {"H": 20, "L": 14}
    assert all((v == n).all() for v, n in zip(r.row_forwards_by_model().values(), (10, 7), strict=True))
    assert sorted(set(heavy.rows)) == [2, 4] and r.final_pass.all()


def test_nfe_ddpm_cache_counts_steps_with_unmasking():
    s = Schedule.from_segments("lhl", ["L3", "H10", "L3"], 16)
    heavy, light = Fixed(FIXED), Fixed(FIXED)
    r = run({"heavy": heavy, "light": light}, s, n=8, seq_len=4, config=SamplerConfig(t_min=0.02))
    aliases = np.array([s.model_at(i) for i in range(16)])
    tau = r.unmask_step
    left = (tau == 16).any(1)
    # a row goes through a model once per step at which it unmasks something (plus the final pass)
    for row in range(8):
        steps = np.unique(tau[row][tau[row] < 16])
        assert r.row_forwards_by_model()["heavy"][row] == (aliases[steps] == "H").sum()
        assert r.row_forwards_by_model()["light"][row] == (aliases[steps] == "L").sum() + left[row]
    assert sum(heavy.rows) == r.row_forwards_by_alias()["H"] and sum(light.rows) == r.row_forwards_by_alias()["L"]
    assert len(heavy.rows) == r.calls_by_alias()["H"] and len(light.rows) == r.calls_by_alias()["L"]
    # the step-synchronous loop makes one call per step with any unmasking; batching by event makes fewer
    busy = np.unique(tau[tau < 16])
    step_synchronous = {"H": int((aliases[busy] == "H").sum()), "L": int((aliases[busy] == "L").sum()) + left.any()}
    assert r.calls_by_alias()["H"] < step_synchronous["H"] and r.calls_by_alias()["L"] <= step_synchronous["L"]
    # at most one row's event per row and call: a row never runs two of its steps in one call
    assert all(n <= 8 for n in heavy.rows + light.rows)


def test_batch_size_is_the_most_rows_per_call():
    s = Schedule.from_segments("lhl", ["L3", "H10", "L3"], 16)
    for batch_size, n in ((1, 6), (2, 6), (4, 6), (None, 6)):
        heavy, light = Fixed(FIXED), Fixed(FIXED)
        r = run({"heavy": heavy, "light": light}, s, n=n, seq_len=8, batch_size=batch_size)
        assert max(heavy.rows + light.rows) <= (batch_size or n)
        if batch_size == 1:  # one row per call: calls = row-forwards
            assert r.calls_by_alias() == r.row_forwards_by_alias()


def test_head_positions_are_the_unmasking_events_and_the_final_pass():
    s = Schedule.from_segments("hl", ["H6", "L10"], 16)
    cfg = SamplerConfig(t_min=0.2)  # ~20% of positions left to the final pass
    heavy, light = Fixed(FIXED), Fixed(FIXED)
    r = run({"heavy": heavy, "light": light}, s, n=5, seq_len=12, config=cfg, batch_size=2,
            prefixes=[[0, 1], [], [2], [], [3, 3, 3]])
    tau = r.unmask_step
    assert (tau == 16).sum() > 0 and (tau == -1).sum() == 6
    heavy_events, light_events = ((tau >= 0) & (tau < 6)).sum(), ((tau >= 6) & (tau < 16)).sum()
    assert r.head_positions_by_alias() == {"H": heavy_events, "L": light_events + (tau == 16).sum()}
    assert r.head_positions_by_model() == {"heavy": heavy_events, "light": light_events + (tau == 16).sum()}
    assert sum(heavy.positions) == heavy_events and sum(light.positions) == r.head_positions_by_alias()["L"]
    # ddpm: the reference cost, the head at every position of every row, every step and the final pass
    d = run({"heavy": heavy, "light": light}, s, n=5, seq_len=12, batch_size=2,
            config=SamplerConfig(t_min=0.2, predictor="ddpm"))
    assert d.head_positions_by_alias() == {"H": 5 * 12 * 6, "L": 5 * 12 * (10 + 1)}
    # these fakes stand for modules, which compute the conditioning for every row they run
    assert d.conditioning_rows_by_model() == {m: int(v.sum()) for m, v in d.row_forwards_by_model().items()}
    meta = sample_runs.run_meta(r, s, 0, cfg)
    # a denoiser without `last_block_positions` (a module, these fakes) runs the last block at every position
    assert meta["per_model"] == {
        "heavy": {"calls": r.calls_by_model()["heavy"], "row_forwards": int(r.row_forwards[:, 0].sum()),
                  "head_positions": int(heavy_events), "last_block_positions": 12 * int(r.row_forwards[:, 0].sum()),
                  "conditioning_rows": int(r.row_forwards[:, 0].sum())},
        "light": {"calls": r.calls_by_model()["light"], "row_forwards": int(r.row_forwards[:, 1].sum()),
                  "head_positions": int(light_events + (tau == 16).sum()),
                  "last_block_positions": 12 * int(r.row_forwards[:, 1].sum()),
                  "conditioning_rows": int(r.row_forwards[:, 1].sum())}}
    json.dumps(meta)  # plain ints


class Restricting(Fixed):
    """A fake that, like the folded forward, runs the last block only at each row's selected positions, padded
    to the most any row of the call has, and no conditioning; it records what each call should add to the tally."""

    computes_conditioning = False

    def __init__(self, logits):
        super().__init__(logits)
        self.padded = []

    def __call__(self, ids, rows, pos):
        per_row = [int((rows == r).sum()) for r in range(ids.shape[0])]
        self.padded.append(ids.shape[0] * max(per_row))
        return super().__call__(ids, rows, pos)

    @staticmethod
    def last_block_positions(rows, n_rows):
        from mdlm.folded import FoldedDiT

        return FoldedDiT.last_block_positions(rows, n_rows)


def test_last_block_positions_are_tallied_from_the_denoiser():
    s = Schedule.from_segments("hl", ["H6", "L10"], 16)  # 16 steps for 12 positions: calls with 2+ events per row
    heavy, light = Restricting(FIXED), Restricting(FIXED)
    r = run({"heavy": heavy, "light": light}, s, n=5, seq_len=12, config=SamplerConfig(t_min=0.2), batch_size=2)
    assert r.last_block_positions_by_model() == {"heavy": sum(heavy.padded), "light": sum(light.padded)}
    assert r.conditioning_rows_by_model() == {"heavy": 0, "light": 0}
    assert max(p // n for p, n in zip(light.padded, light.rows, strict=True)) >= 2  # some call padded a row
    for fake in (heavy, light):  # padding: between the selected positions and every position of the rows
        assert sum(fake.positions) <= sum(fake.padded) <= 12 * sum(fake.rows)


# ---- validation ---------------------------------------------------------------------------------------------


def test_config_and_input_validation():
    for cfg in (SamplerConfig(top_p=0.0), SamplerConfig(top_p=1.5), SamplerConfig(predictor="analytic"),
                SamplerConfig(precision="bf16"), SamplerConfig(t_min=1.0)):
        with pytest.raises(UserError):
            run({"heavy": Fixed(FIXED)}, H, config=cfg)
    with pytest.raises(UserError, match="no model 'light'"):
        run({"heavy": Fixed(FIXED)}, Schedule.from_segments("s", ["H8", "L8"], 16))
    with pytest.raises(UserError, match=r"^denoiser returned logits of shape \(\d+, 16, 6\) for \d+ requested "
                       r"positions, expected \[\d+, V\] with V > mask id 5$"):
        run({"heavy": lambda ids, rows, pos: torch.zeros(ids.shape[0], 16, V)}, H)  # the old [R, L, V] protocol
    with pytest.raises(UserError, match=r"shape \(\d+, 5\) .* V > mask id 5$"):
        run({"heavy": lambda ids, rows, pos: torch.zeros(pos.shape[0], 5)}, H)  # no mask column
    with pytest.raises(UserError, match=r"shape \(\d+, 6\) for (\d+) requested"):
        run({"heavy": lambda ids, rows, pos: torch.zeros(pos.shape[0] + 1, V)}, H)  # a row too many
    for batch_size in (0, -3):
        with pytest.raises(UserError, match=f"^batch size {batch_size}: expected a positive integer$"):
            run({"heavy": Fixed(FIXED)}, H, batch_size=batch_size)


# ---- torchrun sharding ------------------------------------------------------------------------------------


def _shard_worker(rank, world_size, port, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    s = Schedule.from_segments("lh", ["L4", "H12"], 16)
    r = sample_runs.sample_distributed(denoisers={"heavy": CountUnmasked(), "light": Fixed(FIXED)}, schedule=s,
                                   mask_id=MASK, seq_len=16, sample_indices=range(5), seed=7, batch_size=2)
    if rank == 0:
        np.savez(out, tokens=r.token_ids, idx=r.sample_indices, rf=r.row_forwards)
    else:
        assert r is None


def test_two_ranks_match_one_process(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ranks.npz"
    torch.multiprocessing.spawn(_shard_worker, args=(2, port, str(out)), nprocs=2, join=True)
    got = np.load(out)
    s = Schedule.from_segments("lh", ["L4", "H12"], 16)
    ref = sample({"heavy": CountUnmasked(), "light": Fixed(FIXED)}, s, mask_id=MASK, seq_len=16,
                 sample_indices=range(5), seed=7)
    assert got["idx"].tolist() == [0, 1, 2, 3, 4]
    assert np.array_equal(got["tokens"], ref.token_ids)
    assert np.array_equal(got["rf"], ref.row_forwards)


def test_stay_masked_probability_of_the_log_linear_reference_is_s_over_t():
    # ddpm's posterior keeps a mask with prob move_s / move_t, move = 1 - exp(-sigma) = (1 - eps) t: the
    # (1 - eps) factors cancel, so the sampler's s/t (and its unmask law) is the reference's
    diffusion = pytest.importorskip("mdlm.diffusion")
    noise = diffusion.LogLinearNoise()
    grid = torch.from_numpy(time_grid(1000))
    t, s = grid[:-1], grid[1:]
    move_t, move_s = -torch.expm1(-noise.total_noise(t)), -torch.expm1(-noise.total_noise(s))
    p_x0_mass = 1.0  # SUBS: the real tokens' probabilities sum to 1
    stay = move_s / ((move_t - move_s) * p_x0_mass + move_s)
    assert torch.allclose(stay, s / t, rtol=1e-9, atol=0)


@pytest.mark.parametrize("final_pass", [True, False])
def test_unmask_events_group_by_row_and_step_by_hand(final_pass):
    # T = 3, L = 4; -1 is a prefix position, 3 = never unmasked by the loop (the final pass only)
    tau = np.array([[0, 2, 0, -1],
                    [3, 1, 1, 1]])
    ev = sampling_law.UnmaskEvents.of(tau, steps=3, final_pass=final_pass)
    # groups in (row, step) order: (0, 0) at positions 0, 2; (0, 2) at 1; (1, 1) at 1, 2, 3; (1, 3) at 0
    rows, steps, flat = [0, 0, 1, 1], [0, 2, 1, 3], [0, 2, 1, 5, 6, 7, 4]
    if not final_pass:
        rows, steps, flat = rows[:3], steps[:3], flat[:6]
    assert ev.row.tolist() == rows and ev.step.tolist() == steps and ev.flat.tolist() == flat
    assert ev.start.tolist() == ([0, 2, 3, 6, 7] if final_pass else [0, 2, 3, 6])
    assert ev.first.tolist() == [0, 2] and ev.end.tolist() == ([2, 4] if final_pass else [2, 3])
    # a call over row 1's first group and row 0's second: call rows 0, 1 hold 3 and 1 positions
    local, row, pos = ev.positions(np.array([2, 1]), seq_len=4)
    assert local.tolist() == [0, 0, 0, 1] and row.tolist() == [1, 1, 1, 0] and pos.tolist() == [1, 2, 3, 1]


@pytest.mark.parametrize("step_aliases, aliases, expected", [
    (["h", "l", "l", "h"], ["h", "l"], [0, 1, 1, 0, 0]),  # step T (the final pass) runs step T - 1's model
    (["l", "h"], ["h", "l"], [1, 0, 0]),
    (["a", "a", "b"], ["b", "a"], [1, 1, 0, 0]),
])
def test_model_of_event_step_by_hand(step_aliases, aliases, expected):
    assert sampling_law.model_of_event_step(step_aliases, aliases).tolist() == expected


@pytest.mark.parametrize("model, step, window, batch, expected", [
    ([1, 0, 0, 0], [5, 6, 7, 40], 4, 16, 0),  # two of the three rows near the front wait on model 0
    ([1, 0, 0, 0], [5, 6, 7, 40], 0, 16, 1),  # a window of 0: the earliest event's model
    ([1, 0], [5, 6], 4, 16, 1),               # a tie: the earliest event's model
    ([2, 0, 2, 1], [3, 3, 4, 9], 2, 16, 2),   # three models; the row at step 9 is not near
    # window 2: steps <= 12 are near, two rows wait on model 1 there, one on model 0; but model 0 has a full
    # call (3 rows) waiting from step 12, at most 2 steps ahead of model 1's first (10): model 0 goes first
    ([1, 1, 0, 0, 0], [10, 11, 12, 13, 14], 2, 3, 0),
    ([1, 1, 0, 0, 0], [10, 11, 12, 13, 14], 1, 3, 1),  # window 1: 12 is more than 1 step ahead of 10
    ([1, 1, 0, 0, 0], [10, 11, 12, 13, 14], 2, 4, 1),  # no model has 4 rows waiting
    ([1, 1, 0, 0, 0], [10, 11, 12, 13, 14], 2, 2, 1),  # the windowed choice (model 1) has a full call itself
])
def test_next_model_by_hand(model, step, window, batch, expected):
    assert sampler._next_model(np.array(model), np.array(step), window, batch) == expected


def test_interleaved_calls_are_as_full_as_all_heavy():
    """64 rows of L 128 at T 1000, 16 a call: all-heavy needs 481 calls. The interleaved schedule's models
    alternate every few steps; taking the earliest event's model alone made it 551 (15% more), counting the
    rows near the front keeps it within 1%. A segment schedule stays within 1% as well."""
    from mdlm.schedule import load_schedule, resolve_schedule_path

    fakes = {"heavy": Fixed(FIXED), "light": Fixed(FIXED)}
    calls = {}
    for name in ("all-heavy", "interleaved", "sandwich"):
        s = load_schedule(resolve_schedule_path(name), 1000)
        calls[name] = int(run(fakes, s, n=64, seq_len=128, batch_size=16).calls.sum())
    assert calls["all-heavy"] == 481
    assert calls["interleaved"] <= 1.01 * calls["all-heavy"] and calls["sandwich"] <= 1.01 * calls["all-heavy"]
