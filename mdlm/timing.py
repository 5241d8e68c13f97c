"""Controlled wall-clock measurement of schedules: interleaved rounds in one process, savings over rounds.

Why this design. One timed run per schedule in separate processes on a shared machine measures the machine
as much as the schedule (the same FLOPs timed 10 points apart). Here every schedule runs in one process with
a fixed thread count, after untimed warm-up rounds, in R rounds; round r runs the schedules in the order
rotated to start at schedule r mod S, so no schedule always runs first (cold) or right after the same
neighbour. A schedule's saving is measured against the reference (all-heavy) *of the same round*, which
cancels slow drifts of the machine: per round, saving_r = 1 − t_r(schedule) / t_r(reference); the
realized saving is the median over rounds, with a distribution-free 95% interval from the order statistics
of the rounds (`stats.median_interval`; it needs >= 6 rounds, fewer give the median alone: a bootstrap over
three rounds would call their range a 95% interval). Wall and CPU time (process time: all threads) are both
recorded; the wall-clock saving is the headline. Per schedule the record also says how many rounds would show
the target ratio at the spread of the rounds measured (`rounds_to_show_target`).

The library never samples by itself: `measure_rounds` calls ``run_one(name)`` and a ``clock`` (both
injectable, so the rotation and the statistics are testable with a fake sampler and a fake clock).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np

from mdlm.errors import UserError
from mdlm.io import read_json
from mdlm.stats import median_interval

Clock = Callable[[], tuple[float, float]]  # -> (wall seconds, CPU seconds), any origin
# the sampler-speed issue's target: realized / executed-FLOP saving >= 0.95, shown by the interval's lower end,
# for every schedule that saves >= 10% of the executed FLOPs
TARGET_RATIO, TARGET_MIN_SAVING = 0.95, 0.10
MIN_ROUNDS = 6  # the fewest rounds whose order statistics give a 95% interval of the median
LEVEL = 0.95


class Estimate(NamedTuple):
    """A median over rounds and its interval; low and high are None when there are too few rounds."""

    point: float
    low: float | None
    high: float | None


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


def per_round_savings(times: dict[str, list[float]], name: str, reference: str) -> np.ndarray:
    """1 − t_r(name) / t_r(reference) for each round r."""
    t, ref = np.asarray(times[name], dtype=np.float64), np.asarray(times[reference], dtype=np.float64)
    if t.shape != ref.shape or t.ndim != 1 or t.size == 0:
        raise UserError(f"timing: {name!r} has {t.size} rounds, reference {reference!r} {ref.size}")
    if np.any(ref <= 0):
        raise UserError(f"timing: reference {reference!r} took a non-positive time in a round: {ref.tolist()}")
    return 1.0 - t / ref


def realized_saving(times: dict[str, list[float]], name: str, reference: str) -> Estimate:
    """Median over rounds of the per-round saving, with its order-statistic 95% interval (None below 6 rounds)."""
    point, bounds = median_interval(per_round_savings(times, name, reference), LEVEL)
    return Estimate(point, *(bounds or (None, None)))


def ratio_to(estimate: Estimate, denominator: float | None, min_abs: float = 1e-9) -> Estimate | None:
    """``estimate`` divided by a constant (the executed-FLOP saving); None when that is ~0 or unknown."""
    if denominator is None or abs(denominator) < min_abs:
        return None
    if estimate.low is None or estimate.high is None:
        return Estimate(estimate.point / denominator, None, None)
    low, high = sorted((estimate.low / denominator, estimate.high / denominator))
    return Estimate(estimate.point / denominator, low, high)


def rounds_to_show_target(savings: np.ndarray, executed: float | None) -> int | None:
    """Rounds at which the interval's lower end would clear TARGET_RATIO x the executed saving, if the rounds
    spread as these did (normal approximation: the median's standard error is sqrt(pi/2) sd / sqrt(n)).
    None when the median itself is not above that line (no number of rounds would show it) or is unknown."""
    if executed is None or savings.size < 2:
        return None
    margin = float(np.median(savings)) - TARGET_RATIO * executed
    if margin <= 0:
        return None
    z = NormalDist().inv_cdf((1 + LEVEL) / 2)
    return max(MIN_ROUNDS, math.ceil(math.pi / 2 * (z * float(savings.std(ddof=1)) / margin) ** 2))


def _interval_dict(e: Estimate | None) -> dict[str, float | None] | None:
    return None if e is None else {"point": e.point, "ci_low": e.low, "ci_high": e.high}


def summarize(times: RoundTimes, executed_saving: dict[str, float | None], reference: str
              ) -> list[dict[str, Any]]:
    """One record per schedule: seconds per round, realized saving (wall, CPU) and its ratio to executed."""
    if reference not in times.wall:
        raise UserError(f"timing: the reference schedule {reference!r} was not timed "
                        f"(timed: {', '.join(times.wall)})")
    records = []
    for name in times.wall:
        wall = realized_saving(times.wall, name, reference)
        cpu = realized_saving(times.cpu, name, reference)
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
            # None: the target does not apply (executed saving < 10%); False also when no interval (< 6 rounds)
            "meets_target": (ratio is not None and ratio.low is not None and ratio.low >= TARGET_RATIO)
            if applies else None,
            "rounds_to_show_target": rounds_to_show_target(per_round_savings(times.wall, name, reference), executed)
            if applies else None,
        })
    return records


RECORD_KEYS = ("executed_saving", "ratio_to_executed", "meets_target", "rounds_to_show_target")


def read_record(path: Path) -> dict[str, Any] | None:
    """The settings of a timing.json (`mdlm timing`) and, per schedule, the realized saving, its ratio to the
    executed-FLOP saving and the target's verdict; None when there is no such file."""
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        schedules = [{"schedule": str(r["schedule"]), "realized_saving": _checked(r["realized_saving"]),
                      **{k: r[k] for k in RECORD_KEYS}} for r in data["schedules"]]
        return {"settings": dict(data["settings"]), "schedules": schedules}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a `mdlm timing` record ({type(exc).__name__}: {exc})") from None


def _checked(saving: dict[str, Any]) -> dict[str, float | None]:
    return {"point": float(saving["point"]),
            **{k: None if saving[k] is None else float(saving[k]) for k in ("ci_low", "ci_high")}}
