"""Controlled wall-clock measurement of schedules: interleaved rounds in one process, savings over rounds.

Why this design. One timed run per schedule in separate processes on a shared machine measures the machine
as much as the schedule (the same FLOPs timed 10 points apart), and so do runs timed one after another in one
process: this project machine's speed drifts by 5-10% between consecutive runs of a few seconds (lag-1
correlation 0.63). So every schedule runs in one process with a fixed thread count, after untimed warm-up
runs, in R rounds, and within a round the schedules' runs are interleaved in time slices (`timing.slice_s`,
0.25 s): the run that is least far along takes model calls for one slice, timed and billed to its schedule,
so every schedule sees the same machine within a second and the runs finish together. A schedule's saving is
measured against the reference (all-heavy) *of the same round*: per round, saving_r = 1 − t_r(schedule) /
t_r(reference); the realized saving is the median over rounds, with a distribution-free 95% interval from
the order statistics of the rounds (`stats.median_interval`; it needs >= 6 rounds, fewer give the median
alone: a bootstrap over three rounds would call their range a 95% interval). Ties in progress go in the
round's order, rotated to start at schedule r mod S. Wall and CPU time (process time: all threads) are both
recorded; the wall-clock saving is the headline. Per schedule the record also says how many rounds would show
the target ratio at the spread of the rounds measured (`rounds_to_show_target`).

Workers. Rounds are independent, so several processes (one per core, `timing.workers`) can share them:
worker k runs its own warm-up and rounds `round_shares` gives it, every schedule in each of its rounds, and
`merge_round_times` puts the rounds together; pairs never span two workers. A worker then times the schedules
beside another sampling process, as `mdlm sample`'s workers run: on a 2-core machine that halves the stage's
wall time.

What interleaving adds: the first calls of a slice find caches and the allocator warmed by another run. With
slices of one call this cost all-light 3 points of all-heavy's time on the project machine (65.2% saved
against 68.1% for whole runs back to back); slices of 20-50 calls cost under 1 point and kept the interval
within about ±1 point, against ±4 for whole runs.

The library never samples by itself: `measure_rounds` steps the iterators ``start_run(name)`` gives and reads
a ``clock`` (both injectable, so the interleaving and the statistics are testable with fake runs and a fake
clock).
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Callable, Iterator, Sequence
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


def measure_rounds(names: Sequence[str], start_run: Callable[[str], Iterator[float]], rounds: int, warmup: int = 1,
                   clock: Clock = process_clock, warmup_names: Sequence[str] | None = None,
                   slice_s: float = 0.25, first_round: int = 0) -> RoundTimes:
    """``warmup`` untimed runs of each of ``warmup_names`` (default: every schedule), then ``rounds`` timed
    rounds, numbered from ``first_round`` (round r's order is `rotated_order`(names, r); a worker's share of a
    larger measurement starts past the other workers' rounds). A round starts every schedule's run
    (``start_run(name)``: an iterator that does one model call per step and yields the fraction of its run
    done) and interleaves them in slices: the run that is least far along (ties: the round's rotated order)
    takes steps until ``slice_s`` seconds have passed or it ends, so all of them advance in lockstep and finish
    together. Each slice is timed and billed to its schedule."""
    if not names or len(set(names)) != len(names):
        raise UserError(f"timing: expected distinct schedule names, got {list(names)}")
    if rounds < 1 or warmup < 0 or first_round < 0:
        raise UserError(f"timing: rounds {rounds} must be >= 1, warmup {warmup} and first round {first_round} >= 0")
    for w in range(warmup):
        for name in rotated_order(list(names if warmup_names is None else warmup_names), w):
            for _ in start_run(name):
                pass
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    orders = []
    for r in range(first_round, first_round + rounds):
        order = rotated_order(names, r)
        orders.append(order)
        spent = _interleaved_round(order, start_run, clock, slice_s)
        for name in order:
            wall[name].append(spent[name][0])
            cpu[name].append(spent[name][1])
    return RoundTimes(wall=wall, cpu=cpu, orders=orders)


def round_shares(rounds: int, workers: int) -> list[tuple[int, int]]:
    """(first round, rounds) of each of ``workers`` processes sharing ``rounds`` rounds, in round order; the
    first rounds % workers workers take one more. Workers beyond the rounds get none (they are not started)."""
    if rounds < 1 or workers < 1:
        raise UserError(f"timing: rounds {rounds} and workers {workers} must be >= 1")
    counts = [rounds // workers + (k < rounds % workers) for k in range(min(workers, rounds))]
    return [(sum(counts[:k]), n) for k, n in enumerate(counts)]


def merge_round_times(parts: Sequence[RoundTimes]) -> RoundTimes:
    """The rounds of several workers as one measurement, the workers' rounds in the order given."""
    if not parts or any(set(p.wall) != set(parts[0].wall) for p in parts):
        raise UserError("timing: the workers timed different schedules" if parts else "timing: no rounds to merge")
    names = list(parts[0].wall)
    return RoundTimes(wall={n: [t for p in parts for t in p.wall[n]] for n in names},
                      cpu={n: [t for p in parts for t in p.cpu[n]] for n in names},
                      orders=[o for p in parts for o in p.orders])


def _interleaved_round(order: list[str], start_run: Callable[[str], Iterator[float]], clock: Clock,
                       slice_s: float) -> dict[str, list[float]]:
    """[wall, CPU] seconds per schedule of one round whose runs advance in time slices, least done first."""
    runs = {name: start_run(name) for name in order}
    done = {name: 0.0 for name in order}
    spent = {name: [0.0, 0.0] for name in order}
    gc.collect()
    gc.disable()  # a collection of one run's garbage must not land in another run's step
    try:
        while runs:
            name = min(runs, key=lambda n: (done[n], order.index(n)))
            wall0, cpu0 = clock()
            wall1, cpu1 = wall0, cpu0
            while wall1 - wall0 < slice_s and name in runs:
                try:
                    done[name] = next(runs[name])
                except StopIteration:
                    del runs[name]
                wall1, cpu1 = clock()
            spent[name][0] += wall1 - wall0
            spent[name][1] += cpu1 - cpu0
    finally:
        gc.enable()
    return spent


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
    """The settings and rows per call of a timing.json (`mdlm timing`) and, per schedule, the realized saving,
    its ratio to the executed-FLOP saving and the target's verdict; None when there is no such file."""
    if not path.is_file():
        return None
    data = read_json(path)
    try:
        schedules = [{"schedule": str(r["schedule"]), "realized_saving": _checked(r["realized_saving"]),
                      **{k: r[k] for k in RECORD_KEYS}} for r in data["schedules"]]
        return {"settings": dict(data["settings"]), "batch_size": data.get("batch_size"), "schedules": schedules}
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a `mdlm timing` record ({type(exc).__name__}: {exc})") from None


def _checked(saving: dict[str, Any]) -> dict[str, float | None]:
    return {"point": float(saving["point"]),
            **{k: None if saving[k] is None else float(saving[k]) for k in ("ci_low", "ci_high")}}
