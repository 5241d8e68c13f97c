"""The frontier's report: a markdown section with prose templated from the numbers, and its figure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mdlm.stats import pct_change


def _pct_ci(point: float, low: float, high: float) -> str:
    return f"{pct_change(point):+.1f}% [{pct_change(low):+.1f}%, {pct_change(high):+.1f}%]"


def _gflops(x: float) -> str:
    return f"{x / 1e9:.2f}"


def budget_sentence(row: Mapping[str, Any]) -> str:
    """One sentence per family point, templated from its numbers."""
    head = (f"{row['family']} at T = {row['steps']} with {100 * row['light_fraction']:g}% light steps "
            f"({_gflops(row['flops_per_sample'])} GFLOPs/sample, gen-PPL {row['gen_ppl']:.1f}) vs {row['baseline']} "
            f"({_gflops(row['baseline_flops_per_sample'])} GFLOPs/sample, gen-PPL {row['baseline_gen_ppl']:.1f}): "
            f"{_pct_ci(row['delta_log_ppl'], row['delta_log_ppl_ci_low'], row['delta_log_ppl_ci_high'])}")
    tail = {"no difference detectable": "no difference detectable.",
            "scheduling better": "the scheduled run is better at this compute.",
            "baseline better": f"{row['baseline']} (all-heavy at T = {row['baseline_steps']}) is better at this "
                               "compute."}
    return f"{head}; {tail[row['verdict']]}"


def optimizer_sentence(records: Sequence[Mapping[str, Any]]) -> str | None:
    """Where the `optimized` points come from, templated from the optimizer's records (None without them)."""
    chosen = [r for r in records if r.get("optimizer")]
    if not chosen:
        return None
    listed = "; ".join(
        f"{r['name']} = {r['segments']} ({r['optimizer']['light_steps']} light steps, signal {r['optimizer']['signal']}"
        + (f", predicted Δ log gen-PPL {r['optimizer']['predicted_delta_log_ppl']:+.3f}"
           if "predicted_delta_log_ppl" in r["optimizer"] else "") + ")"
        for r in chosen)
    return (f"The optimized points are `mdlm optimize`'s placements of ceil(fraction × T) light steps (the family "
            f"points' count up to one step's rounding), chosen from the importance and search outputs, whose "
            f"sample indices are disjoint from these evaluation samples (held out): {listed}.")


def frontier_section(records: Sequence[Mapping[str, Any]], table: Sequence[Mapping[str, Any]],
                     figure: str | None = None, level: int = 2) -> str:
    """The report's markdown section: front, budget table and prose, every number from the records."""
    h = "#" * level
    n = records[0]["num_samples"] if records else 0
    lines = [f"{h} Quality–compute frontier", ""]
    if figure:
        lines += [f"![gen-PPL vs executed FLOPs per sample]({figure})", ""]
    front = [r for r in records if r["on_front"]]
    lines += [f"{len(records)} schedules, {n} evaluation samples each (same sample indices and seed: paired), "
              f"95% intervals. Pareto front (lower gen-PPL at lower executed FLOPs): "
              + ", ".join(f"{r['name']} ({_gflops(r['flops_per_sample'])} GFLOPs, {r['gen_ppl']:.1f})"
                          for r in sorted(front, key=lambda r: r["flops_per_sample"])) + ".", ""]
    lines += ["| placement | GFLOPs/sample | gen-PPL | step-count baseline (nearest FLOPs) | baseline GFLOPs | "
              "Δ gen-PPL vs baseline [paired 95% CI] | Holm-adjusted | verdict |",
              "|---|---|---|---|---|---|---|---|"]
    for row in table:
        lines.append(
            f"| {row['name']} | {_gflops(row['flops_per_sample'])} | {row['gen_ppl']:.1f} | {row['baseline']} | "
            f"{_gflops(row['baseline_flops_per_sample'])} | "
            f"{_pct_ci(row['delta_log_ppl'], row['delta_log_ppl_ci_low'], row['delta_log_ppl_ci_high'])} | "
            f"[{pct_change(row['delta_log_ppl_adj_low']):+.1f}%, {pct_change(row['delta_log_ppl_adj_high']):+.1f}%]"
            f" | {row['verdict']} |")
    lines += ["", *(f"- {budget_sentence(row)}" for row in table)]
    chosen = optimizer_sentence(records)
    if chosen:
        lines += ["", chosen]
    counts = {v: sum(r["verdict"] == v for r in table) for v in
              ("scheduling better", "baseline better", "no difference detectable")}
    lines += ["", f"Over {len(table)} placement points (verdicts from Holm-adjusted intervals, step-down, over all "
              f"of them): scheduling better at {counts['scheduling better']}, the nearest all-heavy step-count "
              f"baseline better at {counts['baseline better']}, no difference detectable at "
              f"{counts['no difference detectable']}."]
    return "\n".join(lines) + "\n"


def plot_frontier(records: Sequence[Mapping[str, Any]], path) -> None:
    """PNG: gen-PPL (95% CI) vs executed FLOPs per sample, a curve per family and T, the front marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        label = r["family"] if r["kind"] == "baseline" else f"{r['family']} (T = {r['steps']})"
        curves.setdefault(label, []).append(r)
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, pts in curves.items():
        pts = sorted(pts, key=lambda r: r["flops_per_sample"])
        x = [r["flops_per_sample"] for r in pts]
        y = [r["gen_ppl"] for r in pts]
        err = [[r["gen_ppl"] - r["gen_ppl_ci_low"] for r in pts], [r["gen_ppl_ci_high"] - r["gen_ppl"] for r in pts]]
        style = "s--" if pts[0]["kind"] == "baseline" else "o-"
        ax.errorbar(x, y, yerr=err, fmt=style, capsize=2, markersize=4, linewidth=1, label=label)
    front = sorted((r for r in records if r["on_front"]), key=lambda r: r["flops_per_sample"])
    ax.step([r["flops_per_sample"] for r in front], [r["gen_ppl"] for r in front], where="post", color="black",
            linewidth=1.5, alpha=0.6)
    ax.scatter([r["flops_per_sample"] for r in front], [r["gen_ppl"] for r in front], s=120, facecolors="none",
               edgecolors="black", label="Pareto front", zorder=3)
    ax.set_xscale("log")
    ax.set_xlabel("executed FLOPs per sample")
    ax.set_ylabel("judge gen-PPL (95% CI)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120, format="png")  # the atomic temp path has no .png suffix
    plt.close(fig)
