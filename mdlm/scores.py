"""Per-sample judge scores of several schedules, paired by (seed, sample_index), and contrasts between them.

Shared by the search, the optimizer, the claims and the report: one in-memory form (`PatternScores`), one
reader of `mdlm evaluate` per-sample files, and one contrast (`contrast_ci`: any weighted sum of log gen-PPLs
or mean entropies, resampling sample rows jointly — see `mdlm.stats.contrast_ci`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mdlm import stats
from mdlm.errors import UserError
from mdlm.io import read_jsonl

METRICS = ("log_ppl", "entropy")


@dataclass
class PatternScores:
    """Per-sample judge scores of one schedule; row i of every schedule compared is the same (seed, index)."""

    nll_sum: np.ndarray  # [N] float64
    n_tokens: np.ndarray  # [N] int64
    entropy: np.ndarray  # [N] float64, unigram entropy of the MDLM token ids (nats)

    def take(self, rows: np.ndarray) -> PatternScores:
        return PatternScores(self.nll_sum[rows], self.n_tokens[rows], self.entropy[rows])


def log_ppl(s: PatternScores) -> float:
    return float(stats.ratio_of_sums(s.nll_sum[None], s.n_tokens[None].astype(np.float64))[0])


def _term(s: PatternScores, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    if metric == "log_ppl":
        return s.nll_sum, s.n_tokens.astype(np.float64)
    if metric == "entropy":
        return s.entropy, None
    raise ValueError(f"contrast_ci: unknown metric {metric!r}")


def contrast_ci(scores: Mapping[str, PatternScores], weights: Mapping[str, float], B: int = 2000, seed: int = 0,
                level: float = 0.95, metric: str = "log_ppl") -> tuple[float, float, float]:
    """Paired bootstrap interval of Σ_p w_p · metric(p), resampling sample rows jointly for every schedule.

    metric "log_ppl": log gen-PPL (Σ nll / Σ tokens); "entropy": mean unigram entropy. With weights
    {p: 1, baseline: -1} this is `stats.paired_ci`; with averages over groups it contrasts groups.
    """
    terms = [(w, *_term(scores[p], metric)) for p, w in weights.items() if w != 0]
    return tuple(stats.contrast_ci(terms, B=B, seed=seed, level=level))


def contrast_replicates(scores: Mapping[str, PatternScores], weights: Mapping[str, float], B: int = 2000,
                        seed: int = 0, metric: str = "log_ppl"):
    """(point, [B] bootstrap replicates) of the contrast of `contrast_ci`."""
    terms = [(w, *_term(scores[p], metric)) for p, w in weights.items() if w != 0]
    return stats.contrast_replicates(terms, B=B, seed=seed)


def interval_dict(point: float, low: float, high: float) -> dict[str, float]:
    return {"point": point, "ci_low": low, "ci_high": high}


def load_per_sample(path: str | Path) -> tuple[list[tuple], PatternScores]:
    """An `mdlm evaluate` per-sample file: keys (seed, sample_index) and the scores, in file order."""
    path = Path(path)
    keys, nll, tok, ent = [], [], [], []
    for n, r in read_jsonl(path, "per-sample file (run `mdlm evaluate`)"):
        try:
            keys.append((r["seed"], r["sample_index"]))
            nll.append(float(r["nll_sum"]))
            tok.append(int(r["n_tokens"]))
            ent.append(float(r["entropy"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}:{n}: malformed per-sample row ({exc})") from None
    if not keys:
        raise UserError(f"{path}: no samples")
    return keys, PatternScores(np.array(nll), np.array(tok, dtype=np.int64), np.array(ent))


def aligned_scores(files: Mapping[str, Path], reference: str) -> dict[str, PatternScores]:
    """Per-sample scores of several schedules, rows reordered to pair with ``reference``'s (seed, index).

    Files whose (seed, sample_index) sets differ from the reference's: a one-line error naming both files.
    """
    loaded = {k: load_per_sample(p) for k, p in files.items()}
    ref_keys = loaded[reference][0]
    out = {}
    for k, (keys, s) in loaded.items():
        perm = stats.align_pairs(ref_keys, keys, str(files[reference]), str(files[k]))
        out[k] = s.take(perm)
    return out
