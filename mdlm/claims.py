"""The paper's claims tested on per-sample scores, and the optimizer's measured comparison (library).

Claims: (a) early and late steps tolerate the light model better than middle ones; (b) the sandwich is at
least as good as other placements of the same light steps; (c) sample diversity is preserved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mdlm.importance import split_bins
from mdlm.io import read_json
from mdlm.patterns import LIGHT, baseline_of, pattern_of
from mdlm.scores import PatternScores, aligned_scores, contrast_ci, interval_dict
from mdlm.search import load_result

VERDICTS = ("reproduced", "not reproduced", "inconclusive")
SCHEDULE_NAMES = ("sandwich", "all-heavy", "light-first", "light-last", "light-middle", "interleaved")


def _verdict_better(interval: tuple[float, float, float]) -> str:
    """For a contrast where negative favours the claim: CI < 0 reproduced, CI > 0 not, else inconclusive."""
    _, low, high = interval
    return VERDICTS[0] if high < 0 else VERDICTS[1] if low > 0 else VERDICTS[2]


def outer_middle_segments(K: int) -> tuple[list[int], list[int]]:
    """Outer = the first and last quarter of the segments, middle = the rest (K = 8: 0,1,6,7 vs 2..5)."""
    q = max(1, K // 4)
    outer = sorted(set(range(q)) | set(range(K - q, K)))
    return outer, [k for k in range(K) if k not in outer]


def outer_vs_middle(scores: Mapping[str, PatternScores], baseline: str, B: int, seed: int) -> dict[str, Any] | None:
    """Mean log gen-PPL of the placements whose light segments are all outer minus of those all in the middle."""
    K = len(baseline)
    outer, middle = outer_middle_segments(K)
    groups = {"outer": [], "middle": []}
    for p in scores:
        light = {k for k, c in enumerate(p) if c == LIGHT}
        if not light:
            continue
        if light <= set(outer):
            groups["outer"].append(p)
        elif light <= set(middle):
            groups["middle"].append(p)
    if not groups["outer"] or not groups["middle"]:
        return None
    w = {p: 1 / len(groups["outer"]) for p in groups["outer"]}
    w.update({p: -1 / len(groups["middle"]) for p in groups["middle"]})
    d = contrast_ci(scores, w, B=B, seed=seed)
    return {"outer_segments": outer, "middle_segments": middle, "outer_placements": groups["outer"],
            "middle_placements": groups["middle"], "outer_minus_middle_log_ppl": interval_dict(*d),
            "verdict": _verdict_better(d)}


def claim_a(search, swap, importance, B: int, seed: int) -> dict[str, Any]:
    """(a) early and late steps are more robust than middle ones: the search decides, the swap agrees."""
    a: dict[str, Any] = {"claim": "early and late steps tolerate the light model better than middle steps",
                         "rule": "outer-minus-middle mean log gen-PPL over placements: CI < 0 reproduced, "
                                 "CI > 0 not reproduced, else inconclusive; the search decides, the swap "
                                 "profile is checked for agreement"}
    evidence = []
    for label, sc in (("search", search), ("swap_sensitivity", swap)):
        if sc:
            res = outer_vs_middle(sc, baseline_of(list(sc)), B, seed)
            if res is not None:
                a[label] = res
                evidence.append(res["verdict"])
    if importance is not None:
        outer, middle = split_bins(importance["bins"])
        if outer and middle:
            a["importance"] = {"t_outer": "t > 0.75 or t <= 0.25", "t_middle": "0.25 < t <= 0.75",
                               "mean_kl_outer": _mean(outer, "kl"), "mean_kl_middle": _mean(middle, "kl"),
                               "mean_ce_gap_outer": _mean(outer, "ce_gap"),
                               "mean_ce_gap_middle": _mean(middle, "ce_gap"),
                               "note": "point values over bins (per-bin CIs in importance.json)"}
    if not evidence:
        a["verdict"], a["reason"] = VERDICTS[2], "no search or swap-sensitivity scores"
    elif VERDICTS[0] in evidence and VERDICTS[1] in evidence:
        a["verdict"], a["reason"] = VERDICTS[2], "search and swap sensitivity disagree"
    else:
        a["verdict"] = evidence[0]
    return a


def _mean(rows, key: str) -> float:
    import numpy as np

    return float(np.mean([r[key] for r in rows]))


def claim_b(schedules, B: int, seed: int) -> dict[str, Any]:
    """(b) the sandwich is at least as good as other placements at the same budget."""
    b: dict[str, Any] = {"claim": "the sandwich is at least as good as other placements of the same light steps",
                         "rule": "Δ = log gen-PPL(sandwich) − log gen-PPL(other), paired: any CI > 0 → not "
                                 "reproduced; none > 0 and at least one < 0 → reproduced; else inconclusive",
                         "comparisons": {}}
    if schedules and "sandwich" in schedules:
        for other in ("light-first", "light-last", "light-middle", "interleaved"):
            if other in schedules:
                d = contrast_ci(schedules, {"sandwich": 1.0, other: -1.0}, B=B, seed=seed)
                b["comparisons"][other] = {**interval_dict(*d), "sandwich": ("better" if d[2] < 0 else
                                                                             "worse" if d[1] > 0 else "tie")}
    if not b["comparisons"]:
        b["verdict"], b["reason"] = VERDICTS[2], "no paired scores of the sandwich and its comparators"
    else:
        outcomes = [c["sandwich"] for c in b["comparisons"].values()]
        b["verdict"] = (VERDICTS[1] if "worse" in outcomes else VERDICTS[0] if "better" in outcomes
                        else VERDICTS[2])
    return b


def claim_c(schedules, B: int, seed: int, entropy_tolerance: float) -> dict[str, Any]:
    """(c) diversity is preserved: an equivalence test of the sandwich's entropy against all-heavy."""
    c: dict[str, Any] = {"claim": "sample diversity (unigram entropy) is preserved by the sandwich",
                         "rule": f"Δ entropy = sandwich − all-heavy, paired (an equivalence test): CI within "
                                 f"±{entropy_tolerance:.0%} of the all-heavy entropy → reproduced; CI entirely "
                                 f"beyond that band → not reproduced; else (e.g. a wide CI) inconclusive"}
    if schedules and "sandwich" in schedules and "all-heavy" in schedules:
        d = contrast_ci(schedules, {"sandwich": 1.0, "all-heavy": -1.0}, B=B, seed=seed, metric="entropy")
        tol = entropy_tolerance * float(schedules["all-heavy"].entropy.mean())
        c["delta_entropy"] = interval_dict(*d)
        c["tolerance_nats"] = tol
        _, low, high = d
        if -tol <= low and high <= tol:
            c["verdict"] = VERDICTS[0]
        elif low > tol or high < -tol:
            c["verdict"] = VERDICTS[1]
        else:
            c["verdict"] = VERDICTS[2]
    else:
        c["verdict"], c["reason"] = VERDICTS[2], "no paired scores of the sandwich and all-heavy"
    return c


def claims_from_scores(*, search: Mapping[str, PatternScores] | None = None,
                       swap: Mapping[str, PatternScores] | None = None, importance: Mapping[str, Any] | None = None,
                       schedules: Mapping[str, PatternScores] | None = None, B: int = 2000, seed: int = 0,
                       entropy_tolerance: float = 0.01) -> dict[str, Any]:
    """The paper's three claims from paired per-sample scores (rows aligned within each mapping).

    search/swap: {pattern: scores} including the all-heavy pattern. schedules: {"sandwich", "all-heavy",
    "light-first", "light-last", "light-middle", "interleaved": scores} from the pipeline (any subset).
    """
    return {"a_outer_steps_robust": claim_a(search, swap, importance, B, seed),
            "b_sandwich_best": claim_b(schedules, B, seed),
            "c_diversity_preserved": claim_c(schedules, B, seed, entropy_tolerance)}


def search_schedule_scores(search: Mapping[str, PatternScores]) -> dict[str, PatternScores]:
    """The paper's comparison schedules that are placements of the search grid (K even, N light)."""
    baseline = baseline_of(list(search))
    K = len(baseline)
    N = max(p.count(LIGHT) for p in search)
    wanted: dict[str, tuple[int, ...]] = {"all-heavy": (), "light-first": tuple(range(N)),
                                          "light-last": tuple(range(K - N, K))}
    if N % 2 == 0:
        wanted["sandwich"] = tuple(range(N // 2)) + tuple(range(K - N // 2, K))
    if (K - N) % 2 == 0:
        wanted["light-middle"] = tuple(range((K - N) // 2, (K + N) // 2))
    out = {}
    for name, light in wanted.items():
        p = pattern_of(light, K)
        if p in search:
            out[name] = search[p]
    return out


def paper_claims(run: Path, profile_name: str, B: int, seed: int, *, importance_dir: Path | None = None,
                 search_dir: Path | None = None, metrics_dir: Path | None = None,
                 root: Path | None = None) -> dict[str, Any]:
    """The claims on a profile from whatever stage outputs exist under ``run`` (runs/<profile>). Claims (b)
    and (c) use the pipeline's evaluate per-sample files (metrics/<schedule>.per_sample.jsonl) when the
    sandwich's exists, else the search placements that coincide with those schedules."""
    idir, sdir = importance_dir or run / "importance", search_dir or run / "search"
    mdir = metrics_dir or run / "metrics"
    search = load_result(sdir / "search.json")[1] if (sdir / "search.json").is_file() else None
    swap = (load_result(idir / "swap_sensitivity.json")[1] if (idir / "swap_sensitivity.json").is_file() else None)
    importance = read_json(idir / "importance.json", "") if (idir / "importance.json").is_file() else None
    files = {n: mdir / f"{n}.per_sample.jsonl" for n in SCHEDULE_NAMES if (mdir / f"{n}.per_sample.jsonl").is_file()}
    if "sandwich" in files:
        schedules, source = aligned_scores(files, "sandwich"), f"pipeline ({display_path(mdir, root)})"
    elif search is not None:
        schedules, source = search_schedule_scores(search), f"search placements ({display_path(sdir, root)})"
    else:
        schedules, source = None, "none"
    claims = claims_from_scores(search=search, swap=swap, importance=importance, schedules=schedules, B=B,
                                seed=seed)
    claims["schedule_scores_source"] = source
    claims["profile"] = profile_name
    return claims


def display_path(path: Path, root: Path | None) -> str:
    """A path relative to the project root where possible: reports must not carry machine paths."""
    if root is None:
        return str(path)
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def gather_comparison(metrics_dir: Path, optimized: str, *, B: int, seed: int, search_best: str = "search-best",
                      sandwich: str = "sandwich", baseline: str = "all-heavy") -> dict[str, Any]:
    """The optimized schedule vs the search's best and the sandwich, from the pipeline's evaluate outputs
    (runs/<profile>/metrics/<name>.json and .per_sample.jsonl): gen-PPL, Δ vs all-heavy, and paired Δ of the
    optimized schedule against each. Missing files are listed under "missing", never skipped silently."""
    mdir = Path(metrics_dir)
    labels = {"optimized": optimized, "search_best": search_best, "sandwich": sandwich, "all_heavy": baseline}
    out: dict[str, Any] = {"metrics_dir": str(mdir), "schedules": {}, "missing": []}
    for label, name in labels.items():
        path = mdir / f"{name}.json"
        if not path.is_file():
            out["missing"].append(str(path))
            continue
        m = read_json(path, "run `mdlm evaluate`")
        keep = ("schedule", "num_samples", "gen_ppl", "gen_ppl_ci_low", "gen_ppl_ci_high", "entropy",
                "delta_log_ppl", "delta_log_ppl_ci_low", "delta_log_ppl_ci_high", "ppl_ratio_pct",
                "delta_entropy", "delta_entropy_ci_low", "delta_entropy_ci_high")
        out["schedules"][label] = {k: m[k] for k in keep if k in m}
    files = {label: mdir / f"{name}.per_sample.jsonl" for label, name in labels.items()}
    present = {k: p for k, p in files.items() if p.is_file()}
    out["missing"] += [str(p) for k, p in files.items() if k not in present]
    if "optimized" in present:
        scores = aligned_scores(present, "optimized")
        out["paired"] = {}
        for other in ("search_best", "sandwich", "all_heavy"):
            if other in scores:
                d = contrast_ci(scores, {"optimized": 1.0, other: -1.0}, B=B, seed=seed)
                out["paired"][f"optimized_minus_{other}"] = interval_dict(*d)
    return out
