"""Evaluation of a samples file: read it, score every sample with the judge, and summarise with intervals.

`read_samples` reads a sampler JSONL file (one sample per line, keyed by (seed, sample_index)); `score_file`
scores it with a `mdlm.judge.Judge`; `compute_metrics` gives the flat metrics record of `mdlm evaluate`:
corpus gen-PPL and mean unigram entropy with bootstrap intervals, and, against a baseline sampled with the
same seeds, paired intervals of Δ log gen-PPL and Δ entropy (`mdlm.stats`).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.errors import UserError
from mdlm.io import read_jsonl
from mdlm.judge import DEFAULT_EOS_TEXT, Judge, encode_texts, gen_ppl, score_encoded, unigram_entropy
from mdlm.stats import align_pairs, bootstrap_ci, paired_ci, pct_change

# ---- samples files --------------------------------------------------------------------------------------

@dataclass
class Samples:
    path: Path
    texts: list[str]
    token_ids: list[list[int]]
    keys: list[tuple]  # (seed, sample_index), unique
    schedule: str

    def labels(self) -> list[str]:
        return [f"{self.path}: sample_index {k[1]} (seed {k[0]})" for k in self.keys]


def read_samples(path: str | os.PathLike) -> Samples:
    """Read a sampler JSONL file; every non-blank line is one sample (unknown fields are ignored)."""
    path = Path(path)
    texts, token_ids, keys, schedules = [], [], [], set()
    for lineno, row in read_jsonl(path, "samples file"):
        where = f"{path}:{lineno}"
        missing = [f for f in ("text", "token_ids", "sample_index") if f not in row]
        if missing:
            raise UserError(f"{where}: lacks {', '.join(missing)}")
        if not isinstance(row["text"], str):
            raise UserError(f"{where}: 'text' must be a string")
        ids = row["token_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise UserError(f"{where}: 'token_ids' must be a non-empty list of integers")
        if not isinstance(row["sample_index"], int):
            raise UserError(f"{where}: 'sample_index' must be an integer")
        key = (row.get("seed"), row["sample_index"])
        texts.append(row["text"])
        token_ids.append(ids)
        keys.append(key)
        schedules.add(_schedule_name(row.get("schedule")))
    if not texts:
        raise UserError(f"{path}: no samples (empty file)")
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"{path}: duplicate sample (seed {dup[0]}, sample_index {dup[1]})")
    schedules.discard(None)
    if len(schedules) > 1:
        raise UserError(f"{path}: samples of several schedules ({', '.join(sorted(schedules))}); one per file")
    schedule = schedules.pop() if schedules else path.stem
    return Samples(path, texts, token_ids, keys, schedule)


def _schedule_name(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return json.dumps(value, sort_keys=True)


# ---- evaluation of a file -------------------------------------------------------------------------------

@dataclass
class FileScores:
    samples: Samples
    nll_sum: np.ndarray  # [N] float64
    n_tokens: np.ndarray  # [N] int64
    entropy: np.ndarray  # [N] float64, nats
    truncated: np.ndarray  # [N] bool


def score_file(
    judge: Judge, samples: Samples, batch_size: int, eos_text: str = DEFAULT_EOS_TEXT, bos_text: str | None = None
) -> FileScores:
    encoded = encode_texts(judge, samples.texts, eos_text, bos_text, samples.labels())
    scores = score_encoded(judge, encoded, batch_size)
    entropy = np.array([unigram_entropy(ids) for ids in samples.token_ids], dtype=np.float64)
    truncated = np.array([e.truncated for e in encoded], dtype=bool)
    return FileScores(samples, scores.nll_sum, scores.n_tokens, entropy, truncated)


def compute_metrics(
    judge: Judge, scores: FileScores, base: FileScores | None = None, B: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The flat metrics dict of `mdlm evaluate` (gen-PPL, entropy, their CIs, and deltas to a baseline)."""
    log_ppl = bootstrap_ci(scores.nll_sum, scores.n_tokens, B=B, seed=seed)
    ent = bootstrap_ci(scores.entropy, None, B=B, seed=seed)
    m: dict[str, Any] = {
        "schedule": scores.samples.schedule,
        "samples": str(scores.samples.path),
        "num_samples": len(scores.nll_sum),
        "num_tokens": int(scores.n_tokens.sum()),
        "num_truncated": int(scores.truncated.sum()),
        "judge": judge.name,
        "judge_sha256": judge.sha256,
        "judge_bos_id": judge.bos_id,
        "judge_max_length": judge.max_length,
        "gen_ppl": math.exp(log_ppl.point),
        "gen_ppl_ci_low": math.exp(log_ppl.low),
        "gen_ppl_ci_high": math.exp(log_ppl.high),
        "entropy": ent.point,
        "entropy_ci_low": ent.low,
        "entropy_ci_high": ent.high,
        "bootstrap": B,
        "bootstrap_seed": seed,
    }
    if base is not None:
        perm = align_pairs(scores.samples.keys, base.samples.keys, str(scores.samples.path), str(base.samples.path))
        d_log = paired_ci(scores.nll_sum, scores.n_tokens, base.nll_sum[perm], base.n_tokens[perm], B=B, seed=seed)
        d_ent = paired_ci(scores.entropy, None, base.entropy[perm], None, B=B, seed=seed)
        m.update({
            "baseline": str(base.samples.path),
            "baseline_schedule": base.samples.schedule,
            "baseline_gen_ppl": gen_ppl(base.nll_sum, base.n_tokens),
            "delta_log_ppl": d_log.point,
            "delta_log_ppl_ci_low": d_log.low,
            "delta_log_ppl_ci_high": d_log.high,
            "ppl_ratio_pct": pct_change(d_log.point),
            "ppl_ratio_pct_ci_low": pct_change(d_log.low),
            "ppl_ratio_pct_ci_high": pct_change(d_log.high),
            "delta_entropy": d_ent.point,
            "delta_entropy_ci_low": d_ent.low,
            "delta_entropy_ci_high": d_ent.high,
        })
    return m


def per_sample_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.per_sample.jsonl")


def per_sample_rows(scores: FileScores) -> list[dict[str, Any]]:
    return [
        {
            "seed": key[0],
            "sample_index": key[1],
            "nll_sum": float(scores.nll_sum[i]),
            "n_tokens": int(scores.n_tokens[i]),
            "entropy": float(scores.entropy[i]),
            "truncated": bool(scores.truncated[i]),
        }
        for i, key in enumerate(scores.samples.keys)
    ]
