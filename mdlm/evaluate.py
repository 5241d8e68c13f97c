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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.errors import UserError
from mdlm.io import read_jsonl
from mdlm.judge import DEFAULT_EOS_TEXT, Judge, encode_texts, gen_ppl, score_encoded, unigram_entropy
from mdlm.judge_reference import check_protocol, score_texts_reference
from mdlm.scores import PatternScores, paired_deltas
from mdlm.stats import align_pairs, bootstrap_ci

# sampler settings that every row of a samples file carries, recorded with the metrics as sampling_<field>
SAMPLING_FIELDS = ("steps", "predictor", "precision", "top_p", "noise_removal", "final_step_rule")

# ---- samples files --------------------------------------------------------------------------------------

@dataclass
class Samples:
    path: Path
    texts: list[str]
    token_ids: list[list[int]]
    keys: list[tuple]  # (seed, sample_index), unique
    schedule: str
    sampling: dict[str, Any] = field(default_factory=dict)  # the sampler's protocol fields of the rows


    def labels(self) -> list[str]:
        return [f"{self.path}: sample_index {k[1]} (seed {k[0]})" for k in self.keys]


def read_samples(path: str | os.PathLike) -> Samples:
    """Read a sampler JSONL file; every non-blank line is one sample (unknown fields are ignored)."""
    path = Path(path)
    texts, token_ids, keys, schedules, protocols = [], [], [], set(), set()
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
        protocols.add(json.dumps({k: row[k] for k in SAMPLING_FIELDS if k in row}, sort_keys=True))
    if not texts:
        raise UserError(f"{path}: no samples (empty file)")
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"{path}: duplicate sample (seed {dup[0]}, sample_index {dup[1]})")
    schedules.discard(None)
    if len(schedules) > 1:
        raise UserError(f"{path}: samples of several schedules ({', '.join(sorted(schedules))}); one per file")
    schedule = schedules.pop() if schedules else path.stem
    if len(protocols) > 1:
        raise UserError(f"{path}: samples drawn with several sampler settings ({' vs '.join(sorted(protocols))})")
    return Samples(path, texts, token_ids, keys, schedule, json.loads(protocols.pop()))


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
    protocol: dict[str, Any] = field(default_factory=dict)  # the gen-PPL rule (`genppl_protocol_record`)
    dropped: np.ndarray | None = None  # [N] bool, rows the reference's remainder drop left unscored


def genppl_protocol_record(protocol: str, judge: Judge, *, max_length: int | None = None,
                           drop_remainder: bool = False, batch_size: int | None = None) -> dict[str, Any]:
    """How gen-PPL was computed, recorded in every metrics file (docs/evaluation.md)."""
    if protocol == "suite":
        return {"genppl_protocol": "suite", "retokenize_length": judge.max_length, "judge_context": judge.max_length,
                "judge_bos_id": judge.bos_id, "drop_remainder": False}
    tok = judge.tokenizer
    return {"genppl_protocol": "mdlm", "retokenize_length": max_length, "judge_context": judge.max_length,
            "judge_eos_id": tok.eos_token_id, "judge_pad_id": tok.pad_token_id if tok.pad_token_id is not None
            else tok.eos_token_id, "drop_remainder": drop_remainder, "remainder_batch_size": batch_size}


def score_file(
    judge: Judge, samples: Samples, batch_size: int, eos_text: str = DEFAULT_EOS_TEXT, bos_text: str | None = None,
    *, protocol: str = "suite", max_length: int | None = None, drop_remainder: bool = False,
) -> FileScores:
    """Score every sample of a file under the gen-PPL rule ``protocol`` (`suite` or the reference's `mdlm`).

    ``max_length`` (mdlm only): the retokenization length, the MDLM's sequence length in the reference.
    ``drop_remainder`` (mdlm only): leave the last ``N % batch_size`` samples unscored, as the reference does.
    """
    check_protocol(protocol)
    entropy = np.array([unigram_entropy(ids) for ids in samples.token_ids], dtype=np.float64)
    if protocol == "suite":
        if drop_remainder:
            raise UserError("evaluate.drop_remainder: only for genppl_protocol 'mdlm'")
        encoded = encode_texts(judge, samples.texts, eos_text, bos_text, samples.labels())
        scores = score_encoded(judge, encoded, batch_size)
        truncated = np.array([e.truncated for e in encoded], dtype=bool)
        record = genppl_protocol_record(protocol, judge)
        return FileScores(samples, scores.nll_sum, scores.n_tokens, entropy, truncated, record)
    if max_length is None:
        raise UserError("genppl_protocol 'mdlm': needs the retokenization length (the MDLM's sequence length)")
    ref = score_texts_reference(judge, samples.texts, max_length, batch_size, drop_remainder)
    if ref.n_tokens.sum() == 0:
        raise UserError(f"{samples.path}: no token for the judge to score under genppl_protocol 'mdlm'")
    record = genppl_protocol_record(protocol, judge, max_length=max_length, drop_remainder=drop_remainder,
                                    batch_size=batch_size)
    keep = ~ref.dropped
    if not keep.all():  # dropped rows leave every statistic, as in the reference
        samples = Samples(samples.path, [t for t, k in zip(samples.texts, keep, strict=True) if k],
                          [t for t, k in zip(samples.token_ids, keep, strict=True) if k],
                          [t for t, k in zip(samples.keys, keep, strict=True) if k], samples.schedule,
                          samples.sampling)
    return FileScores(samples, ref.nll_sum[keep], ref.n_tokens[keep], entropy[keep], ref.truncated[keep], record,
                      ref.dropped)


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
        **scores.protocol,
        **{f"sampling_{k}": v for k, v in scores.samples.sampling.items()},
        "num_dropped": int(scores.dropped.sum()) if scores.dropped is not None else 0,
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
        if base.protocol.get("genppl_protocol") != scores.protocol.get("genppl_protocol"):
            raise UserError(f"{base.samples.path}: scored under another gen-PPL protocol than {scores.samples.path}")
        perm = align_pairs(scores.samples.keys, base.samples.keys, str(scores.samples.path), str(base.samples.path))
        base_scores = PatternScores(base.nll_sum[perm], base.n_tokens[perm], base.entropy[perm])
        m.update({
            "baseline": str(base.samples.path),
            "baseline_schedule": base.samples.schedule,
            "baseline_gen_ppl": gen_ppl(base.nll_sum, base.n_tokens),
            **paired_deltas(PatternScores(scores.nll_sum, scores.n_tokens, scores.entropy), base_scores, B, seed),
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
