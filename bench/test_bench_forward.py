"""One forward of the heavy and the light model (tiny-profile sizes, batch 8, inference mode).

`test_forward[light]` also times PAIRS back-to-back heavy/light pairs: their median light/heavy ratio is the
wall-time ratio reported beside the FLOP ratio (the two benchmarks' own minima come from different moments).
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from bench.common import BATCH, SAMPLING_ROWS, SUMMARY, min_median, threads
from mdlm import flops, sampler

PAIRS = 7


@pytest.mark.parametrize("which", ["heavy", "light"])  # heavy first: light reports the ratio to it
def test_forward(benchmark, models, configs, which):
    model, cfg = models[which], configs[which]
    ids = torch.randint(0, cfg.vocab_size, (BATCH, cfg.length), generator=torch.Generator().manual_seed(0))
    macs = flops.analytic_macs(cfg, batch=BATCH)

    def forward():
        with torch.inference_mode():
            return model(ids)

    logits = benchmark(forward)
    assert logits.shape == (BATCH, cfg.length, cfg.vocab_size)

    benchmark.extra_info.update(model=which, batch=BATCH, length=cfg.length, threads=threads(),
                                flops=2 * macs.total, flops_blocks=2 * macs.blocks)
    times = min_median(benchmark)
    if times is None:
        return
    SUMMARY["forward_s"][which] = times[0]
    SUMMARY["forward_flops"][which] = 2 * macs.total
    benchmark.extra_info["gflops_per_s"] = 2 * macs.total / times[0] / 1e9
    if which == "light":
        ratio = paired_light_over_heavy(models, ids)
        SUMMARY["light_over_heavy_wall"] = ratio
        benchmark.extra_info["light_over_heavy_wall"] = ratio
        heavy = flops.analytic_macs(configs["heavy"], batch=BATCH)
        benchmark.extra_info["light_over_heavy_flops"] = macs.total / heavy.total


def paired_light_over_heavy(models, ids, pairs: int = PAIRS) -> float:
    """Median of light/heavy time over back-to-back pairs of forwards: robust to the drift of a shared machine."""
    ratios = []
    with torch.inference_mode():
        for _ in range(pairs):
            start = time.perf_counter()
            models["heavy"](ids)
            middle = time.perf_counter()
            models["light"](ids)
            ratios.append((time.perf_counter() - middle) / (middle - start))
    return statistics.median(ratios)



@pytest.mark.parametrize("which", ["heavy", "light"])
def test_sampling_forward(benchmark, models, configs, which):
    """The call the sampler makes (SAMPLING_ROWS rows, the head at one position per row) through the folded
    forward it runs (`mdlm.folded`), and the module's forward of the same call in back-to-back pairs:
    `folded_over_module` = median time ratio, `ms_per_row_forward` of the folded one."""
    model, cfg = models[which], configs[which]
    folded = sampler.denoiser_from_model(model)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (SAMPLING_ROWS, cfg.length), generator=gen)
    rows = torch.arange(SAMPLING_ROWS)
    pos = torch.randint(0, cfg.length, (SAMPLING_ROWS,), generator=gen)

    logits = benchmark(lambda: folded(ids, rows, pos))
    assert logits.shape == (SAMPLING_ROWS, cfg.vocab_size)
    ratios = []
    with torch.inference_mode():
        for _ in range(PAIRS):
            start = time.perf_counter()
            model(ids, None, (rows, pos))
            middle = time.perf_counter()
            folded(ids, rows, pos)
            ratios.append((time.perf_counter() - middle) / (middle - start))
    times = min_median(benchmark)
    if times is None:
        return
    entry = {"ms_per_row_forward": 1e3 * times[0] / SAMPLING_ROWS, "folded_over_module": statistics.median(ratios)}
    benchmark.extra_info.update(rows=SAMPLING_ROWS, threads=threads(), **entry)
    SUMMARY.setdefault("sampling_forward", {})[which] = entry
