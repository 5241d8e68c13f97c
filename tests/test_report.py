"""The report's table and figure from stage outputs (formatting only; the smoke pipeline test runs it whole)."""

from __future__ import annotations

from mdlm.plots import plot_ppl_vs_flops
from mdlm.report import results_table, write_plot_data


def _row(name, light, full, ppl, delta=None):
    return {"schedule": name, "light_steps": light, "steps": 1000, "blocks_only_saving": light / 1000 * 2 / 3,
            "full_saving": full, "effective_saving": full, "wall_saving": full * 0.9, "gen_ppl": ppl,
            "gen_ppl_ci_low": ppl * 0.9, "gen_ppl_ci_high": ppl * 1.1, "entropy": 4.2, "entropy_ci_low": 4.1,
            "entropy_ci_high": 4.3, "delta_log_ppl": delta, "ppl_ratio_pct": None if delta is None else 3.0,
            "ppl_ratio_pct_ci_low": None if delta is None else 1.0, "ppl_ratio_pct_ci_high": None if delta is None
            else 5.0}


def test_results_table_has_one_row_per_schedule_with_intervals():
    rows = [_row("all-heavy", 0, 0.0, 50.0), _row("sandwich", 250, 0.121, 51.5, 0.03)]
    table = results_table(rows).splitlines()
    assert len(table) == 4
    assert "| all-heavy | 0/1000 | 0.0% / 0.0% / 0.0% |" in table[2] and "(baseline)" in table[2]
    expected = "| sandwich | 250/1000 | 16.7% / 12.1% / 12.1% | 10.9% | 51.5 [46.4, 56.7] | +3.0% [+1.0%, +5.0%]"
    assert expected in table[3]


def test_figure_and_plot_data_are_written(tmp_path):
    rows = [_row("all-heavy", 0, 0.0, 50.0), _row("sandwich", 250, 0.121, 51.5, 0.03)]
    extra = [{"name": "LLHHHHHH", "kind": "search", "full_saving": 0.121, "gen_ppl": 52.0, "delta_log_ppl": 0.04}]
    plot_ppl_vs_flops(rows, extra, tmp_path / "f.png")
    write_plot_data(rows, extra, tmp_path)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    lines = (tmp_path / "ppl_vs_flops.csv").read_text().splitlines()
    assert lines[0].startswith("name,kind,full_flops_fraction") and len(lines) == 4
    assert lines[2].startswith("sandwich,schedule,0.879000")
