"""Exhaustive search over coarse light/heavy segment placements; `mdlm search`.

The T denoising steps are cut into K equal segments; a *placement* puts the light model on N of them and the
heavy model on the rest, written as a K-letter pattern in sampling order (``LHHHHHHL`` for K = 8 is the
paper's sandwich L125, H750, L125 at T = 1000). Every one of the C(K, N) placements is sampled with the same
seed and sample indices as the all-heavy baseline (``H`` * K); the sampler's counter-based random numbers
make these common random numbers, so each placement is compared with the baseline *paired*, sample by
sample: Δ log gen-PPL (judge) and Δ unigram entropy with paired bootstrap intervals (`mdlm.evaluate`).

Prefix sharing. With common random numbers, two schedules that agree on steps [0, k) reach bit-identical
states at step k. The placements therefore form a trie of segment prefixes, traversed depth first: each
distinct prefix is sampled once and its end state is the start state of all its children (K = 8, N = 2:
120 segment runs instead of 29 x 8 = 232). This needs a sampler that can run steps [start, stop) from a
given state: `mdlm.sampler.sample_steps`. For the
`ddpm` predictor, or with ``traversal="full"``, every placement is sampled from scratch with
`mdlm.sampler.sample`; the samples are the same either way (tested).

The swap-sensitivity profile of `mdlm importance` is this search with N = 1 (`run_placements`).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdlm import sampler as sampler_mod
from mdlm.errors import UserError
from mdlm.evaluate import bootstrap_indices, paired_ci, ratio_of_sums, unigram_entropy
from mdlm.io import atomic_path, atomic_write_json, atomic_write_jsonl, atomic_write_text, read_json, read_jsonl
from mdlm.schedule import DEFAULT_MODELS, Schedule, dump_schedule

HEAVY, LIGHT = "H", "L"  # pattern letters = the default schedule aliases (H: heavy, L: light)
ScoreFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # texts -> (nll_sum [N], n_tokens [N])
DecodeFn = Callable[[Sequence[Sequence[int]]], list[str]]  # token id rows -> texts


# ------------------------------------------------------------------------------------------------------------
# placements


def placements(segments: int, light: int) -> list[tuple[int, ...]]:
    """Every choice of ``light`` light segments among ``segments`` (lexicographic): C(K, N) tuples."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise UserError(f"search segments {segments!r}: expected a positive integer")
    if isinstance(light, bool) or not isinstance(light, int) or not 1 <= light <= segments:
        raise UserError(f"search light {light!r}: expected an integer in [1, segments = {segments}]")
    return list(itertools.combinations(range(segments), light))


def pattern_of(light_segments: Sequence[int], segments: int) -> str:
    """(0, 7), 8 -> 'LHHHHHHL'."""
    chosen = set(light_segments)
    return "".join(LIGHT if k in chosen else HEAVY for k in range(segments))


def light_segments_of(pattern: str) -> tuple[int, ...]:
    return tuple(k for k, c in enumerate(pattern) if c == LIGHT)


def check_steps(steps: int, segments: int) -> int:
    """Steps per segment; T must split into K equal segments (so every placement has N*T/K light steps)."""
    if steps % segments:
        raise UserError(f"search: {steps} steps do not split into {segments} equal segments; "
                        f"choose segments dividing the step count")
    return steps // segments


def pattern_schedule(pattern: str, steps: int, name: str | None = None, description: str = "") -> Schedule:
    """The schedule of a pattern at T steps, consecutive equal letters merged ('LHHHHHHL' -> L125,H750,L125)."""
    seg = check_steps(steps, len(pattern))
    runs = [(letter, len(list(group)) * seg) for letter, group in itertools.groupby(pattern)]
    return Schedule.from_segments(name or f"search-{pattern}", runs, steps, description=description)


# ------------------------------------------------------------------------------------------------------------
# sampling: full schedules, or the trie of segment prefixes


def trie_available(config: sampler_mod.SamplerConfig) -> bool:
    """The trie needs ddpm_cache: `sampler.sample_steps` (ddpm runs the model at every step, so it cannot skip)."""
    return config.predictor == "ddpm_cache"


def prefix_count(patterns: Sequence[str]) -> int:
    """Distinct non-empty prefixes = segment runs of the trie traversal."""
    return len({p[:d] for p in patterns for d in range(1, len(p) + 1)})


@dataclass
class Traversal:
    mode: str  # "trie" or "full"
    segment_runs: int  # segment-length sampling runs executed (per batch of samples)
    full_runs: int  # what sampling every placement from scratch costs: placements x K


def sample_patterns(
    denoisers: Mapping[str, sampler_mod.Denoiser],
    patterns: Sequence[str],
    *,
    steps: int,
    mask_id: int,
    seq_len: int,
    sample_indices: Sequence[int],
    seed: int,
    config: sampler_mod.SamplerConfig,
    batch_size: int | None = None,
    traversal: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], Traversal]:
    """Token ids [N, L] (rows in increasing sample index) of every pattern, with common random numbers.

    ``denoisers``: {"heavy": fn, "light": fn} as for `mdlm.sampler.sample`. ``traversal``: "trie", "full",
    or "auto" (trie when the predictor allows it).
    """
    patterns = list(dict.fromkeys(patterns))
    if not patterns:
        raise UserError("search: no placements to sample")
    K = len(patterns[0])
    if any(len(p) != K or set(p) - {HEAVY, LIGHT} for p in patterns):
        raise UserError(f"search: patterns must be {K} letters of H/L, got {patterns}")
    check_steps(steps, K)
    config.validate()
    if traversal not in ("auto", "trie", "full"):
        raise UserError(f"search traversal {traversal!r}: expected auto, trie or full")
    if traversal == "trie" and not trie_available(config):
        raise UserError(f"search traversal trie: needs the ddpm_cache predictor (got {config.predictor!r})")
    use_trie = traversal == "trie" or (traversal == "auto" and trie_available(config))
    full_runs = len(patterns) * K
    if use_trie:
        tokens = _sample_trie(denoisers, patterns, steps=steps, mask_id=mask_id, seq_len=seq_len,
                              sample_indices=sample_indices, seed=seed, config=config, batch_size=batch_size,
                              progress=progress)
        return tokens, Traversal("trie", prefix_count(patterns), full_runs)
    tokens = {}
    for p in patterns:
        if progress:
            progress(p)
        result = sampler_mod.sample(denoisers, pattern_schedule(p, steps), mask_id=mask_id, seq_len=seq_len,
                                    sample_indices=sample_indices, seed=seed, config=config, batch_size=batch_size)
        tokens[p] = result.token_ids
    return tokens, Traversal("full", full_runs, full_runs)


def _visit(prefix: str, x: torch.Tensor, children: Mapping[str, list[str]], fns, noise, seg: int,
           steps: int, mask_id: int, config, chunks: dict[str, list[np.ndarray]], progress) -> None:
    """Depth first: x is the state after the segments of ``prefix``; each child segment is sampled once."""
    depth = len(prefix)
    if depth * seg == steps:
        chunks[prefix].append(x.numpy().astype(np.int64))
        return
    for letter in sorted(children[prefix]):
        if progress:
            progress(prefix + letter)
        nxt = sampler_mod.sample_steps(fns[letter], x, noise, start=depth * seg, stop=(depth + 1) * seg,
                                       steps=steps, mask_id=mask_id, config=config)
        _visit(prefix + letter, nxt, children, fns, noise, seg, steps, mask_id, config, chunks, progress)


def _sample_trie(denoisers, patterns, *, steps, mask_id, seq_len, sample_indices, seed, config, batch_size,
                 progress) -> dict[str, np.ndarray]:
    K = len(patterns[0])
    seg = steps // K
    fns = {letter: denoisers[DEFAULT_MODELS[letter]] for letter in {c for p in patterns for c in p}}
    indices = np.array(sorted(int(k) for k in sample_indices), dtype=np.int64)
    if indices.size == 0 or len(set(indices.tolist())) != indices.size or indices[0] < 0:
        raise UserError("sample indices must be distinct, nonnegative and not empty")
    batch_size = batch_size or indices.size
    chunks: dict[str, list[np.ndarray]] = {p: [] for p in patterns}
    children: dict[str, list[str]] = {}
    for p in patterns:
        for d in range(K):
            children.setdefault(p[:d], [])
            if p[d] not in children[p[:d]]:
                children[p[:d]].append(p[d])

    with torch.inference_mode():
        for b in range(0, indices.size, batch_size):  # the sampler's batching, so calls see the same rows
            idx = indices[b:b + batch_size]
            noise = sampler_mod.batch_noise(seed, idx, seq_len, steps, config)  # as `sampler.sample` draws it
            x0 = torch.full((idx.size, seq_len), mask_id, dtype=torch.long)
            _visit("", x0, children, fns, noise, seg, steps, mask_id, config, chunks, progress)
    return {p: np.concatenate(chunks[p]) for p in patterns}


# ------------------------------------------------------------------------------------------------------------
# scoring and paired comparison


@dataclass
class PatternScores:
    """Per-sample judge scores of one pattern; row i of every pattern is the same (seed, sample index)."""

    nll_sum: np.ndarray  # [N] float64
    n_tokens: np.ndarray  # [N] int64
    entropy: np.ndarray  # [N] float64, unigram entropy of the MDLM token ids (nats)


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


def log_ppl(s: PatternScores) -> float:
    return float(ratio_of_sums(s.nll_sum[None], s.n_tokens[None].astype(np.float64))[0])


def contrast_ci(scores: Mapping[str, PatternScores], weights: Mapping[str, float], B: int = 2000, seed: int = 0,
                level: float = 0.95, metric: str = "log_ppl") -> tuple[float, float, float]:
    """Paired bootstrap interval of Σ_p w_p · metric(p), resampling sample rows jointly for every pattern.

    metric "log_ppl": log gen-PPL (Σ nll / Σ tokens); "entropy": mean unigram entropy. With weights
    {p: 1, baseline: -1} this is `evaluate.paired_ci`; with averages over groups it contrasts groups.
    """
    n = len(next(iter(scores.values())).nll_sum)
    idx = bootstrap_indices(n, B, seed)  # [B, n], the resamples evaluate.paired_ci uses for (n, B, seed)
    point, reps = 0.0, np.zeros(B)
    for p, w in weights.items():
        if w == 0:
            continue
        s = scores[p]
        if metric == "log_ppl":
            v, t = s.nll_sum, s.n_tokens.astype(np.float64)
            point += w * float(ratio_of_sums(v[None], t[None])[0])
            reps += w * ratio_of_sums(v[idx], t[idx])
        elif metric == "entropy":
            point += w * float(s.entropy.mean())
            reps += w * s.entropy[idx].mean(axis=-1)
        else:
            raise ValueError(f"contrast_ci: unknown metric {metric!r}")
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return point, float(low), float(high)


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
    config: sampler_mod.SamplerConfig,
    batch_size: int | None = None,
    bootstrap: int = 2000,
    bootstrap_seed: int = 0,
    traversal: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> SearchResult:
    """Sample all-heavy and every placement of ``light`` of ``segments`` light segments (common seeds), score
    them with the judge and compare each with all-heavy, paired."""
    combos = placements(segments, light)
    check_steps(steps, segments)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise UserError(f"search num_samples {num_samples!r}: expected a positive integer")
    baseline = HEAVY * segments
    patterns = [baseline] + [pattern_of(c, segments) for c in combos]
    indices = list(range(num_samples))
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


def save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_result(result: SearchResult, path: str | Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, sens = result.rows, sorted(result.sensitivity, key=lambda r: r["segment"])
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8.0, 0.28 * len(rows) + 5), 4.2),
                               gridspec_kw={"width_ratios": [max(2, len(rows)), max(2, len(sens))]})
    y = np.array([r["delta_log_ppl"] for r in rows])
    err = np.array([[r["delta_log_ppl"] - r["delta_log_ppl_ci_low"] for r in rows],
                    [r["delta_log_ppl_ci_high"] - r["delta_log_ppl"] for r in rows]])
    a.bar(range(len(rows)), y, yerr=err, color="tab:blue", capsize=2)
    a.set_xticks(range(len(rows)), [r["pattern"] for r in rows], rotation=90, fontfamily="monospace", fontsize=7)
    a.axhline(0, color="k", lw=0.6)
    a.set_ylabel("Δ log gen-PPL vs all-heavy (95% CI)")
    a.set_title(f"{title}: placements, best first")
    ys = np.array([r["mean_delta_log_ppl"] for r in sens])
    es = np.array([[r["mean_delta_log_ppl"] - r["ci_low"] for r in sens], [r["ci_high"] - r["mean_delta_log_ppl"]
                                                                            for r in sens]])
    b.bar([r["segment"] for r in sens], ys, yerr=es, color="tab:orange", capsize=2)
    b.axhline(0, color="k", lw=0.6)
    b.set_xlabel("segment (0 = first steps, t near 1)")
    b.set_title("per-segment sensitivity")
    save_figure(fig, path)


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
    plot_result(result, out_dir / f"{stem}.png", title)
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


# ------------------------------------------------------------------------------------------------------------
# profile glue (shared with `mdlm importance`)


def sampler_config(profile: Mapping[str, Any]) -> sampler_mod.SamplerConfig:
    s = profile["sample"]
    cfg = sampler_mod.SamplerConfig(predictor=s.get("predictor", "ddpm_cache"), precision=s.get("precision", "float64"),
                                    top_p=float(s.get("top_p", 1.0)), noise_removal=bool(s.get("noise_removal", True)))
    cfg.validate()
    return cfg


def _call_model(model: torch.nn.Module, ids: torch.Tensor, rows: torch.Tensor | None = None,
                pos: torch.Tensor | None = None) -> torch.Tensor:
    """Full logits [B, L, V] of a time-agnostic DiT (importance), or, given (rows, pos), the sampler's
    protocol (`mdlm.sampler.Denoiser`): logits [N, V] with the head at those positions only."""
    return model(ids, None) if rows is None else model(ids, None, (rows, pos))


def profile_denoisers(profile: Mapping[str, Any]) -> dict[str, sampler_mod.Denoiser]:
    from mdlm.checkpoints import load_profile_models

    models = load_profile_models(profile)
    for name, m in models.items():
        if getattr(m.config, "time_conditioning", False):
            raise UserError(f"model {name!r} of profile {profile['name']!r} is time-conditioned; the sampler "
                            f"supports time-agnostic models only")
    return {name: partial(_call_model, m.eval()) for name, m in models.items()}


def profile_judge(profile: Mapping[str, Any]) -> tuple[ScoreFn, dict[str, Any]]:
    """The profile's judge as a score function, with the `mdlm evaluate` EOS/BOS conventions."""
    from mdlm import evaluate as ev

    settings = profile.get("evaluate") or {}
    name = settings.get("judge")
    if not name:
        raise UserError(f"params.yaml: profiles.{profile['name']}.evaluate.judge is not set")
    eos_default, bos_default = ev.MDLM_MARKERS.get(profile.get("tokenizer"), (ev.DEFAULT_EOS_TEXT, None))
    eos_text, bos_text = settings.get("eos_text", eos_default), settings.get("bos_text", bos_default)
    judge = ev.load_judge(name)
    batch_size = int(settings.get("batch_size", 8))

    def score(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        s = ev.score_samples(judge, list(texts), batch_size=batch_size, eos_text=eos_text, bos_text=bos_text)
        return s.nll_sum, s.n_tokens

    return score, {"judge": judge.name, "judge_sha256": judge.sha256, "eos_text": eos_text, "bos_text": bos_text}


def profile_run(profile: Mapping[str, Any], *, segments: int, light: int, num_samples: int,
                traversal: str = "auto", progress: bool = True) -> SearchResult:
    """`run_placements` with the profile's models, tokenizer, judge, sampler and bootstrap settings."""
    from tqdm import tqdm

    from mdlm.tokenizers import get_tokenizer

    s = profile["sample"]
    steps, seed = int(s["steps"]), int(s.get("seed", 0))
    check_steps(steps, segments)
    placements(segments, light)  # validate before loading anything heavy
    config = sampler_config(profile)
    tokenizer = get_tokenizer(profile["tokenizer"])
    denoisers = profile_denoisers(profile)
    score_fn, judge_meta = profile_judge(profile)
    ev = profile.get("evaluate") or {}
    n_patterns = 1 + math.comb(segments, light)
    total = prefix_count([HEAVY * segments] + [pattern_of(c, segments) for c in placements(segments, light)])
    if not trie_available(config) or traversal == "full":
        total = n_patterns
    with tqdm(total=total, desc=f"search K={segments} N={light}", disable=not progress, mininterval=1.0) as bar:
        result = run_placements(
            denoisers, tokenizer.batch_decode, score_fn, segments=segments, light=light, steps=steps,
            mask_id=int(tokenizer.mask_id), seq_len=int(profile["data"]["seq_len"]), num_samples=num_samples,
            seed=seed, config=config, batch_size=int(s.get("batch_size", num_samples)),
            bootstrap=int(ev.get("bootstrap", 2000)), bootstrap_seed=int(ev.get("seed", 0)), traversal=traversal,
            progress=lambda _: bar.update(1),
        )
    result.meta = {"profile": profile["name"], **judge_meta, "predictor": config.predictor,
                   "precision": config.precision, "top_p": config.top_p, "noise_removal": config.noise_removal,
                   "bootstrap": int(ev.get("bootstrap", 2000)), "bootstrap_seed": int(ev.get("seed", 0))}
    return result


def write_best_schedule(result: SearchResult, path: str | Path) -> Schedule:
    """The best placement as a schedule file the pipeline can sample (`mdlm sample --schedule ...`)."""
    best = result.best
    schedule = pattern_schedule(
        best["pattern"], result.steps, name="search-best",
        description=(f"Best of {len(result.rows)} placements of {result.light} light among {result.segments} "
                     f"equal segments (mdlm search, T = {result.steps}); pattern {best['pattern']}, "
                     f"Δ log gen-PPL {best['delta_log_ppl']:+.4f} vs all-heavy on {len(result.sample_indices)} "
                     f"samples."))
    dump_schedule(schedule, path)
    return schedule


# ------------------------------------------------------------------------------------------------------------
# `mdlm search`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="params.yaml profile (default: its `profile` key)")
    parser.add_argument("--segments", type=int, help="K equal segments (default: profile search.segments)")
    parser.add_argument("--light", type=int, help="N light segments per placement (default: profile search.light)")
    parser.add_argument("--num-samples", type=int, help="samples per placement (default: profile search.num_samples)")
    parser.add_argument("--traversal", choices=("auto", "trie", "full"), default="auto",
                        help="trie: sample each distinct segment prefix once (default when the predictor allows)")
    parser.add_argument("--out", help="output folder (default: runs/<profile>/search/)")
    parser.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    from mdlm.profiles import load_profile, run_dir

    profile = load_profile(args.profile)
    cfg = profile.get("search") or {}

    def pick(value, key):
        if value is not None:
            return value
        if key not in cfg:
            raise UserError(f"params.yaml: profiles.{profile['name']}.search.{key} is not set and no --{key} given")
        return int(cfg[key])

    segments, light = pick(args.segments, "segments"), pick(args.light, "light")
    num_samples = args.num_samples if args.num_samples is not None else pick(None, "num_samples")
    out = Path(args.out) if args.out else run_dir(profile) / "search"
    result = profile_run(profile, segments=segments, light=light, num_samples=num_samples,
                         traversal=args.traversal, progress=not args.no_progress)
    write_best_schedule(result, out / "best.yaml")
    write_result(result, out, "search", "Coarse segment search")
    best = result.best
    print(f"search: {len(result.rows)} placements ({result.traversal.mode} traversal, "
          f"{result.traversal.segment_runs} segment runs); best {best['pattern']} ({best['schedule']}) "
          f"Δ log gen-PPL {best['delta_log_ppl']:+.4f} [{best['delta_log_ppl_ci_low']:+.4f}, "
          f"{best['delta_log_ppl_ci_high']:+.4f}]; wrote {out}")
    return 0
