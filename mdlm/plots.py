"""The suite's figures (matplotlib, Agg backend), each written atomically as a PNG.

Figures are views of stage outputs: every function takes the rows that a stage already wrote to JSON/CSV.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, tight: bool = True) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        if tight:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        else:
            fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_importance(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> None:
    """Cross-entropy of both models, and KL / CE gap with their intervals, against t (per-timestep profile)."""
    plt = _pyplot()
    t = np.array([r["t"] for r in rows])
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(t, [r["ce_heavy"] for r in rows], "o-", ms=3, label="heavy")
    a.plot(t, [r["ce_light"] for r in rows], "o-", ms=3, label="light")
    a.set_ylabel("masked-token cross-entropy (nats)")
    a.legend()
    b.plot(t, [r["kl"] for r in rows], "o-", ms=3, color="tab:red", label="KL(heavy ‖ light)")
    b.fill_between(t, [r["kl_ci_low"] for r in rows], [r["kl_ci_high"] for r in rows], color="tab:red", alpha=0.2)
    b.plot(t, [r["ce_gap"] for r in rows], "s--", ms=3, color="tab:green", label="CE light − heavy")
    b.fill_between(t, [r["ce_gap_ci_low"] for r in rows], [r["ce_gap_ci_high"] for r in rows], color="tab:green",
                   alpha=0.2)
    b.axhline(0, color="k", lw=0.6)
    b.set_ylabel("nats per masked token")
    b.legend()
    for ax in (a, b):
        ax.set_xlabel("t (sampling runs from t = 1, step 0, to t = 0)")
        ax.invert_xaxis()
    fig.suptitle(title)
    save_figure(fig, path)


def plot_placements(rows: Sequence[Mapping[str, Any]], sensitivity: Sequence[Mapping[str, Any]],
                    path: str | Path, title: str) -> None:
    """Bars of Δ log gen-PPL per placement (best first) and of the per-segment sensitivity, with intervals."""
    plt = _pyplot()
    sens = sorted(sensitivity, key=lambda r: r["segment"])
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


def plot_ppl_vs_flops(rows: Sequence[Mapping[str, Any]], extra: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Gen PPL against full-FLOP cost (1 - saving) for the schedules, search placements and the optimizer,
    with the Pareto front (lowest PPL at each cost)."""
    plt = _pyplot()
    points = [(1 - r["full_saving"], r["gen_ppl"], r["schedule"], "schedule") for r in rows if r["gen_ppl"]]
    points += [(1 - e["full_saving"], e["gen_ppl"], e["name"], e["kind"]) for e in extra if e.get("gen_ppl")]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind, marker in (("schedule", "o"), ("search", "x"), ("optimizer", "*")):
        pts = [p for p in points if p[3] == kind]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=kind,
                       s=90 if kind == "optimizer" else 30)
    for cost, ppl, name, kind in points:
        if kind != "search":
            ax.annotate(name, (cost, ppl), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front, best = [], float("inf")
    for cost, ppl, _, _ in sorted(points):
        if ppl < best:
            front.append((cost, ppl))
            best = ppl
    if front:
        ax.step([c for c, _ in front], [p for _, p in front], where="post", color="gray", lw=1, label="Pareto front")
    ax.set_xlabel("full FLOPs relative to all-heavy")
    ax.set_ylabel("judge gen PPL (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, tight=False)
