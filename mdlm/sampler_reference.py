"""The reference's sampling loops: its cost (`predictor: ddpm`) and its fp32 draws (`precision: float32-reference`).

`ddpm_chunks` is the reference-cost mode of `mdlm.sampler.sample`: every row through the model at every
step with full logits, as the reference's ddpm predictor; the samples are those of ddpm_cache (the law and
the randomness are `mdlm.sampler`'s), only the cost differs. The rest of this module is the fp32 loop.

kuleshov-group/mdlm samples a masked position at each step with one exponential race in float32 over the
real tokens and the mask entry together (its `_sample_categorical` on the ddpm update):

    q_v = p_x0(v) * (t - s) for every real token v,   q_mask = s,   winner = argmax_j q_j / E_j,
    E_j = 1e-10 - log(U_j + 1e-10),   U_j float32 uniform on the grid k / 2**24

with t, s and q in float32 (t = linspace(1, t_min, T+1) in float32, s = t - (1 - t_min) / T). The mask entry
winning means "stay masked". In exact arithmetic this is the exact law (stay masked with probability s/t,
else a token drawn from p_x0), but the float32 grid bounds every E_j below by about 2**-24, so an entry with
q_j / q_mask below about 2**-24 can never win: low-probability tokens are cut off, which both lowers the
entropy of the tokens drawn and loses part of the unmasking probability (docs/evaluation.md works out the
size: Zipf(1) over 50,257 tokens, T = 1000, t = 0.99: entropy 7.57 -> 5.65 nats, unmask rate -31%).

Because unmasking now depends on the model, the "decisions first" shortcut of `mdlm.sampler` does not
apply. This loop runs every step for every row with a masked position and keeps a per-row stored prediction
(p_x0 of the whole row): it is reused while the row's tokens are unchanged and the step's model alias is
the same (exact for time-agnostic models), as the reference's ddpm_cache does for its whole batch. Calls and
row-forwards count what is actually computed. `ddpm` recomputes every row at every step, as the reference.

Random numbers: one float32 uniform per vocabulary entry (the mask column is the mask entry) per masked
position and step, from a torch generator seeded by a counter-based key of (seed, sample index, step); a
row's masked positions take consecutive rows of that draw in position order. So samples depend only on
(seed, sample index) and the models, never on batching, and are bit-identical on CPU for the same seed.

Final noise removal: positions still masked after the loop take the argmax of one more forward of the last
step's model (mask column excluded), as in `mdlm.sampler`.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm import tqdm

from mdlm.folded import conditions_per_row
from mdlm.sampling_law import _splitmix64, row_keys

STREAM_REFERENCE_RACE = 4  # a counter stream of its own (mdlm.sampling_law uses 1-3)
RACE_EPS = 1e-10  # the reference's guard inside and outside the log of its exponential race


def reference_time_steps(steps: int, t_min: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t, s) per step, float32 as the reference computes them: t = linspace(1, t_min, T+1)[i], s = t - dt."""
    grid = torch.linspace(1.0, t_min, steps + 1, dtype=torch.float32)
    t = grid[:-1]
    return t, t - (1.0 - t_min) / steps


def step_uniforms(row_key: int, step: int, count: int, vocab: int, device: torch.device | str = "cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """[count, V] float32 uniforms of one row at one step (counter-seeded; CPU values are on the 2**-24 grid)."""
    seed = int(_splitmix64(np.array([row_key], dtype=np.uint64) + np.uint64(step))[0] >> np.uint64(1))
    gen = generator or torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.rand(count, vocab, generator=gen, device=device, dtype=torch.float32)


def race(p_x0: torch.Tensor, t: torch.Tensor, s: torch.Tensor, u: torch.Tensor, mask_id: int) -> torch.Tensor:
    """The reference's joint fp32 race at n masked positions: p_x0 [n, V] fp32, uniforms u [n, V] -> ids [n].

    The mask id as the result means the position stays masked. ``u`` is consumed (overwritten in place).
    """
    q = p_x0 * (t - s)  # [n, V] float32
    q[:, mask_id] = s
    exp_noise = u.add_(RACE_EPS).log_().neg_().add_(RACE_EPS)  # = 1e-10 - log(u + 1e-10), bit for bit
    return q.div_(exp_noise).argmax(dim=-1)


def subs_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """p_x0 in float32 for every position: softmax with the mask column excluded. [R, L, V] -> [R, L, V]."""
    z = logits.float().clone()
    z[..., mask_id] = float("-inf")
    return torch.softmax(z, dim=-1)


def _nucleus(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens with mass >= top_p (renormalised), as `mdlm.sampler`."""
    sp, order = torch.sort(p, dim=-1, descending=True, stable=True)
    keep = (torch.cumsum(sp, dim=-1) - sp) < top_p
    kept = torch.zeros_like(p).scatter_(-1, order, sp * keep)
    return kept / kept.sum(dim=-1, keepdim=True)


def sample_batch_reference(fns, step_alias: np.ndarray, x: torch.Tensor, tau: np.ndarray, u_token: np.ndarray,
                           race_rows: np.ndarray | None, mask_id: int, config, bar,
                           sample_indices: np.ndarray | None = None, seed: int | None = None):
    """Run the T steps on one batch in place on x [B, L]; same contract as `mdlm.sampler._sample_batch`.

    ``tau`` [B, L] comes in with -1 at prefix positions and is filled with the step that unmasked each
    position (T: the final pass). ``sample_indices`` and ``seed`` key the race's uniforms; ``u_token`` and
    ``race_rows`` (the exact-mode noise) are not used.
    Returns row_forwards [B, A], calls [A], final_pass [B].
    """
    batch, seq_len = x.shape
    steps, device = len(step_alias), x.device
    keys = row_keys(int(seed), STREAM_REFERENCE_RACE, np.asarray(sample_indices, dtype=np.int64))  # [B]
    row_forwards = np.zeros((batch, len(fns)), dtype=np.int64)
    calls = np.zeros(len(fns), dtype=np.int64)
    t_all, s_all = reference_time_steps(steps, config.t_min)
    cached = np.full(batch, -1, dtype=np.int64)  # model alias of the row's stored prediction; -1: none
    probs: torch.Tensor | None = None  # [B, L, V] stored p_x0 per row
    gen = torch.Generator(device=device)
    tau[tau != -1] = steps
    for i in range(steps):
        bar.update(1)
        masked = x == mask_id  # [B, L]
        active = np.flatnonzero(masked.any(dim=1).cpu().numpy())
        a = int(step_alias[i])
        need = np.arange(batch) if config.predictor == "ddpm" else active[cached[active] != a]
        if need.size:
            logits = fns[a](x[torch.from_numpy(need).to(device)])  # [R, L, V]
            _check(logits, need.size, seq_len, mask_id)
            p = subs_probs(logits, mask_id)
            if config.top_p < 1.0:
                p = _nucleus(p, config.top_p)
            if probs is None:
                probs = torch.zeros((batch, seq_len, p.shape[-1]), dtype=torch.float32, device=device)
            probs[torch.from_numpy(need).to(device)] = p
            cached[need] = a
            calls[a] += 1
            row_forwards[need, a] += 1
        for r in active.tolist():
            pos = torch.nonzero(masked[r]).squeeze(1)  # [m] masked positions of the row, increasing
            u = step_uniforms(int(keys[r]), i, pos.numel(), probs.shape[-1], device, gen)  # [m, V]
            new = race(probs[r, pos], t_all[i], s_all[i], u, mask_id)
            moved = new != mask_id
            if bool(moved.any()):
                x[r, pos[moved]] = new[moved]
                tau[r, pos[moved].cpu().numpy()] = i
                cached[r] = -1  # the row changed: its stored prediction is stale
    return row_forwards, calls, _final_pass(fns, step_alias, x, mask_id, config, row_forwards, calls)


def _final_pass(fns, step_alias, x, mask_id, config, row_forwards, calls) -> np.ndarray:
    batch = x.shape[0]
    final_pass = np.zeros(batch, dtype=bool)
    left = x == mask_id
    need = np.arange(batch) if config.predictor == "ddpm" else np.flatnonzero(left.any(dim=1).cpu().numpy())
    if not config.noise_removal or need.size == 0:
        return final_pass
    a = int(step_alias[-1])
    rows = torch.from_numpy(need).to(x.device)
    logits = fns[a](x[rows])
    _check(logits, need.size, x.shape[1], mask_id)
    calls[a] += 1
    row_forwards[need, a] += 1
    final_pass[need] = True
    z = logits.float().clone()
    z[..., mask_id] = float("-inf")
    best = z.argmax(dim=-1)  # [R, L]
    sub = x[rows]
    x[rows] = torch.where(sub == mask_id, best, sub)
    return final_pass


def _check(logits: torch.Tensor, rows: int, seq_len: int, mask_id: int) -> None:
    if logits.dim() != 3 or logits.shape[0] != rows or logits.shape[1] != seq_len or logits.shape[2] <= mask_id:
        raise ValueError(f"denoiser returned logits of shape {tuple(logits.shape)}, expected "
                         f"[{rows}, {seq_len}, V] with V > mask_id = {mask_id}")


def reference_chunks(run, fns: list, step_alias: np.ndarray, tau: np.ndarray, indices: np.ndarray,
                      seed: int, batch_size: int, progress: bool, name: str) -> list[float]:
    """precision float32-reference: the reference's fp32 race loop (mdlm.sampler_reference) on chunks of
    ``batch_size`` rows, which unmasks by the model and so cannot batch by precomputed events. It computes the
    head at every position of a row-forward; the tallies of ``run`` are filled as the event loop fills them."""
    n, seq_len = run.x.shape
    wall = []
    for lo in range(0, n, batch_size):
        start = time.perf_counter()
        chunk = np.arange(lo, min(n, lo + batch_size))
        x, t = run.x[torch.from_numpy(chunk)], tau[chunk]
        with tqdm(total=len(step_alias), desc=f"{name} {lo // batch_size + 1}/{-(-n // batch_size)}",
                  disable=not progress, leave=False, mininterval=1.0) as bar:
            rf, calls, final = sample_batch_reference(fns, step_alias, x, t, run.u_token[chunk], None, run.mask_id,
                                                      run.config, bar, sample_indices=indices[chunk], seed=seed)
        run.x[torch.from_numpy(chunk)] = x
        tau[chunk] = t
        run.row_forwards[chunk] += rf
        run.calls += calls
        run.head_positions += rf.sum(axis=0) * seq_len
        run.last_block_positions += rf.sum(axis=0) * seq_len  # the module's forward: every position
        run.conditioning_rows += rf.sum(axis=0) * np.array([conditions_per_row(fn) for fn in fns], dtype=np.int64)
        run.final_pass[chunk] = final
        wall.append(time.perf_counter() - start)
    return wall


def ddpm_chunks(run, tau: np.ndarray, batch_size: int, progress: bool, name: str, start: float
                 ) -> list[float]:
    """ddpm (the reference-cost mode): chunks of ``batch_size`` rows, each through every step; wall per chunk."""
    n, steps, wall = run.x.shape[0], len(run.model_of_step) - 1, []  # model_of_step: T steps + the final pass
    for lo in range(0, n, batch_size):
        with tqdm(total=steps + 1, desc=f"{name} {lo // batch_size + 1}/{-(-n // batch_size)}",
                  disable=not progress, leave=False, mininterval=1.0) as bar:
            _ddpm_loop(run, tau, np.arange(lo, min(n, lo + batch_size)), bar)
        wall.append(time.perf_counter() - start)
        start = time.perf_counter()
    return wall


def _ddpm_loop(run, tau: np.ndarray, chunk: np.ndarray, bar) -> None:
    """ddpm, the reference cost: every row of the chunk through the model at every step with full logits
    ([R, L, V]: the head at every position), and the final pass on every row."""
    steps, seq_len = run.steps, run.x.shape[1]
    local_all = np.repeat(np.arange(chunk.size), seq_len)
    pos_all = np.tile(np.arange(seq_len), chunk.size)
    for i in range(steps + 1):
        if i == steps and not run.config.noise_removal:
            break
        r, p = np.nonzero(tau[chunk] == i)
        logits = run.call(int(run.model_of_step[i]), chunk, local_all, pos_all)  # [R * L, V]
        if r.size:
            picked = logits[torch.from_numpy(r * seq_len + p).to(logits.device)]
            run.write(picked, chunk[r], p, np.full(r.size, i == steps))
        bar.update(1)
    if run.config.noise_removal:
        run.final_pass[chunk] = True
