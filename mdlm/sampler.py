"""Scheduled MDLM sampler (`ddpm` / `ddpm_cache`) and `mdlm sample`.

Semantics (mdlm-reference.md, section 8). Time grid ``linspace(1, t_min, T+1)`` (float64, t_min = 1e-5);
step i goes from t = grid[i] to s = grid[i+1] and runs the model ``schedule.model_at(i)``. A masked position
stays masked with probability s/t, otherwise it takes a token drawn from p_x0, the SUBS distribution (softmax
over the real tokens, mask column excluded); unmasked positions never change. This is the reference update:
ddpm weighs token v by p_x0(v)(move_t - move_s) and the mask by move_s, with move = (1 - eps)t, so

    P(stay masked) = (1-eps)s / ((1-eps)(t-s) sum_v p_x0(v) + (1-eps)s) = s/t     (sum_v p_x0(v) = 1)

i.e. the (1 - eps) factors cancel, and ddpm_cache (move = t directly) gives the same normalised posterior.

Exact and cheap implementation. Whether a position unmasks does not depend on the model, so the decisions
are drawn first. A position is still masked after step i with probability prod_{j<=i} grid[j+1]/grid[j]
= grid[i+1] (the product telescopes), so its whole unmasking history is one uniform v per position: it unmasks
at step tau = #{j in 1..T : grid[j] > v} (tau = T: never, left to the final noise-removal pass). This is the
same law as T independent per-step s/t coin flips, for one random number instead of T. The token of a
position is then drawn once, at step tau, by inverse CDF of p_x0 with a second uniform. Consequences:

* Only rows with a position unmasking at step i need the model at step i; the others keep their tokens
  whatever the model says. So `ddpm_cache` runs a row through step i's model only if it has an *event* at
  step i (positions unmasking there), and asks for logits only at those positions (the denoiser protocol
  `Denoiser`: a DiT computes its output head there only, about one position per row-forward at T = 1000,
  where a full head costs L). This is the reference's cache (a sequence whose tokens did not change reuses its
  prediction; invalidated on a model switch) taken per sequence, without stored predictions: a prediction is
  computed exactly when it is used, from the current tokens and the current step's model, so a model switch
  can never reuse a stale one. The samples have the reference's distribution; the row-forwards are at most
  the reference's (it never computes a prediction that no position uses). `ddpm` (the reference without
  caching) runs the model on every row at every step with full logits and gives the same samples for the same
  seed: the reference-cost mode, for timing comparisons.
* Event-driven batching (ddpm_cache). A time-agnostic model's prediction for a row depends on that row's
  tokens alone, and all randomness is fixed per (sample, position), so rows need not advance in lockstep:
  every sample of the run is in flight at once, each with its sorted list of events (step, positions; the
  final pass is an event at step T by the last step's model), and each call takes the model of the earliest
  pending event and up to ``batch_size`` rows whose next event uses that model, whatever its step (earliest
  next step first). Same samples and row-forwards as running step by step, far fewer and fuller calls
  (tiny, 32 samples, T = 1000, all-heavy: 125 calls instead of 981 for 3859 row-forwards). This rule kept
  calls fuller than taking the model with the most waiting rows (sandwich, 32 samples: 142 vs 250 calls).
* Random numbers are counter-based: uniform = hash(seed, stream, sample index, position[, vocab entry])
  (splitmix64), with no global RNG state. Samples do not depend on batch size, on how sample indices are split
  over batches or ranks (given a batch-invariant network), on the predictor, or on which rows share a call.
  The CPU DiT itself is not bitwise batch-invariant (GEMM blocking depends on the row count, a one-position
  head is a GEMV; logits move by ~1e-7), so with real models a token can, rarely, differ between batch sizes,
  predictors, or chained `sample_steps` and `sample` (none in the tests' smoke-size DiTs against a one-row
  step-by-step loop, ddpm, batch 3 vs 8, 1 vs 2 torchrun ranks); same settings -> same bytes.
* Common random numbers: schedules run with the same seed unmask the same positions at the same steps and
  use the same token uniforms; only the token identities differ, through the models' predictions.
* Per-step non-model work is slicing precomputed event lists plus softmax/inverse-CDF over the vocabulary at
  the unmasking positions only; the gather shapes are known on the host, so no per-step device syncs.

Precision: ``float64`` (default) computes p_x0 and its CDF in float64. ``float32-exact-unmask`` (old name
``float32``, still accepted) keeps the exact unmask decisions and draws the token with the reference's fp32
exponential race among the tokens only, argmax_v p(v) / (1e-10 - log(U_v + 1e-10)) with float32 uniforms U
(one per vocabulary entry): that is not the reference's sampling. ``float32-reference`` is: one fp32 race over
the tokens and the mask entry together, so the fp32 truncation distorts whether a position unmasks as well as
which token it takes (mdlm.sampler_reference, its own loop). Nucleus sampling (``top_p`` < 1) keeps the
smallest set of most likely tokens with mass >= top_p at each unmasking position.

Final noise removal (default on): positions still masked after the loop (v < t_min) get the argmax of one
more forward by the model of the last step, run on the rows that need it, head at those positions (ddpm: on
every row, full logits, as the reference). It counts as a row-forward of that model, and its calls (ddpm_cache
may batch it with other rows' events of the same model).

Prefix-conditional generation: prefix tokens fill positions [0, len) of the initial sequence and are never
masked, so never resampled (SUBS carry-over). `mdlm sample` puts BOS at position 0 of a text prefix
(``--prefix-bos``, default on) because data rows follow the reference layout [BOS] text [EOS]; unconditional
samples force nothing, as the reference.

NFE accounting, per model alias and per model name: ``calls`` = batched forward calls, ``row_forwards`` =
sequences pushed through the model (per sample and in total), ``head_positions`` = positions at which the
output head ran (ddpm_cache: one per unmasking event plus the final pass's; ddpm: L per row-forward). The
executed FLOPs are blocks and embeddings per row-forward plus the final layer per head position.
``batch_size`` is the most rows in one call; ddpm_cache keeps all samples of the run in flight (memory
O(N L), logits only at the requested positions), ddpm processes them in chunks of batch_size.

Outputs of `mdlm sample`: ``<out>.jsonl``, one line per sample in sample-index order (``sample_record``),
bit-identical for the same seed and settings on CPU; and ``<stem>.meta.json`` (``meta_path(out)``) with the
run-level record: settings, schedule, call, row-forward and head-position totals per model (``per_model``:
{name: {"calls", "row_forwards", "head_positions"}}), and wall times (per ddpm chunk, or the one ddpm_cache
run, and total; wall time is not written per sample). Under torchrun (WORLD_SIZE/RANK set) sample indices are
sharded round-robin over ranks (gloo), gathered, and rank 0 writes the same files as a single process.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mdlm.config import SampleSettings
from mdlm.errors import UserError
from mdlm.io import atomic_write_json, atomic_write_text
from mdlm.schedule import Schedule

PREDICTORS = ("ddpm_cache", "ddpm")
PRECISIONS = ("float64", "float32-exact-unmask", "float32-reference")
PRECISION_ALIASES = {"float32": "float32-exact-unmask"}  # the old name of the exact-decision fp32 mode
T_MIN = 1e-5  # last point of the time grid (reference)

# The denoiser protocol: fn(ids [R, L] long, rows [N] long, pos [N] long) -> raw logits [N, V], row k being the
# logits at position pos[k] of sequence ids[rows[k]]. The sampler asks only for the positions a call uses (the
# positions its rows unmask; the still-masked ones in the final pass), so a DiT runs its output head there only
# (`denoiser_from_model`). Time-agnostic: the prediction may depend on the ids alone.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    predictor: str = "ddpm_cache"
    precision: str = "float64"
    top_p: float = 1.0
    noise_removal: bool = True
    t_min: float = T_MIN

    def __post_init__(self) -> None:
        object.__setattr__(self, "precision", PRECISION_ALIASES.get(self.precision, self.precision))

    @classmethod
    def from_settings(cls, settings: SampleSettings) -> SamplerConfig:
        """The sampler part of a profile's `sample:` section, validated."""
        config = cls(predictor=settings.predictor, precision=settings.precision, top_p=settings.top_p,
                     noise_removal=settings.noise_removal)
        config.validate()
        return config

    def validate(self) -> None:
        if self.predictor not in PREDICTORS:
            raise UserError(f"sampler predictor {self.predictor!r}: expected one of {', '.join(PREDICTORS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"sampler precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"sampler top_p {self.top_p!r}: expected a number in (0, 1]")
        if not 0.0 < self.t_min < 1.0:
            raise UserError(f"sampler t_min {self.t_min!r}: expected a number in (0, 1)")


@dataclass
class SampleResult:
    """Samples and accounting, rows in increasing sample-index order."""

    sample_indices: np.ndarray   # [N] int64
    token_ids: np.ndarray        # [N, L] int64
    unmask_step: np.ndarray      # [N, L] int32: step that unmasked the position; -1 prefix; T final pass
    prefix_len: np.ndarray       # [N] int64
    final_pass: np.ndarray       # [N] bool: the row went through the noise-removal forward
    aliases: list[str]           # column order of row_forwards / calls
    models: dict[str, str]       # alias -> model name
    row_forwards: np.ndarray     # [N, A] int64, noise-removal pass included
    calls: np.ndarray            # [A] int64 batched forward calls (summed over batches and ranks)
    head_positions: np.ndarray   # [A] int64 positions at which the output head ran (summed like calls)
    wall_times: list[float] = field(default_factory=list)  # seconds per ddpm chunk; one entry for ddpm_cache

    def _by_model(self, per_alias: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for j, alias in enumerate(self.aliases):
            name = self.models[alias]
            out[name] = out.get(name, 0) + per_alias[..., j]
        return out

    def row_forwards_by_model(self) -> dict[str, np.ndarray]:
        """model name -> [N] row-forwards per sample."""
        return self._by_model(self.row_forwards)

    def calls_by_model(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._by_model(self.calls).items()}

    def calls_by_alias(self) -> dict[str, int]:
        return {a: int(c) for a, c in zip(self.aliases, self.calls, strict=True)}

    def row_forwards_by_alias(self) -> dict[str, int]:
        return {a: int(c) for a, c in zip(self.aliases, self.row_forwards.sum(0), strict=True)}

    def head_positions_by_model(self) -> dict[str, int]:
        """model name -> positions at which its output head ran (executed FLOPs = blocks and embeddings per
        row-forward + the final layer per head position)."""
        return {k: int(v) for k, v in self._by_model(self.head_positions).items()}

    def head_positions_by_alias(self) -> dict[str, int]:
        return {a: int(c) for a, c in zip(self.aliases, self.head_positions, strict=True)}

    def cost_by_model(self) -> dict[str, dict[str, int]]:
        """model name -> {"calls", "row_forwards", "head_positions"} totals (the run meta's `per_model`)."""
        calls, heads = self.calls_by_model(), self.head_positions_by_model()
        return {name: {"calls": calls[name], "row_forwards": int(rf.sum()), "head_positions": heads[name]}
                for name, rf in self.row_forwards_by_model().items()}


# ---- counter-based random numbers --------------------------------------------------------------------

_MASK64 = (1 << 64) - 1
STREAM_UNMASK, STREAM_TOKEN, STREAM_RACE = 1, 2, 3


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # splitmix64 finaliser; numpy uint64 arrays wrap modulo 2**64 (keep arrays >= 1-d: scalars warn)
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(seed: int, stream: int, sample_indices: np.ndarray) -> np.ndarray:
    """[B] uint64 keys of (seed, stream, sample index)."""
    base = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    base = _splitmix64(base ^ np.uint64(stream))
    return _splitmix64(base + np.asarray(sample_indices, dtype=np.int64).astype(np.uint64))


def _child_keys(keys: np.ndarray, count: int) -> np.ndarray:
    """keys [...] -> [..., count] keys of (key, 0..count-1)."""
    return _splitmix64(keys[..., None] + np.arange(count, dtype=np.uint64))


def _uniform53(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1), float64 resolution


def _uniform24(h: np.ndarray) -> np.ndarray:
    return (h >> np.uint64(40)).astype(np.float32) * np.float32(2.0**-24)  # [0, 1), like torch.rand fp32


def time_grid(steps: int, t_min: float = T_MIN) -> np.ndarray:
    """[T+1] float64, grid[i] = t of step i, grid[i+1] = its s."""
    return torch.linspace(1.0, t_min, steps + 1, dtype=torch.float64).numpy()


def unmask_steps(seed: int, sample_indices: np.ndarray, seq_len: int, steps: int,
                 t_min: float = T_MIN) -> np.ndarray:
    """[B, L] step at which each position unmasks (T = never), from one uniform v per position.

    P(masked after step i) = grid[i+1], so tau = #{j in 1..T : grid[j] > v}.
    """
    v = _uniform53(_child_keys(row_keys(seed, STREAM_UNMASK, sample_indices), seq_len))  # [B, L]
    ascending = time_grid(steps, t_min)[1:][::-1].copy()  # grid[T] ... grid[1]
    return (steps - np.searchsorted(ascending, v, side="right")).astype(np.int32)


def batch_noise(seed: int, sample_indices: np.ndarray, seq_len: int, steps: int,
                config: SamplerConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """All the randomness of a batch: (tau [B, L] unmask steps, u_token [B, L], race keys [B] or None).

    Depends only on (seed, sample index, position): the same for any batching, schedule or predictor.
    """
    idx = np.asarray(sample_indices, dtype=np.int64)
    tau = unmask_steps(seed, idx, seq_len, steps, config.t_min)
    u_token = _uniform53(_child_keys(row_keys(seed, STREAM_TOKEN, idx), seq_len))
    race_rows = row_keys(seed, STREAM_RACE, idx) if config.precision == "float32-exact-unmask" else None
    return tau, u_token, race_rows


# ---- token draws at unmasking positions ---------------------------------------------------------------


def real_token_probs(logits: torch.Tensor, mask_id: int, dtype: torch.dtype) -> torch.Tensor:
    """SUBS p_x0 at masked positions: softmax over the real tokens (mask column excluded). [n, V] -> [n, V].

    The carry-over half of SUBS (`diffusion.subs_log_probs`) only concerns unmasked positions, which the
    sampler never resamples, so this is all of SUBS that sampling needs.
    """
    z = logits.to(dtype)  # a copy whenever the dtype changes; clone otherwise before writing
    if z.data_ptr() == logits.data_ptr():
        z = z.clone()
    z[:, mask_id] = float("-inf")
    return torch.softmax(z, dim=-1)


def _nucleus_sorted(p: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities sorted descending with the tail beyond mass top_p zeroed, and the sort order."""
    sp, order = torch.sort(p, dim=-1, descending=True, stable=True)
    keep = (torch.cumsum(sp, dim=-1) - sp) < top_p  # always keeps the most likely token
    return sp * keep, order


def _inverse_cdf(w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from each row of nonnegative weights w [n, V] (unnormalised) with uniforms u [n]."""
    cdf = torch.cumsum(w, dim=-1)
    total = cdf[:, -1:]
    # u < 1, but u * total may round up to total; stay strictly below it so a zero-weight tail is never hit
    target = torch.minimum(u[:, None] * total, total * (1.0 - 2.0**-52))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def draw_tokens(logits: torch.Tensor, mask_id: int, u_token: np.ndarray, race_keys: np.ndarray | None,
                config: SamplerConfig) -> torch.Tensor:
    """Tokens [n] for n unmasking positions from their logits [n, V].

    float64: inverse CDF with u_token [n]. float32: the legacy exponential race with per-vocabulary
    float32 uniforms derived from race_keys [n].
    """
    if config.precision == "float64":
        u = torch.from_numpy(u_token).to(logits.device)
        if config.top_p < 1.0:
            sp, order = _nucleus_sorted(real_token_probs(logits, mask_id, torch.float64), config.top_p)
            return order.gather(-1, _inverse_cdf(sp, u)[:, None]).squeeze(1)
        # the inverse CDF needs no normalisation: unnormalised softmax weights, mask column 0
        z = logits.to(torch.float64)  # [n, V], a fresh copy (logits are fp32 or bf16)
        if z.data_ptr() == logits.data_ptr():
            z = z.clone()
        z[:, mask_id] = float("-inf")
        return _inverse_cdf(torch.exp(z - z.max(dim=-1, keepdim=True).values), u)

    q = real_token_probs(logits, mask_id, torch.float32)
    if config.top_p < 1.0:
        sp, order = _nucleus_sorted(q, config.top_p)
        q = torch.zeros_like(q).scatter_(-1, order, sp)
    vocab = q.shape[-1]
    chunk = max(1, (1 << 22) // vocab)  # bound the [n, V] uint64 temporaries
    out = []
    for lo in range(0, q.shape[0], chunk):
        u = torch.from_numpy(_uniform24(_child_keys(race_keys[lo:lo + chunk], vocab))).to(q.device)
        exp_noise = 1e-10 - (u + 1e-10).log()  # [n, V] float32, as the reference's fp32 sampler
        out.append((q[lo:lo + chunk] / exp_noise).argmax(dim=-1))
    return torch.cat(out)


# ---- the sampling loops --------------------------------------------------------------------------------


def denoiser_from_model(model: torch.nn.Module) -> Denoiser:
    """The one adapter from a time-agnostic DiT to the denoiser protocol: its head runs at the requested
    positions only. Called with ids alone it returns the full logits [B, L, V] (importance needs them)."""
    if getattr(getattr(model, "config", None), "time_conditioning", False):
        raise UserError("the sampler supports time-agnostic models only (config.time_conditioning is true)")
    return partial(_model_logits, model.eval())


def _model_logits(model: torch.nn.Module, ids: torch.Tensor, rows: torch.Tensor | None = None,
                  pos: torch.Tensor | None = None) -> torch.Tensor:
    return model(ids, None) if rows is None else model(ids, None, (rows, pos))  # no sigma: time-agnostic


def as_denoiser(fn: Denoiser | torch.nn.Module) -> Denoiser:
    """A model module is wrapped with `denoiser_from_model`; a function is taken to follow the protocol already."""
    return denoiser_from_model(fn) if isinstance(fn, torch.nn.Module) else fn


def _check_logits(logits: torch.Tensor, n: int, mask_id: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] <= mask_id:
        raise UserError(f"denoiser returned logits of shape {tuple(logits.shape)} for {n} requested positions, "
                        f"expected [{n}, V] with V > mask id {mask_id}")


@dataclass
class _Run:
    """What every call of one sampling run shares: models, randomness, settings, and the tallies it fills."""

    fns: list[Denoiser | None]
    model_of_step: np.ndarray  # [T + 1] alias index per step; entry T = the final pass (the last step's model)
    x: torch.Tensor            # [N, L] state, updated in place
    u_token: np.ndarray        # [N, L]
    race_rows: np.ndarray | None
    mask_id: int
    config: SamplerConfig
    row_forwards: np.ndarray   # [N, A]
    calls: np.ndarray          # [A]
    head_positions: np.ndarray  # [A]
    final_pass: np.ndarray     # [N] bool

    @property
    def steps(self) -> int:
        return len(self.model_of_step) - 1

    def call(self, a: int, rows: np.ndarray, local: np.ndarray, pos: np.ndarray) -> torch.Tensor:
        """Logits [n, V] of model a at positions (rows[local[k]], pos[k]) of the current state; tallied."""
        device = self.x.device
        ids = self.x if rows.size == self.x.shape[0] else self.x[torch.from_numpy(rows).to(device)]
        logits = self.fns[a](ids, torch.from_numpy(local).to(device), torch.from_numpy(pos).to(device))
        _check_logits(logits, pos.size, self.mask_id)
        self.calls[a] += 1
        self.row_forwards[rows, a] += 1
        self.head_positions[a] += pos.size
        return logits

    def write(self, logits: torch.Tensor, rows: np.ndarray, pos: np.ndarray, final: np.ndarray) -> None:
        """Tokens at positions (rows[k], pos[k]) from logits [n, V]: a draw, or the argmax where final[k]."""
        device = self.x.device
        tokens = torch.empty(pos.size, dtype=self.x.dtype, device=device)
        draw = ~final
        if draw.any():
            z = logits if draw.all() else logits[torch.from_numpy(draw).to(device)]
            r, p = rows[draw], pos[draw]
            race = None if self.race_rows is None else _splitmix64(self.race_rows[r] + p.astype(np.uint64))
            tokens[torch.from_numpy(draw).to(device)] = draw_tokens(z, self.mask_id, self.u_token[r, p], race,
                                                                    self.config).to(tokens.dtype)
        if final.any():  # noise removal: the most likely real token
            f = torch.from_numpy(final).to(device)
            z = logits[f].clone()
            z[:, self.mask_id] = float("-inf")
            tokens[f] = z.argmax(dim=-1).to(tokens.dtype)
        self.x[torch.from_numpy(rows).to(device), torch.from_numpy(pos).to(device)] = tokens


@dataclass
class _Events:
    """The unmasking events of N rows grouped per (row, step), groups sorted by (row, step).

    Group g holds the positions flat[start[g]:start[g+1]] (row * L + position, ascending) of row row[g] that
    unmask at step step[g]; step T is the final noise-removal pass (positions never unmasked by the loop).
    Row r's groups are first[r]:end[r].
    """

    flat: np.ndarray
    start: np.ndarray
    row: np.ndarray
    step: np.ndarray
    first: np.ndarray
    end: np.ndarray

    @classmethod
    def of(cls, tau: np.ndarray, steps: int, final_pass: bool) -> _Events:
        n, seq_len = tau.shape
        live = (tau >= 0) & ((tau < steps) | final_pass)  # tau == T only with the final pass
        rows, pos = np.nonzero(live)  # row-major, so positions ascend within a (row, step) after a stable sort
        key = rows.astype(np.int64) * (steps + 1) + tau[rows, pos]
        order = np.argsort(key, kind="stable")
        key, flat = key[order], (rows.astype(np.int64) * seq_len + pos)[order]
        heads = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, dtype=np.int64)
        row, step = key[heads] // (steps + 1), key[heads] % (steps + 1)
        r = np.arange(n)
        return cls(flat, np.r_[heads, key.size], row, step, np.searchsorted(row, r), np.searchsorted(row, r, "right"))

    def positions(self, groups: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(local call row [n], row [n], position [n]) of the positions of ``groups`` (call row k = groups[k])."""
        lens = self.start[groups + 1] - self.start[groups]
        offsets = np.cumsum(lens) - lens
        sel = np.repeat(self.start[groups] - offsets, lens) + np.arange(int(lens.sum()))
        flat = self.flat[sel]
        return np.repeat(np.arange(groups.size), lens), flat // seq_len, flat % seq_len


def _event_loop(run: _Run, events: _Events, batch_size: int, bar: Any) -> None:
    """ddpm_cache: run each row's events in order, batching rows whose next event uses the same model.

    Rows need not advance in lockstep: a time-agnostic model's prediction for a row depends only on that row's
    tokens, and every draw's randomness is fixed per (sample, position). So a call may gather rows at any step
    index whose next event uses the same model; the samples and row-forwards are those of the step-synchronous
    loop, in far fewer calls.
    """
    seq_len = run.x.shape[1]
    ptr = events.first.copy()  # next group of every row
    active = np.flatnonzero(ptr < events.end)
    while active.size:
        groups = ptr[active]
        model = run.model_of_step[events.step[groups]]
        # the model of the earliest pending event (ties: the first row), and up to batch_size of the rows
        # waiting on it, earliest next step first: measured on the shipped schedules, this keeps the calls
        # fuller than taking the model with the most waiting rows (which strands rows of a segment's tail)
        a = int(model[np.argmin(events.step[groups])])
        rows, groups = active[model == a], groups[model == a]
        if rows.size > batch_size:
            keep = np.sort(np.argsort(events.step[groups], kind="stable")[:batch_size])  # earliest steps
            rows, groups = rows[keep], groups[keep]
        local, grow, pos = events.positions(groups, seq_len)
        logits = run.call(a, rows, local, pos)
        final = events.step[groups] == run.steps
        run.write(logits, grow, pos, np.repeat(final, events.start[groups + 1] - events.start[groups]))
        run.final_pass[rows[final]] = True
        ptr[rows] += 1
        active = active[ptr[active] < events.end[active]]
        bar.update(rows.size)


def _ddpm_loop(run: _Run, tau: np.ndarray, chunk: np.ndarray, bar: Any) -> None:
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


def _reference_chunks(run: _Run, fns: list, step_alias: np.ndarray, tau: np.ndarray, indices: np.ndarray,
                      seed: int, batch_size: int, progress: bool, name: str) -> list[float]:
    """precision float32-reference: the reference's fp32 race loop (mdlm.sampler_reference) on chunks of
    ``batch_size`` rows, which unmasks by the model and so cannot batch by precomputed events. It computes the
    head at every position of a row-forward; the tallies of ``run`` are filled as the event loop fills them."""
    from mdlm.sampler_reference import sample_batch_reference

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
        run.final_pass[chunk] = final
        wall.append(time.perf_counter() - start)
    return wall


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def sample_steps(denoiser: Denoiser | torch.nn.Module, x: torch.Tensor,
                 noise: tuple[np.ndarray, np.ndarray, np.ndarray | None], *,
                 start: int, stop: int, steps: int, mask_id: int, config: SamplerConfig) -> torch.Tensor:
    """Run steps [start, stop) of a ``steps``-step (T) run on the rows of ``x`` with one model.

    ``x`` [B, L] is the state after ``start`` steps (all mask at 0); ``noise`` is `batch_noise` of the same
    (seed, sample indices, T). Returns the state after ``stop`` steps, with the final noise-removal pass iff
    stop == T and config.noise_removal. Chaining [0, k) and [k, T), with any model on each, gives the samples of
    `sample` with the schedule that uses those models on those steps: counter-based randomness makes every
    draw independent of what ran before (bit-identical given a batch-invariant model; see the module
    docstring). Only ddpm_cache can skip the steps outside [start, stop). All B rows may share a call.
    """
    tau, u_token, race_rows = noise
    if config.precision == "float32-reference":
        raise UserError("sample_steps: precision float32-reference unmasks by the model; run `sample` instead")
    if config.predictor != "ddpm_cache":
        raise UserError(f"sample_steps: needs the ddpm_cache predictor (got {config.predictor!r})")
    if not 0 <= start <= stop <= steps:
        raise UserError(f"sample_steps: need 0 <= start <= stop <= T, got start {start}, stop {stop}, T {steps}")
    # positions unmasked before `start` are hidden (as prefix tokens are), those unmasking at or after `stop`
    # deferred (never unmasked here, no final pass): the event loop then runs exactly steps [start, stop)
    final = stop == steps and config.noise_removal
    live = np.where((tau < start) | ((tau >= stop) & (stop < steps)), -1, tau)
    rows = x.shape[0]
    run = _Run([as_denoiser(denoiser)], np.zeros(steps + 1, dtype=np.int64), x.clone(), u_token, race_rows,
               mask_id, config, np.zeros((rows, 1), dtype=np.int64), np.zeros(1, dtype=np.int64),
               np.zeros(1, dtype=np.int64), np.zeros(rows, dtype=bool))
    with torch.inference_mode():
        _event_loop(run, _Events.of(live, steps, final), max(1, rows), _NoBar())
    return run.x


def _prefix_of(prefixes: Sequence[Sequence[int]] | None, index: int) -> Sequence[int]:
    if prefixes is None:
        return ()
    if index >= len(prefixes):
        raise UserError(f"prefixes: no prefix for sample {index} (got {len(prefixes)} prefixes)")
    return prefixes[index]


def _check_prefixes(prefixes: Sequence[Sequence[int]] | None, indices: np.ndarray, seq_len: int,
                    mask_id: int) -> np.ndarray:
    """[N] prefix lengths; a UserError for a missing, too long or masked prefix."""
    prefix_len = np.zeros(indices.size, dtype=np.int64)
    for k, index in enumerate(indices.tolist()):
        ids = list(_prefix_of(prefixes, index))
        if len(ids) > seq_len:
            raise UserError(f"prefix of sample {index}: {len(ids)} tokens, longer than the sequence "
                            f"length {seq_len}")
        if any(t < 0 or t == mask_id for t in ids):
            raise UserError(f"prefix of sample {index}: token ids must be nonnegative and not the mask id "
                            f"{mask_id}")
        prefix_len[k] = len(ids)
    return prefix_len


def sample(
    denoisers: Mapping[str, Denoiser | torch.nn.Module],
    schedule: Schedule,
    *,
    mask_id: int,
    seq_len: int,
    sample_indices: Sequence[int],
    seed: int,
    config: SamplerConfig = SamplerConfig(),  # noqa: B008 - frozen dataclass, safe default
    batch_size: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SampleResult:
    """Sample the sequences ``sample_indices`` (any order; returned sorted) with a model schedule.

    ``denoisers`` maps each model name of ``schedule.models`` to a `Denoiser` (or a DiT module, wrapped by
    `denoiser_from_model`). ``batch_size``: the most rows in one model call (default: all). ddpm_cache keeps every
    sample in flight and batches by event; ddpm runs the samples in chunks of ``batch_size`` rows, each chunk
    through every step. ``prefixes[k]`` (optional) are the token ids clamped at positions [0, len) of sample k.
    """
    config.validate()
    aliases = list(schedule.models)
    used = [a for a in aliases if schedule.counts[a] > 0]
    missing = sorted({schedule.models[a] for a in used} - set(denoisers))
    if missing:
        raise UserError(f"schedule {schedule.name!r}: no model {', '.join(map(repr, missing))} "
                        f"(have {', '.join(map(repr, denoisers))})")
    fns = [as_denoiser(denoisers[schedule.models[a]]) if schedule.models[a] in denoisers else None for a in aliases]
    model_of_step = np.array([aliases.index(a) for a in schedule.step_aliases()], dtype=np.int64)
    model_of_step = np.r_[model_of_step, model_of_step[-1]]  # the final pass: the last step's model
    indices = np.array(sorted(int(k) for k in sample_indices), dtype=np.int64)
    if len(set(indices.tolist())) != len(indices) or (indices.size and indices[0] < 0):
        raise UserError("sample indices must be distinct and nonnegative")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise UserError(f"batch size {batch_size}: expected a positive integer")
    batch_size = batch_size or max(1, indices.size)
    steps, n = schedule.steps, indices.size
    prefix_len = _check_prefixes(prefixes, indices, seq_len, mask_id)

    start = time.perf_counter()
    tau, u_token, race_rows = batch_noise(seed, indices, seq_len, steps, config)  # [N, L], [N, L], [N]
    x = torch.full((n, seq_len), mask_id, dtype=torch.long)
    for k, index in enumerate(indices.tolist()):
        if prefix_len[k]:
            x[k, :prefix_len[k]] = torch.tensor(list(_prefix_of(prefixes, index)), dtype=torch.long)
            tau[k, :prefix_len[k]] = -1
    A = len(aliases)
    run = _Run(fns, model_of_step, x.to(device), u_token, race_rows, mask_id, config,
               np.zeros((n, A), dtype=np.int64), np.zeros(A, dtype=np.int64), np.zeros(A, dtype=np.int64),
               np.zeros(n, dtype=bool))
    wall = []
    with torch.inference_mode():
        if config.precision == "float32-reference":
            wall = _reference_chunks(run, fns, model_of_step[:steps], tau, indices, seed, batch_size, progress,
                                     schedule.name)
        elif config.predictor == "ddpm":
            for lo in range(0, n, batch_size):
                with tqdm(total=steps + 1, desc=f"{schedule.name} {lo // batch_size + 1}/{-(-n // batch_size)}",
                          disable=not progress, leave=False, mininterval=1.0) as bar:
                    _ddpm_loop(run, tau, np.arange(lo, min(n, lo + batch_size)), bar)
                wall.append(time.perf_counter() - start)
                start = time.perf_counter()
        else:
            events = _Events.of(tau, steps, config.noise_removal)
            with tqdm(total=events.row.size, desc=f"{schedule.name} (row events)", disable=not progress,
                      leave=False, mininterval=1.0) as bar:
                _event_loop(run, events, batch_size, bar)
            wall.append(time.perf_counter() - start)

    return SampleResult(
        sample_indices=indices, token_ids=run.x.cpu().numpy().astype(np.int64), unmask_step=tau.astype(np.int32),
        prefix_len=prefix_len, final_pass=run.final_pass, aliases=aliases, models=dict(schedule.models),
        row_forwards=run.row_forwards, calls=run.calls, head_positions=run.head_positions, wall_times=wall,
    )


def merge_results(results: Sequence[SampleResult]) -> SampleResult:
    """One result from several (ranks or runs over disjoint sample indices), rows in sample-index order."""
    first = results[0]
    indices = np.concatenate([r.sample_indices for r in results])
    order = np.argsort(indices, kind="stable")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("merge_results: overlapping sample indices")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results])[order]

    return SampleResult(
        sample_indices=indices[order], token_ids=cat("token_ids"), unmask_step=cat("unmask_step"),
        prefix_len=cat("prefix_len"), final_pass=cat("final_pass"), aliases=list(first.aliases),
        models=dict(first.models), row_forwards=cat("row_forwards"),
        calls=np.sum([r.calls for r in results], axis=0),
        head_positions=np.sum([r.head_positions for r in results], axis=0),
        wall_times=[w for r in results for w in r.wall_times],
    )


# ---- torchrun sharding ---------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(world size, rank) from the torchrun environment; (1, 0) outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def sample_distributed(*, sample_indices: Sequence[int], **kwargs: Any) -> SampleResult | None:
    """`sample` with indices sharded round-robin over torchrun ranks; rank 0 gets the merged result.

    Identical to one process running all indices (random numbers are per sample index). Other ranks get
    None. Initialises (and then destroys) a gloo process group if none exists.
    """
    size, rank = world()
    if size == 1:
        return sample(sample_indices=sample_indices, **kwargs)
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="gloo")
    try:
        mine = sorted(sample_indices)[rank::size]
        result = sample(sample_indices=mine, **kwargs)
        gathered: list[SampleResult] | None = [None] * size if rank == 0 else None  # type: ignore[list-item]
        dist.gather_object(result, gathered, dst=0)
        return merge_results(gathered) if rank == 0 else None
    finally:
        if owned:
            dist.destroy_process_group()


# ---- output records ------------------------------------------------------------------------------------


def meta_path(out: str | os.PathLike) -> Path:
    """The run-level record next to the samples: runs/x/samples/sandwich.jsonl -> sandwich.meta.json."""
    return Path(out).with_suffix(".meta.json")


def sample_record(result: SampleResult, k: int, text: str, schedule: Schedule, seed: int,
                  config: SamplerConfig) -> dict[str, Any]:
    """The JSON line of row k of ``result``."""
    rf = result.row_forwards_by_model()
    return {
        "sample_index": int(result.sample_indices[k]),
        "seed": seed,
        "schedule": schedule.name,
        "schedule_sha256": schedule.source_sha256,
        "steps": schedule.steps,
        "predictor": config.predictor,
        "precision": config.precision,
        "top_p": config.top_p,
        "noise_removal": config.noise_removal,
        "prefix_len": int(result.prefix_len[k]),
        "row_forwards": {name: int(v[k]) for name, v in rf.items()},
        "final_pass": bool(result.final_pass[k]),
        "text": text,
        "token_ids": result.token_ids[k].tolist(),
    }


def run_meta(result: SampleResult, schedule: Schedule, seed: int, config: SamplerConfig,
             **extra: Any) -> dict[str, Any]:
    """Run-level record: settings, schedule, NFE totals per model and alias, wall times."""
    return {
        "schedule": {"name": schedule.name, "file": schedule.source, "sha256": schedule.source_sha256,
                     "steps": schedule.steps, "segments": schedule.notation, "models": schedule.models,
                     "nominal_steps": schedule.model_steps},
        "seed": seed,
        "num_samples": int(result.sample_indices.size),
        "predictor": config.predictor,
        "precision": config.precision,
        "top_p": config.top_p,
        "noise_removal": config.noise_removal,
        "noise_removal_model": schedule.model_name_at(schedule.steps - 1),
        "t_min": config.t_min,
        "calls": result.calls_by_model(),
        "row_forwards": {k: int(v.sum()) for k, v in result.row_forwards_by_model().items()},
        "calls_by_alias": result.calls_by_alias(),
        "row_forwards_by_alias": result.row_forwards_by_alias(),
        "head_positions_by_alias": result.head_positions_by_alias(),
        "per_model": result.cost_by_model(),
        "final_pass_rows": int(result.final_pass.sum()),
        "wall_time_s": float(sum(result.wall_times)),
        "batch_wall_time_s": [round(w, 6) for w in result.wall_times],
        **extra,
    }


def write_samples(out: str | os.PathLike, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``<out>`` (JSON lines) and its meta file atomically; the meta holds the samples' sha256.

    The meta file is written first, so an existing samples file always has a meta file beside it.
    """
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    meta = {**meta, "samples_file": Path(out).name,
            "samples_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic_write_json(meta_path(out), meta)
    atomic_write_text(out, text)
