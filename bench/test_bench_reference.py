"""The suite's sampler against the reference sampler's cost model (`bench.reference_cost`), at T = 250.

Both sample BATCH sequences with the tiny profile's heavy model (random weights), one thread, one round each
(the reference takes minutes). The summary prints samples/s of both and the speed-up; T = 1000 is measured
once with `python -m bench.reference_cost --steps 1000` (bench/README.md).
"""

from __future__ import annotations

import pytest

from bench.common import SUMMARY, min_median, tiny_profile
from bench.reference_cost import MASK_ID, reference_cost_sample, suite_sample

STEPS, BATCH = 250, 16


@pytest.mark.parametrize("loop", ["suite", "reference"])
def test_reference_cost(benchmark, models, loop):
    seq_len = int(tiny_profile().data.seq_len)
    if loop == "suite":
        run = benchmark.pedantic(lambda: suite_sample(models["heavy"], batch=BATCH, seq_len=seq_len, steps=STEPS)[0],
                                 rounds=1, warmup_rounds=0)
    else:
        run = benchmark.pedantic(reference_cost_sample, args=(models["heavy"],),
                                 kwargs=dict(batch=BATCH, seq_len=seq_len, steps=STEPS), rounds=1, warmup_rounds=0)
    assert not (run.tokens == MASK_ID).any()
    entry = {"steps": STEPS, "batch": BATCH, "calls": run.calls, "seconds": run.seconds,
             "samples_per_s": BATCH / run.seconds}
    benchmark.extra_info.update(entry)
    if min_median(benchmark) is None:
        return
    SUMMARY["reference"][loop] = entry
    if {"suite", "reference"} <= SUMMARY["reference"].keys():
        ratio = SUMMARY["reference"]["reference"]["seconds"] / SUMMARY["reference"]["suite"]["seconds"]
        SUMMARY["reference"]["speedup"] = ratio
        benchmark.extra_info["speedup_vs_suite"] = ratio
