"""Which denoising steps matter: per-timestep loss and KL of heavy vs light (library of `mdlm importance`).

1. Per-timestep profile. For t at the centres of ``bins`` equal bins of (0, 1], validation sequences x0 are
   masked once (x_t, each token masked with probability (1 - eps) t, `diffusion.forward_mask`) and BOTH models
   score the same x_t. Per bin, aggregated over all masked positions of all sequences:
     - ce_heavy, ce_light: masked-token cross-entropy per masked token (nats), SUBS (mask column excluded);
     - nelbo_heavy, nelbo_light: the NELBO integrand at t, Σ nll / (N·L) · w(t), w = 1/t (log-linear);
       the mean over bins is a midpoint-rule NELBO estimate per token;
     - kl: KL(p_heavy ‖ p_light) of the two SUBS distributions over real tokens, per masked position;
     - ce_gap = ce_light − ce_heavy, with a paired bootstrap interval over sequences; kl with a bootstrap one.
   The masking uniforms of a batch are the same in every bin (the generator is reseeded per batch), so the
   masks are nested in t: common random numbers across bins, smooth curves.
   Step mapping: sampling step i runs at t ≈ (grid[i] + grid[i+1]) / 2 of the sampler's time grid
   (step 0 at t = 1); `step_signals` interpolates a bin curve to steps.

2. Swap-sensitivity profile: K = ``swap_segments`` equal segments; each one alone is swapped to the light
   model and compared with all-heavy (same seeds, paired Δ judge log gen-PPL): `search.run_placements` with
   one light segment, run by the command.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from mdlm.diffusion import LogLinearNoise, forward_mask
from mdlm.errors import UserError
from mdlm.stats import bootstrap_ci, paired_ci

NOISE = LogLinearNoise()  # the models' training noise (eps = 1e-3)
SIGNALS = ("kl", "ce_gap", "swap")  # per-step sensitivity signals that `step_signals` maps to steps
CSV_FIELDS = ("bin", "t", "mask_prob", "masked_tokens", "ce_heavy", "ce_light", "ce_gap", "ce_gap_ci_low",
              "ce_gap_ci_high", "nelbo_heavy", "nelbo_light", "kl", "kl_ci_low", "kl_ci_high")


# ------------------------------------------------------------------------------------------------------------
# per-timestep loss and KL


def bin_centres(bins: int) -> np.ndarray:
    """[bins] centres of equal bins of (0, 1]: (k + 1/2) / bins."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise UserError(f"importance bins {bins!r}: expected a positive integer")
    return (np.arange(bins) + 0.5) / bins


def _real_log_probs(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS log p_x0 at masked positions: log-softmax over the real tokens (mask column removed). [n, V-1]."""
    keep = torch.ones(logits.shape[-1], dtype=torch.bool, device=logits.device)
    keep[mask_id] = False
    return F.log_softmax(logits[:, keep].float(), dim=-1)


def masked_positions(x_t: torch.Tensor, mask_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [n], pos [n]) of the masked entries of x_t [B, L], row-major: where importance needs logits."""
    return (x_t == mask_id).nonzero(as_tuple=True)


def masked_stats(logits_heavy: torch.Tensor, logits_light: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor,
                 mask_id: int, chunk: int = 4096) -> dict[str, torch.Tensor]:
    """Per-sequence sums over the masked positions of x_t [B, L]: nll of x0 under each model, KL(heavy ‖ light)
    between their SUBS distributions, and the masked count. Logits [n, V] at the `masked_positions` of x_t, in
    that order; all outputs [B] float64.

    Identical logits give a KL of exactly 0 (the two log-prob tensors are equal, so every term is 0).
    """
    B = x0.shape[0]
    rows, pos = masked_positions(x_t, mask_id)
    if logits_heavy.shape[0] != rows.numel() or logits_light.shape[0] != rows.numel():
        raise UserError(f"importance: logits for {logits_heavy.shape[0]} and {logits_light.shape[0]} positions, "
                        f"expected one row per masked position ({rows.numel()})")
    target = x0[rows, pos]
    if (target == mask_id).any():
        raise UserError(f"importance: clean sequences contain the mask id {mask_id}")
    target = target - (target > mask_id).long()  # index into the V-1 real columns
    out = {k: torch.zeros(B, dtype=torch.float64) for k in ("nll_heavy", "nll_light", "kl")}
    for lo in range(0, rows.numel(), chunk):  # bound the [n, V] temporaries
        r, y = rows[lo:lo + chunk], target[lo:lo + chunk]
        lp_h = _real_log_probs(logits_heavy[lo:lo + chunk], mask_id)  # [n, V-1]
        lp_l = _real_log_probs(logits_light[lo:lo + chunk], mask_id)
        kl = (lp_h.exp() * (lp_h - lp_l)).sum(-1)  # [n]
        out["nll_heavy"].index_add_(0, r, -lp_h.gather(-1, y[:, None]).squeeze(1).double())
        out["nll_light"].index_add_(0, r, -lp_l.gather(-1, y[:, None]).squeeze(1).double())
        out["kl"].index_add_(0, r, kl.double())
    out["masked"] = (x_t == mask_id).sum(-1).double()
    return out


@torch.inference_mode()
def timestep_profile(heavy, light, sequences: np.ndarray, *, bins: int, mask_id: int, batch_size: int, seed: int,
                     noise: LogLinearNoise = NOISE) -> dict[str, np.ndarray]:
    """Per-sequence, per-bin sums on the same masked inputs for both models.

    ``heavy``/``light``: denoisers (the sampler's protocol, fn(ids [B, L], rows [n], pos [n]) -> logits [n, V]),
    asked for the masked positions only, so the output head runs nowhere else. ``sequences`` [N, L] clean ids.
    Returns t [bins] and nll_heavy, nll_light, kl, masked: [N, bins] float64.
    """
    t_grid = bin_centres(bins)
    x_all = torch.from_numpy(np.asarray(sequences, dtype=np.int64))
    N = x_all.shape[0]
    if N == 0:
        raise UserError("importance: no sequences to score")
    if batch_size < 1:
        raise UserError(f"importance batch_size {batch_size}: expected a positive integer")
    out = {k: np.zeros((N, bins)) for k in ("nll_heavy", "nll_light", "kl", "masked")}
    gen = torch.Generator()
    for b, lo in enumerate(range(0, N, batch_size)):
        x0 = x_all[lo:lo + batch_size]
        for k, t in enumerate(t_grid):
            gen.manual_seed(seed * 1_000_003 + b)  # same uniforms in every bin: nested masks
            x_t = forward_mask(x0, torch.full((x0.shape[0],), float(t)), mask_id, noise, gen)
            rows, pos = masked_positions(x_t, mask_id)
            stats = masked_stats(heavy(x_t, rows, pos), light(x_t, rows, pos), x0, x_t, mask_id)
            for key in out:
                out[key][lo:lo + x0.shape[0], k] = stats[key].numpy()
    return {"t": t_grid, **out}


def summarize_profile(raw: Mapping[str, np.ndarray], seq_len: int, B: int = 2000, seed: int = 0,
                      noise: LogLinearNoise = NOISE) -> list[dict[str, Any]]:
    """One row per bin: the aggregates of the module docstring, with bootstrap intervals over sequences."""
    rows = []
    n_seq = raw["masked"].shape[0]
    for k, t in enumerate(raw["t"]):
        masked = raw["masked"][:, k]
        total = masked.sum()
        if total == 0:
            raise UserError(f"importance: no masked token at t = {t:.4f}; use more sequences or fewer bins")
        nh, nl, kl = raw["nll_heavy"][:, k], raw["nll_light"][:, k], raw["kl"][:, k]
        weight = float(noise.loss_weight(torch.tensor(float(t), dtype=torch.float64)))
        gap = paired_ci(nl, masked, nh, masked, B=B, seed=seed)
        kl_ci = bootstrap_ci(kl, masked, B=B, seed=seed)
        rows.append({
            "bin": k, "t": float(t), "mask_prob": float(noise.mask_prob(torch.tensor(float(t), dtype=torch.float64))),
            "masked_tokens": int(total),
            "ce_heavy": float(nh.sum() / total), "ce_light": float(nl.sum() / total),
            "ce_gap": gap.point, "ce_gap_ci_low": gap.low, "ce_gap_ci_high": gap.high,
            "nelbo_heavy": float(nh.sum() / (n_seq * seq_len) * weight),
            "nelbo_light": float(nl.sum() / (n_seq * seq_len) * weight),
            "kl": kl_ci.point, "kl_ci_low": kl_ci.low, "kl_ci_high": kl_ci.high,
        })
    return rows


def select_sequences(valid: np.ndarray, num_sequences: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random subset of the validation rows (in row order) and the row numbers; never more than exist."""
    if isinstance(num_sequences, bool) or not isinstance(num_sequences, int) or num_sequences < 1:
        raise UserError(f"importance num_sequences {num_sequences!r}: expected a positive integer")
    if num_sequences > len(valid):
        raise UserError(f"importance num_sequences {num_sequences}: the validation split has only {len(valid)} rows")
    rows = np.sort(np.random.default_rng(seed).choice(len(valid), size=num_sequences, replace=False))
    return np.asarray(valid[rows], dtype=np.int64), rows


# ------------------------------------------------------------------------------------------------------------
# mapping signals to sampling steps


def step_times(steps: int) -> np.ndarray:
    """[T] t at the middle of each sampling step (step 0 near t = 1), on the sampler's time grid."""
    from mdlm.sampling_law import time_grid

    grid = time_grid(steps)
    return (grid[:-1] + grid[1:]) / 2


def step_signals(steps: int, importance: Mapping[str, Any] | None = None,
                 swap: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Per-step predicted sensitivity [T] of each available signal (higher = worse to make light):

    - kl, ce_gap: the per-masked-token bin curve (importance.json) linearly interpolated at each step's t
      (flat beyond the outer bin centres). The tokens decided per step are uniform in t, so per-token
      values are per-step values up to a constant.
    - swap: the swap-sensitivity Δ_k of segment k (swap_sensitivity.json) spread over its steps as a density
      Δ_k·K/T, linearly interpolated between segment centres (so a segment's steps sum to ≈ Δ_k).
    """
    out: dict[str, np.ndarray] = {}
    if importance is not None:
        rows = sorted(importance["bins"], key=lambda r: r["t"])
        t = np.array([r["t"] for r in rows])
        st = step_times(steps)
        for key in ("kl", "ce_gap"):
            out[key] = np.interp(st, t, np.array([r[key] for r in rows], dtype=np.float64))
    if swap is not None:
        K = int(swap["segments"])
        delta = np.zeros(K)
        for r in swap["ranking"]:
            if len(r["light_segments"]) != 1:
                raise UserError("swap sensitivity: expected one light segment per placement")
            delta[r["light_segments"][0]] = r["delta_log_ppl"]
        centres = (np.arange(K) + 0.5) / K
        frac = (np.arange(steps) + 0.5) / steps
        out["swap"] = np.interp(frac, centres, delta * K / steps)
    return out


# ------------------------------------------------------------------------------------------------------------
# outputs


def profile_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in CSV_FIELDS})
    return buf.getvalue()


def importance_json(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> dict[str, Any]:
    return {
        **settings,
        "nelbo_estimate": {"heavy": float(np.mean([r["nelbo_heavy"] for r in rows])),
                           "light": float(np.mean([r["nelbo_light"] for r in rows]))},
        "bins": list(rows),
        "definitions": {
            "t": "bin centre; x_t masks each token with probability (1 - eps) t; step 0 of sampling is t = 1",
            "ce_*": "masked-token cross-entropy per masked token (nats), both models on the same x_t",
            "nelbo_*": "NELBO integrand at t: sum of masked nll / (sequences x seq_len) x 1/t; the bin mean "
                       "estimates the NELBO per token",
            "kl": "KL(p_heavy || p_light) of the SUBS distributions (mask column excluded), per masked position",
            "ce_gap": "ce_light - ce_heavy; paired bootstrap over sequences (95%)",
        },
    }


def split_bins(bins: Sequence[Mapping[str, Any]]) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """(outer, middle) bins: the first and last quarter of the sampling trajectory (t > 0.75 or t <= 0.25)
    versus the middle half. The one definition used by the claims and the report."""
    outer = [r for r in bins if r["t"] > 0.75 or r["t"] <= 0.25]
    middle = [r for r in bins if not (r["t"] > 0.75 or r["t"] <= 0.25)]
    return outer, middle


def rows_digest(rows: np.ndarray) -> str:
    """sha256 of the validation row numbers used (records which sequences were scored)."""
    import hashlib

    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()
