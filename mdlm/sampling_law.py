"""The law of the sampler: its settings, the time grid, counter-based randomness and the token draws.

Every random number is a hash of (seed, stream, sample index, position[, vocabulary entry]) (splitmix64), so
samples depend on nothing else: not on batching, on rank, on the predictor or on which rows share a call, and
schedules run with the same seed share their unmasking times and token uniforms (common random numbers). A
position's whole unmasking history is one uniform (`unmask_steps`), and the sampler runs a row's unmasking
steps in order (`UnmaskEvents`); its token is drawn once, at that step (`draw_tokens`: float64 inverse CDF,
or the fp32 exponential race). docs/sampler.md derives the law.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mdlm.config import SampleSettings
from mdlm.errors import UserError

PREDICTORS = ("ddpm_cache", "ddpm")
PRECISIONS = ("float64", "float32-exact-unmask", "float32-reference")
PRECISION_ALIASES = {"float32": "float32-exact-unmask"}  # the old name of the exact-decision fp32 mode
T_MIN = 1e-5  # last point of the time grid (reference)



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


@dataclass
class UnmaskEvents:
    """The unmasking events of N rows (`unmask_steps`) grouped per (row, step), groups sorted by (row, step):
    the order in which the sampler runs them.

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
    def of(cls, tau: np.ndarray, steps: int, final_pass: bool) -> UnmaskEvents:
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


# ---- token draws at unmasking positions ---------------------------------------------------------------


def model_of_event_step(step_aliases: list[str], aliases: list[str]) -> np.ndarray:
    """The model (index into ``aliases``) of each event step 0..T of a schedule whose step t runs
    ``step_aliases[t]``: step T, the final noise-removal pass, runs the last step's model."""
    per_step = np.array([aliases.index(a) for a in step_aliases], dtype=np.int64)
    return np.r_[per_step, per_step[-1:]]


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
        # in place, and amax (no indices): the same numbers, about a sixth less time per call
        return _inverse_cdf(z.sub_(z.amax(dim=-1, keepdim=True)).exp_(), u)

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


# ---- the record of a run's protocol --------------------------------------------------------------------


def sampling_protocol(config: SamplerConfig) -> dict[str, Any]:
    """How samples were drawn, for the sampler's meta record and the report (docs/evaluation.md)."""
    reference = config.precision == "float32-reference"
    return {
        "precision": config.precision,
        "unmask_rule": "joint fp32 race with the mask entry (reference)" if reference
        else "exact: stay masked with probability s/t",
        "token_draw": {"float64": "inverse CDF of p_x0, float64",
                       "float32-exact-unmask": "fp32 exponential race among the tokens",
                       "float32-reference": "fp32 exponential race, tokens and mask entry together"}[config.precision],
        "time_grid": f"linspace(1, {config.t_min}, T+1), {'float32' if reference else 'float64'}",
        "nucleus_top_p": config.top_p,
        "predictor": config.predictor,
        "final_step_rule": "argmax of the last step's model at still-masked positions" if config.noise_removal
        else "none (positions still masked stay masked)",
    }
