"""The reference sampler's cost model, next to the suite's sampler on the same model (issue 14, item 5).

`reference_cost_sample` is this suite's own implementation of what the reference MDLM loop (`ddpm_cache`
predictor) spends per step, not a copy of its code:

* the whole batch runs the model whenever any token of the batch changed in the previous step (its cache
  is one prediction for the whole batch tensor), with full logits [B, L, V];
* every step draws a token at every position from the full vocabulary (float32 exponential race over
  [B, L, V] uniforms, as the reference draws for all positions and then keeps those that were masked);
* one more whole-batch forward for the final noise removal.

Its samples follow the same law as the suite's (stay masked with probability s/t, else a draw from p_x0),
with other random numbers; only the cost is compared. `compare` times both on the tiny profile's heavy
model with random weights and one thread; `python -m bench.reference_cost --steps 1000` is the one-off
T = 1000 measurement of bench/README.md (about half an hour on a 2-core project machine), the benchmark
`test_bench_reference.py` the routine one at T = 250.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass

import numpy as np
import torch

from mdlm import sampler, sampling_law
from mdlm.schedule import Schedule

MASK_ID = 1  # bpe-8k's [MASK]


@dataclass
class CostRun:
    tokens: np.ndarray  # [B, L]
    calls: int  # model calls (every one on the whole batch)
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time (one thread: what an idle machine's wall clock would show)


def reference_cost_sample(model: torch.nn.Module, *, batch: int, seq_len: int, steps: int, seed: int = 0,
                          mask_id: int = MASK_ID, t_min: float = sampling_law.T_MIN) -> CostRun:
    """Sample ``batch`` sequences with the reference loop's cost (see the module docstring)."""
    gen = torch.Generator().manual_seed(seed)
    grid = sampling_law.time_grid(steps, t_min)
    x = torch.full((batch, seq_len), mask_id, dtype=torch.long)
    p_x0, calls = None, 0
    start, cpu_start = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for i in range(steps):
            t, s = float(grid[i]), float(grid[i + 1])
            if p_x0 is None:  # the batch's cached prediction was invalidated by a change
                logits = model(x)  # [B, L, V]
                logits[..., mask_id] = float("-inf")
                p_x0 = torch.softmax(logits, dim=-1)
                calls += 1
            weights = p_x0 * (t - s)  # [B, L, V]: token v with p_x0(v) (t - s), the mask with s
            weights[..., mask_id] = s
            u = torch.rand(weights.shape, generator=gen)
            drawn = (weights / (1e-10 - (u + 1e-10).log())).argmax(dim=-1)  # [B, L], every position
            x_next = torch.where(x == mask_id, drawn, x)
            if not torch.equal(x_next, x):
                p_x0 = None
            x = x_next
        logits = model(x)  # final noise removal: argmax of the real tokens where still masked
        logits[..., mask_id] = float("-inf")
        x = torch.where(x == mask_id, logits.argmax(dim=-1), x)
        calls += 1
    return CostRun(x.numpy(), calls, time.perf_counter() - start, time.process_time() - cpu_start)


def suite_sample(model: torch.nn.Module, *, batch: int, seq_len: int, steps: int, seed: int = 0,
                 mask_id: int = MASK_ID) -> tuple[CostRun, sampler.SampleResult]:
    """The suite's sampler (profile settings: ddpm_cache, float64, final pass) on the same model, all rows
    in one call at most (batch_size = batch)."""
    schedule = Schedule.from_segments("all-heavy", ["H100%"], steps)
    start, cpu_start = time.perf_counter(), time.process_time()
    result = sampler.sample({"heavy": model}, schedule, mask_id=mask_id, seq_len=seq_len,
                            sample_indices=range(batch), seed=seed, batch_size=batch)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return CostRun(result.token_ids, int(result.calls.sum()), seconds, cpu), result


def compare(steps: int, batch: int = 16, threads: int = 1) -> dict:
    """Both loops on the tiny profile's heavy model (random weights): the suite before and after the reference
    (its faster run counts, so a burst of load during one suite run does not flatter the ratio); samples/s
    and speed-up from wall and from CPU time."""
    from bench.common import random_models, tiny_configs, tiny_profile

    torch.set_num_threads(threads)
    model = random_models(tiny_configs())["heavy"]
    seq_len = int(tiny_profile().data.seq_len)
    first, result = suite_sample(model, batch=batch, seq_len=seq_len, steps=steps)
    ref = reference_cost_sample(model, batch=batch, seq_len=seq_len, steps=steps)
    second, _ = suite_sample(model, batch=batch, seq_len=seq_len, steps=steps)
    ours = min(first, second, key=lambda r: r.seconds)
    assert not (ref.tokens == MASK_ID).any() and not (ours.tokens == MASK_ID).any()
    return {
        "steps": steps, "batch": batch, "threads": threads, "seq_len": seq_len, "torch": torch.__version__,
        "reference": {"seconds": ref.seconds, "cpu_seconds": ref.cpu_seconds, "calls": ref.calls,
                      "row_forwards": ref.calls * batch, "samples_per_s": batch / ref.seconds},
        "suite": {"seconds": ours.seconds, "cpu_seconds": min(first.cpu_seconds, second.cpu_seconds),
                  "seconds_both_runs": [first.seconds, second.seconds], "calls": ours.calls,
                  "row_forwards": int(result.row_forwards.sum()), "head_positions": int(result.head_positions.sum()),
                  "samples_per_s": batch / ours.seconds},
        "speedup": ref.seconds / ours.seconds,
        "speedup_cpu_time": ref.cpu_seconds / min(first.cpu_seconds, second.cpu_seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(compare(args.steps, args.batch, args.threads), indent=1))


if __name__ == "__main__":
    main()
