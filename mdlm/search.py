"""Exhaustive search over coarse light/heavy segment placements (library of `mdlm search`).

Every one of the C(K, N) placements (`mdlm.patterns`) is sampled with the same seed and sample indices as the
all-heavy baseline (``H`` * K); the sampler's counter-based random numbers make these common random numbers,
so each placement is compared with the baseline *paired*, sample by sample: Δ log gen-PPL (judge) and
Δ unigram entropy with paired bootstrap intervals (`mdlm.stats`). Patterns sharing a prefix share its
sampling (the prefix trie of `mdlm.patterns.sample_patterns`).

The swap-sensitivity profile of `mdlm importance` is this search with N = 1 (`run_placements`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mdlm import sampler as sampler_mod
from mdlm.errors import UserError
from mdlm.io import atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, read_jsonl
from mdlm.judge import unigram_entropy
from mdlm.patterns import (
    HEAVY,
    LIGHT,
    Traversal,
    check_steps,
    light_segments_of,
    pattern_of,
    pattern_schedule,
    placements,
    sample_patterns,
)
from mdlm.plots import plot_placements
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import Schedule
from mdlm.scores import PatternScores, contrast_ci, log_ppl
from mdlm.stats import paired_ci

ScoreFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # texts -> (nll_sum [N], n_tokens [N])
DecodeFn = Callable[[Sequence[Sequence[int]]], list[str]]  # token id rows -> texts


# ------------------------------------------------------------------------------------------------------------
# scoring and paired comparison

def score_patterns(tokens: Mapping[str, np.ndarray], decode: DecodeFn, score_fn: ScoreFn,
                   ) -> tuple[dict[str, PatternScores], dict[str, list[str]]]:
    """Judge scores and decoded texts of every pattern's samples."""
    scores, texts = {}, {}
    for p, ids in tokens.items():
        rows = [row.tolist() for row in ids]
        texts[p] = decode(rows)
        nll, ntok = score_fn(texts[p])
        scores[p] = PatternScores(np.asarray(nll, dtype=np.float64), np.asarray(ntok, dtype=np.int64),
                                  np.array([unigram_entropy(r) for r in rows], dtype=np.float64))
    return scores, texts



def compare_to_baseline(scores: Mapping[str, PatternScores], baseline: str, steps: int, B: int = 2000,
                        seed: int = 0) -> list[dict[str, Any]]:
    """One row per non-baseline pattern, ranked by Δ log gen-PPL (best first), with paired 95% intervals."""
    base = scores[baseline]
    rows = []
    for p, s in scores.items():
        if p == baseline:
            continue
        d = paired_ci(s.nll_sum, s.n_tokens, base.nll_sum, base.n_tokens, B=B, seed=seed)
        e = paired_ci(s.entropy, None, base.entropy, None, B=B, seed=seed)
        rows.append({
            "pattern": p,
            "light_segments": list(light_segments_of(p)),
            "schedule": pattern_schedule(p, steps).notation,
            "gen_ppl": math.exp(log_ppl(s)),
            "delta_log_ppl": d.point, "delta_log_ppl_ci_low": d.low, "delta_log_ppl_ci_high": d.high,
            "ppl_ratio_pct": 100.0 * math.expm1(d.point),
            "delta_entropy": e.point, "delta_entropy_ci_low": e.low, "delta_entropy_ci_high": e.high,
        })
    rows.sort(key=lambda r: (r["delta_log_ppl"], r["pattern"]))
    for rank, r in enumerate(rows, 1):
        r["rank"] = rank
    return rows


def segment_sensitivity(scores: Mapping[str, PatternScores], baseline: str, B: int = 2000, seed: int = 0,
                        ) -> list[dict[str, Any]]:
    """Per segment k: mean Δ log gen-PPL over the placements that make k light (paired CI), most robust first."""
    K = len(baseline)
    out = []
    for k in range(K):
        members = [p for p in scores if p != baseline and p[k] == LIGHT]
        if not members:
            continue
        weights = {p: 1.0 / len(members) for p in members}
        weights[baseline] = -1.0
        point, low, high = contrast_ci(scores, weights, B=B, seed=seed)
        out.append({"segment": k, "placements": len(members), "mean_delta_log_ppl": point,
                    "ci_low": low, "ci_high": high})
    out.sort(key=lambda r: (r["mean_delta_log_ppl"], r["segment"]))
    for rank, r in enumerate(out, 1):
        r["rank"] = rank
    return out


# ------------------------------------------------------------------------------------------------------------
# the whole search (shared with the swap-sensitivity profile of `mdlm importance`)


@dataclass
class SearchResult:
    segments: int
    light: int
    steps: int
    seed: int
    sample_indices: list[int]
    baseline: str
    scores: dict[str, PatternScores]
    rows: list[dict[str, Any]]
    sensitivity: list[dict[str, Any]]
    traversal: Traversal
    texts: dict[str, list[str]] = field(default_factory=dict)
    tokens: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> dict[str, Any]:
        return self.rows[0]


def run_placements(
    denoisers: Mapping[str, sampler_mod.Denoiser],
    decode: DecodeFn,
    score_fn: ScoreFn,
    *,
    segments: int,
    light: int,
    steps: int,
    mask_id: int,
    seq_len: int,
    num_samples: int,
    seed: int,
    config: SamplerConfig,
    first_index: int = 0,
    batch_size: int | None = None,
    bootstrap: int = 2000,
    bootstrap_seed: int = 0,
    traversal: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Sample all-heavy and every placement of ``light`` of ``segments`` light segments (common seeds), score
    them with the judge and compare each with all-heavy, paired. Sample indices: [first_index, first_index +
    num_samples), a selection range disjoint from the evaluation samples (`Profile.sample_ranges`)."""
    combos = placements(segments, light)
    check_steps(steps, segments)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"search num_samples {num_samples!r}: expected a positive integer")
    baseline = HEAVY * segments
    patterns = [baseline] + [pattern_of(c, segments) for c in combos]
    if isinstance(first_index, bool) or not isinstance(first_index, int) or first_index < 0:
        raise UserError(f"search first_index {first_index!r}: expected a nonnegative integer")
    indices = list(range(first_index, first_index + num_samples))
    tokens, trav = sample_patterns(denoisers, patterns, steps=steps, mask_id=mask_id, seq_len=seq_len,
                                   sample_indices=indices, seed=seed, config=config, batch_size=batch_size,
                                   traversal=traversal, progress=progress)
    scores, texts = score_patterns(tokens, decode, score_fn)
    rows = compare_to_baseline(scores, baseline, steps, B=bootstrap, seed=bootstrap_seed)
    sens = segment_sensitivity(scores, baseline, B=bootstrap, seed=bootstrap_seed)
    return SearchResult(segments, light, steps, seed, indices, baseline, scores, rows, sens, trav, texts, tokens)


# ------------------------------------------------------------------------------------------------------------
# outputs


def result_json(result: SearchResult) -> dict[str, Any]:
    base = result.scores[result.baseline]
    return {
        **result.meta,
        "segments": result.segments,
        "light": result.light,
        "steps": result.steps,
        "steps_per_segment": result.steps // result.segments,
        "light_steps_per_placement": result.light * result.steps // result.segments,
        "placements": len(result.rows),
        "seed": result.seed,
        "num_samples": len(result.sample_indices),
        "sample_indices": [result.sample_indices[0], result.sample_indices[-1] + 1],
        "baseline": {"pattern": result.baseline, "schedule": pattern_schedule(result.baseline, result.steps).notation,
                     "gen_ppl": math.exp(log_ppl(base)), "entropy": float(base.entropy.mean())},
        "traversal": dataclasses.asdict(result.traversal),
        "best": result.best["pattern"],
        "ranking": result.rows,
        "segment_sensitivity": result.sensitivity,
        "definitions": {
            "pattern": "one letter per equal segment in sampling order (step 0 = t = 1 first); L light, H heavy",
            "delta_log_ppl": "log gen-PPL(placement) - log gen-PPL(all-heavy), same seeds and sample indices; "
                             "paired percentile bootstrap over samples (95%)",
            "segment_sensitivity": "mean delta_log_ppl over the placements with segment k light (paired CI)",
        },
    }


CSV_FIELDS = ("rank", "pattern", "light_segments", "schedule", "gen_ppl", "delta_log_ppl", "delta_log_ppl_ci_low",
              "delta_log_ppl_ci_high", "ppl_ratio_pct", "delta_entropy", "delta_entropy_ci_low",
              "delta_entropy_ci_high")


def rows_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (" ".join(map(str, r[k])) if k == "light_segments" else r[k]) for k in CSV_FIELDS})
    return buf.getvalue()


def result_markdown(result: SearchResult, title: str = "Coarse segment search") -> str:
    b = result.scores[result.baseline]
    lines = [f"# {title}", "",
             f"{result.segments} segments of {result.steps // result.segments} steps (T = {result.steps}), "
             f"{result.light} light; {len(result.rows)} placements vs all-heavy (gen-PPL "
             f"{math.exp(log_ppl(b)):.3f}), {len(result.sample_indices)} samples each, seed {result.seed}, "
             f"common random numbers. Δ = paired difference to all-heavy, 95% bootstrap interval. "
             f"Sampling: {result.traversal.mode} traversal, {result.traversal.segment_runs} segment runs "
             f"(from scratch: {result.traversal.full_runs}).", "",
             "| rank | placement | schedule | Δ log gen-PPL [95% CI] | gen-PPL change | Δ entropy [95% CI] |",
             "|---:|---|---|---|---:|---|"]
    for r in result.rows:
        lines.append(f"| {r['rank']} | `{r['pattern']}` | {r['schedule']} | {r['delta_log_ppl']:+.4f} "
                     f"[{r['delta_log_ppl_ci_low']:+.4f}, {r['delta_log_ppl_ci_high']:+.4f}] | "
                     f"{r['ppl_ratio_pct']:+.2f}% | {r['delta_entropy']:+.4f} "
                     f"[{r['delta_entropy_ci_low']:+.4f}, {r['delta_entropy_ci_high']:+.4f}] |")
    lines += ["", "Per-segment sensitivity (mean Δ log gen-PPL over placements that make the segment light; "
              "most robust first):", "", "| rank | segment | steps | mean Δ log gen-PPL [95% CI] |",
              "|---:|---:|---|---|"]
    seg = result.steps // result.segments
    for r in result.sensitivity:
        k = r["segment"]
        lines.append(f"| {r['rank']} | {k} | [{k * seg}, {(k + 1) * seg}) | {r['mean_delta_log_ppl']:+.4f} "
                     f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] |")
    return "\n".join(lines) + "\n"


def per_sample_rows(result: SearchResult) -> list[dict[str, Any]]:
    out = []
    for p, s in result.scores.items():
        for i, index in enumerate(result.sample_indices):
            out.append({"pattern": p, "seed": result.seed, "sample_index": index, "nll_sum": float(s.nll_sum[i]),
                        "n_tokens": int(s.n_tokens[i]), "entropy": float(s.entropy[i])})
    return out


def sample_rows(result: SearchResult) -> list[dict[str, Any]]:
    out = []
    for p, ids in result.tokens.items():
        texts = result.texts.get(p) or [None] * len(ids)
        for i, index in enumerate(result.sample_indices):
            out.append({"pattern": p, "schedule": f"search-{p}", "seed": result.seed, "sample_index": index,
                        "text": texts[i], "token_ids": ids[i].tolist()})
    return out



def write_result(result: SearchResult, out_dir: str | Path, stem: str, title: str, markdown: bool = True) -> dict:
    """Write <stem>.{json,csv,png[,md]}, <stem>.per_sample.jsonl and <stem>.samples.jsonl into ``out_dir``.

    The JSON is written last: its presence means a complete set.
    """
    out_dir = Path(out_dir)
    data = result_json(result)
    atomic_write_jsonl(out_dir / f"{stem}.samples.jsonl", sample_rows(result))
    atomic_write_jsonl(out_dir / f"{stem}.per_sample.jsonl", per_sample_rows(result))
    atomic_write_text(out_dir / f"{stem}.csv", rows_csv(result.rows))
    if markdown:
        atomic_write_text(out_dir / f"{stem}.md", result_markdown(result, title))
    plot_placements(result.rows, result.sensitivity, out_dir / f"{stem}.png", title)
    atomic_write_json(out_dir / f"{stem}.json", data)
    return data


def load_result(path: str | Path) -> tuple[dict[str, Any], dict[str, PatternScores]]:
    """Read <stem>.json and its <stem>.per_sample.jsonl back: (summary, per-sample scores by pattern)."""
    path = Path(path)
    data = read_json(path, "run the stage that writes it first")
    for key in ("segments", "steps", "baseline", "ranking"):
        if key not in data:
            raise UserError(f"{path}: lacks {key!r}; not a search/swap-sensitivity result")
    per_sample = path.with_name(f"{path.stem}.per_sample.jsonl")
    cols: dict[str, dict[str, list]] = {}
    for n, r in read_jsonl(per_sample, f"per-sample file beside {path.name}"):
        try:
            c = cols.setdefault(r["pattern"], {"i": [], "nll": [], "tok": [], "ent": []})
            c["i"].append(r["sample_index"])
            c["nll"].append(r["nll_sum"])
            c["tok"].append(r["n_tokens"])
            c["ent"].append(r["entropy"])
        except (KeyError, TypeError) as exc:
            raise UserError(f"{per_sample}:{n}: malformed per-sample row ({exc})") from None
    scores = {}
    for p, c in cols.items():
        order = np.argsort(c["i"], kind="stable")
        scores[p] = PatternScores(np.asarray(c["nll"], dtype=np.float64)[order],
                                  np.asarray(c["tok"], dtype=np.int64)[order],
                                  np.asarray(c["ent"], dtype=np.float64)[order])
    return data, scores


def best_schedule(result: SearchResult, name: str = "search-best") -> Schedule:
    """The best placement as a schedule the pipeline can sample (`mdlm sample --schedule ...`)."""
    best = result.best
    return pattern_schedule(
        best["pattern"], result.steps, name=name,
        description=(f"Best of {len(result.rows)} placements of {result.light} light among {result.segments} "
                     f"equal segments (mdlm search, T = {result.steps}); pattern {best['pattern']}, "
                     f"Δ log gen-PPL {best['delta_log_ppl']:+.4f} vs all-heavy on {len(result.sample_indices)} "
                     f"samples."))


def result_meta(profile_name: str, judge_meta: Mapping[str, Any], config: SamplerConfig,
                bootstrap: int, bootstrap_seed: int) -> dict[str, Any]:
    """Provenance fields of a search/swap result (the JSON's leading keys)."""
    return {"profile": profile_name, **judge_meta, "predictor": config.predictor, "precision": config.precision,
            "top_p": config.top_p, "noise_removal": config.noise_removal, "bootstrap": bootstrap,
            "bootstrap_seed": bootstrap_seed}
