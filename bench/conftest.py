"""Fixtures of the benchmarks and the end-of-run summary.

Sizes are read from the `tiny` profile of params.yaml (model section, seq_len, bpe-8k vocabulary 8192) with
random weights: timings do not depend on the values. Threads: `bench.common.threads()`, set for the whole
session so that a bigger machine does not silently change the numbers.

Benchmarks put their derived numbers in `benchmark.extra_info` and in `bench.common.SUMMARY`, which
`pytest_terminal_summary` prints: light/heavy wall-time vs FLOP ratio, sampler overhead per step, and
realized wall-clock saving / FLOP saving per shipped schedule.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.common import (
    BATCH,
    SAMPLING_ROWS,
    SCHEDULE_BATCH,
    SCHEDULE_T,
    SUMMARY,
    random_models,
    threads,
    tiny_configs,
)
from mdlm.model import MDLM, DiTConfig
from mdlm.onednn import cpu_capability

BASELINES = Path(__file__).resolve().parent / "baselines"


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's own, which opens the storage
def pytest_configure(config):
    """Each kind of machine compares with its own baseline: a storage of bench/baselines means its subfolder
    named by torch's CPU capability (AVX512, AVX2, ...). The kinds run these benchmarks 2-3x apart, so one
    kind's baseline would fail the other's gate; a kind without a baseline gets pytest-benchmark's warning and
    no comparison."""
    storage = config.getoption("benchmark_storage", None)
    if storage and Path(storage.removeprefix("file://")).resolve() == BASELINES:
        config.option.benchmark_storage = f"file://{BASELINES / cpu_capability()}"


@pytest.fixture(scope="session", autouse=True)
def _threads():
    before = torch.get_num_threads()
    torch.set_num_threads(threads())
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def configs() -> dict[str, DiTConfig]:
    return tiny_configs()


@pytest.fixture(scope="session")
def models(configs) -> dict[str, MDLM]:
    return random_models(configs)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    fwd, step, sched = SUMMARY["forward_s"], SUMMARY["step"], SUMMARY["schedules"]
    whole, ref = SUMMARY["whole_run"], SUMMARY["reference"]
    if not (fwd or step or sched or whole or ref or SUMMARY.get("sampling_forward")):
        return
    tr = terminalreporter
    tr.section("mdlm-sched bench summary (min times; tiny sizes, random weights)")
    tr.write_line(f"torch {torch.__version__}, {threads()} threads")
    if "heavy" in fwd and "light" in fwd:
        ff = SUMMARY["forward_flops"]
        tr.write_line(f"forward, batch {BATCH}: heavy {fwd['heavy'] * 1e3:.1f} ms, light {fwd['light'] * 1e3:.1f} ms "
                      f"(min); light/heavy wall {SUMMARY.get('light_over_heavy_wall', float('nan')):.3f} (paired "
                      f"median) vs FLOPs {ff['light'] / ff['heavy']:.3f}")
    for which, s in SUMMARY.get("sampling_forward", {}).items():
        tr.write_line(f"sampling call ({which}, {SAMPLING_ROWS} rows, head at one position each): folded forward "
                      f"{s['ms_per_row_forward']:.2f} ms per row-forward, {s['folded_over_module']:.3f} of the "
                      f"module's time (paired median)")
    for which, s in step.items():
        line = (f"sampler step ({which}, ddpm, batch {BATCH}, T {s['steps']}): {s['per_step_s'] * 1e3:.1f} ms/step, "
                f"overhead {s['overhead']:+.2%} of its forward")
        if s.get("overhead_vs_heavy_forward") is not None:
            line += f", {s['overhead_vs_heavy_forward']:+.2%} of a heavy forward (target <= 5%)"
        tr.write_line(line)
    if whole:
        tr.write_line(f"all-heavy whole run ({whole['samples']} samples, T {whole['steps']}): "
                      f"{whole['seconds']:.1f} s, "
                      f"{whole['samples_per_s']:.3f} samples/s, {whole['calls']} calls, {whole['row_forwards']} "
                      f"row-forwards, {whole['head_positions']} head positions; executed "
                      f"{whole['executed_gflops_per_s']:.1f} GFLOP/s = {whole['executed_fraction_of_peak']:.1%} of "
                      f"the matmul rate {whole['matmul_peak_gflops_per_s']:.1f} (target >= 70%); sampler overhead "
                      f"{whole['overhead']:+.2%} of the model time (target <= 5%)")
    if "speedup" in ref:
        tr.write_line(f"reference cost model vs suite (batch {ref['suite']['batch']}, T {ref['suite']['steps']}): "
                      f"{ref['reference']['samples_per_s']:.4f} vs {ref['suite']['samples_per_s']:.4f} samples/s, "
                      f"{ref['reference']['calls']} vs {ref['suite']['calls']} calls: suite "
                      f"{ref['speedup']:.1f}x faster")
    if sched:
        tr.write_line("")
        tr.write_line(f"whole runs: ddpm_cache, batch {SCHEDULE_BATCH}, T {SCHEDULE_T}")
        tr.write_line(f"{'schedule':<14} {'notation':<16} {'time s':>7} {'FLOP sav.':>9} {'realized':>9} "
                      f"{'real./FLOP':>10} {'CPU real.':>9} {'CPU/FLOP':>8} {'blocks-only':>11}")

        def ratio(x):
            return "-" if x is None else f"{x:.3f}"

        for name, s in sched.items():
            tr.write_line(f"{name:<14} {s['notation'][:16]:<16} {s['time_s']:>7.3f} {s['flop_saving']:>9.2%} "
                          f"{s['realized_saving']:>9.2%} {ratio(s['realized_over_flop']):>10} "
                          f"{s['realized_cpu_saving']:>9.2%} {ratio(s['realized_cpu_over_flop']):>8} "
                          f"{s['blocks_only_saving']:>11.2%}")
        if "pooled_realized_over_flop" in SUMMARY:
            tr.write_line(f"pooled realized/FLOP (sum of realized / sum of FLOP savings): wall "
                          f"{SUMMARY['pooled_realized_over_flop']:.3f}, CPU time "
                          f"{SUMMARY['pooled_realized_cpu_over_flop']:.3f}")
        w, ff = SUMMARY.get("light_over_heavy_wall"), SUMMARY["forward_flops"]
        overhead = step.get("heavy", {}).get("overhead")
        if w is not None and overhead is not None and "heavy" in ff and "light" in ff:
            f = ff["light"] / ff["heavy"]
            tr.write_line(f"expected realized/FLOP from the parts, (1 - wall ratio) / (1 - FLOP ratio) / (1 + heavy "
                          f"overhead): {(1 - w) / (1 - f) / (1 + overhead):.3f}")
        tr.write_line("realized = median over rounds of 1 - time / time(all-heavy, same round); FLOP sav. = full-FLOP "
                      "saving of the run's row-forwards vs all-heavy's; target realized/FLOP >= 0.95")
