"""How many calls the event-driven sampler makes per schedule, under its rule and the rule it replaced.

A call runs one model on up to `batch_size` rows whose next unmasking event uses it. Which model to run next
is the sampler's choice (`mdlm.sampler._next_model`); the samples do not depend on it, the number of calls
does, and each call has a fixed cost besides its rows (`bench.call_costs`). For each shipped schedule, step
count T, number of samples in flight and seed, this prints the calls of:

- `earliest`: the model of the earliest pending event (the rule before the eighth pass), simulated on the
  run's events;
- `sampler`: the sampler itself, run with denoisers that return logits at once (its calls are counted, so
  this is the rule as shipped);
- `bound`: a lower bound for any rule: per model, the most events any row has on it, or its events over
  `batch_size`, whichever is more.

The events depend only on the seed, the sample indices, L and T, not on the model, so the counts are those
of real runs. Tiny profile sizes (L from the profile), batch 16:

    PYTHONPATH=. python -m bench.batching_policy
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench.common import tiny_profile
from mdlm import sampler
from mdlm.sampling_law import SamplerConfig, UnmaskEvents, batch_noise, model_of_event_step
from mdlm.schedule import load_schedule, resolve_schedule_path

SCHEDULES = ("all-heavy", "sandwich", "light-first", "light-last", "light-middle", "interleaved")


def model_of_group(schedule, events: UnmaskEvents) -> np.ndarray:
    """The model index (as the sampler numbers them) of each event group's step."""
    return model_of_event_step(schedule.step_aliases(), list(schedule.models))[events.step]


def earliest_rule_calls(events: UnmaskEvents, models: np.ndarray, batch: int) -> int:
    """Calls when each call takes the earliest pending event's model (earliest next steps first)."""
    ptr, calls = events.first.copy(), 0
    active = np.flatnonzero(ptr < events.end)
    while active.size:
        groups = ptr[active]
        waiting = models[groups] == models[groups][np.argmin(events.step[groups])]
        rows, groups = active[waiting], groups[waiting]
        if rows.size > batch:
            rows = rows[np.sort(np.argsort(events.step[groups], kind="stable")[:batch])]
        ptr[rows] += 1
        calls += 1
        active = active[ptr[active] < events.end[active]]
    return calls


def lower_bound(events: UnmaskEvents, models: np.ndarray, rows: int, batch: int) -> int:
    total = 0
    for m in np.unique(models):
        per_row = np.bincount(events.row[models == m], minlength=rows)
        total += max(int(per_row.max()), -(-int(per_row.sum()) // batch))
    return total


def sampler_calls(schedule, rows: int, seq_len: int, seed: int, batch: int) -> int:
    def instant(ids, rows_, pos):
        return torch.zeros(pos.numel(), 8)

    fns = {m: instant for m in set(schedule.models.values())}
    result = sampler.sample(fns, schedule, mask_id=7, seq_len=seq_len, sample_indices=range(rows), seed=seed,
                            config=SamplerConfig(), batch_size=batch)
    return int(result.calls.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[1000, 128, 32])
    parser.add_argument("--rows", type=int, nargs="+", default=[16, 32, 64], help="samples in flight")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    args = parser.parse_args()
    seq_len = tiny_profile().data.seq_len
    print(f"calls summed over seeds 0-{args.seeds - 1}, L {seq_len}, batch {args.batch}: earliest / sampler / bound")
    for steps in args.steps:
        for rows in args.rows:
            cells = []
            for name in SCHEDULES:
                schedule = load_schedule(resolve_schedule_path(name), steps)
                counts = np.zeros(3, dtype=np.int64)
                for seed in range(args.seeds):
                    tau, _, _ = batch_noise(seed, np.arange(rows), seq_len, steps, SamplerConfig())
                    events = UnmaskEvents.of(tau, steps, True)
                    models = model_of_group(schedule, events)
                    counts += [earliest_rule_calls(events, models, args.batch),
                               sampler_calls(schedule, rows, seq_len, seed, args.batch),
                               lower_bound(events, models, rows, args.batch)]
                cells.append(f"{name} {counts[0]}/{counts[1]}/{counts[2]}")
            print(f"T {steps:4d}, {rows:2d} rows: " + ", ".join(cells))


if __name__ == "__main__":
    main()
