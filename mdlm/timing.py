"""Controlled wall-clock measurement of schedules: interleaved rounds in one process, savings over rounds.

Why this design. One timed run per schedule in separate processes on a shared machine measures the machine
as much as the schedule (the same FLOPs timed 10 points apart). Here every schedule runs in one process with
a fixed thread count, after untimed warm-up rounds, in R rounds; round r runs the schedules in the order
rotated to start at schedule r mod S, so no schedule always runs first (cold) or right after the same
neighbour. A schedule's saving is measured against the reference (all-heavy) *of the same round*, which
cancels slow drifts of the machine: per round, saving_r = 1 − t_r(schedule) / t_r(reference); the
realized saving is the median over rounds, with a percentile bootstrap interval over rounds. Wall and CPU
time (process time: all threads) are both recorded; the wall-clock saving is the headline.

The library never samples by itself: `measure_rounds` calls ``run_one(name)`` and a ``clock`` (both
injectable, so the rotation and the statistics are testable with a fake sampler and a fake clock).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mdlm.errors import UserError
from mdlm.stats import Interval, bootstrap_ci

Clock = Callable[[], tuple[float, float]]  # -> (wall seconds, CPU seconds), any origin
# the sampler-speed issue's target: realized / executed-FLOP saving >= 0.95, shown by the interval's lower end,
# for every schedule that saves >= 10% of the executed FLOPs
TARGET_RATIO, TARGET_MIN_SAVING = 0.95, 0.10


def process_clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


@dataclass(frozen=True)
class RoundTimes:
    """Seconds per schedule and round (rounds in order) and the order each round ran in."""

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    orders: list[list[str]]


def rotated_order(names: Sequence[str], round_index: int) -> list[str]:
    """The schedules of round ``round_index``: ``names`` rotated to start at index round_index mod S."""
    start = round_index % len(names)
    return list(names[start:]) + list(names[:start])


def measure_rounds(names: Sequence[str], run_one: Callable[[str], Any], rounds: int, warmup: int = 1,
                   clock: Clock = process_clock, warmup_names: Sequence[str] | None = None) -> RoundTimes:
    """``warmup`` untimed rounds of ``warmup_names`` (default: every schedule), then ``rounds`` timed rounds
    of ``names`` in rotated order."""
    if not names or len(set(names)) != len(names):
        raise UserError(f"timing: expected distinct schedule names, got {list(names)}")
    if rounds < 1 or warmup < 0:
        raise UserError(f"timing: rounds {rounds} must be >= 1 and warmup {warmup} >= 0")
    for w in range(warmup):
        for name in rotated_order(list(names if warmup_names is None else warmup_names), w):
            run_one(name)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    orders = []
    for r in range(rounds):
        order = rotated_order(names, r)
        orders.append(order)
        for name in order:
            gc.collect()  # a collection triggered by the previous schedule's garbage must not bill this one
            wall0, cpu0 = clock()
            run_one(name)
            wall1, cpu1 = clock()
            wall[name].append(wall1 - wall0)
            cpu[name].append(cpu1 - cpu0)
    return RoundTimes(wall=wall, cpu=cpu, orders=orders)


def _median(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    return np.median(values, axis=-1)


def per_round_savings(times: dict[str, list[float]], name: str, reference: str) -> np.ndarray:
    """1 − t_r(name) / t_r(reference) for each round r."""
    t, ref = np.asarray(times[name], dtype=np.float64), np.asarray(times[reference], dtype=np.float64)
    if t.shape != ref.shape or t.ndim != 1 or t.size == 0:
        raise UserError(f"timing: {name!r} has {t.size} rounds, reference {reference!r} {ref.size}")
    if np.any(ref <= 0):
        raise UserError(f"timing: reference {reference!r} took a non-positive time in a round: {ref.tolist()}")
    return 1.0 - t / ref


def realized_saving(times: dict[str, list[float]], name: str, reference: str, B: int = 2000, seed: int = 0
                    ) -> Interval:
    """Median over rounds of the per-round saving, with a percentile bootstrap interval over rounds."""
    return bootstrap_ci(per_round_savings(times, name, reference), stat=_median, B=B, seed=seed)


def ratio_to(interval: Interval, denominator: float | None, min_abs: float = 1e-9) -> Interval | None:
    """``interval`` divided by a constant (the executed-FLOP saving); None when that is ~0 or unknown."""
    if denominator is None or abs(denominator) < min_abs:
        return None
    low, high = sorted((interval.low / denominator, interval.high / denominator))
    return Interval(interval.point / denominator, low, high)


def _interval_dict(i: Interval | None) -> dict[str, float] | None:
    return None if i is None else {"point": i.point, "ci_low": i.low, "ci_high": i.high}


def summarize(times: RoundTimes, executed_saving: dict[str, float | None], reference: str,
              B: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """One record per schedule: seconds per round, realized saving (wall, CPU) and its ratio to executed."""
    if reference not in times.wall:
        raise UserError(f"timing: the reference schedule {reference!r} was not timed "
                        f"(timed: {', '.join(times.wall)})")
    records = []
    for name in times.wall:
        wall = realized_saving(times.wall, name, reference, B, seed)
        cpu = realized_saving(times.cpu, name, reference, B, seed)
        executed = executed_saving.get(name)
        ratio = ratio_to(wall, executed)
        applies = executed is not None and executed >= TARGET_MIN_SAVING
        records.append({
            "schedule": name,
            "wall_s": [round(t, 6) for t in times.wall[name]],
            "cpu_s": [round(t, 6) for t in times.cpu[name]],
            "median_wall_s": float(np.median(times.wall[name])),
            "executed_saving": executed,
            "realized_saving": _interval_dict(wall),
            "realized_saving_cpu": _interval_dict(cpu),
            "ratio_to_executed": _interval_dict(ratio),
            "ratio_to_executed_cpu": _interval_dict(ratio_to(cpu, executed)),
            # None: the target does not apply (executed saving < 10%)
            "meets_target": (ratio is not None and ratio.low >= TARGET_RATIO) if applies else None,
        })
    return records
