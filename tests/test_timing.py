"""Controlled wall-clock measurement: rotation, timing with an injected clock, savings over rounds, the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mdlm import timing
from mdlm.errors import UserError
from mdlm.stats import median_interval

ROOT = Path(__file__).resolve().parents[1]


def test_rotated_order_starts_round_r_at_schedule_r_mod_s():
    names = ["a", "b", "c"]
    assert [timing.rotated_order(names, r) for r in range(4)] == [
        ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


class FakeRuns:
    """Runs whose steps take known times on a fake clock (CPU time runs at 2x wall). A run of schedule n yields
    after each of its steps, (k + 1) / len(steps[n]), then spends ``end`` seconds returning its result."""

    def __init__(self, steps: dict[str, list[float]], end: float = 1.0):
        self.steps, self.end, self.now = steps, end, 100.0
        self.log: list[str] = []  # the schedule of every step taken; "n$" the end of a run of n

    def clock(self) -> tuple[float, float]:
        return self.now, 2 * self.now

    def start_run(self, name: str):
        for k, seconds in enumerate(self.steps[name]):
            self.now += seconds
            self.log.append(name)
            yield (k + 1) / len(self.steps[name])
        self.now += self.end
        self.log.append(name + "$")


def test_slices_of_one_step_keep_the_runs_in_lockstep_and_bill_each_step_to_its_run():
    fake = FakeRuns({"h": [3.0, 3.0, 3.0, 3.0], "l": [1.0, 2.0]})
    t = timing.measure_rounds(["h", "l"], fake.start_run, rounds=2, warmup=0, clock=fake.clock, slice_s=1e-9)
    # least done first, ties in the round's order (h first in round 0, l first in round 1):
    # progress h 0 -> .25 -> .5 -> .75 -> 1, l 0 -> .5 -> 1; at 1 the next step of a run is its end
    assert fake.log == ["h", "l", "h", "h", "l", "h", "h$", "l$",
                        "l", "h", "h", "l", "h", "h", "l$", "h$"]
    assert t.orders == [["h", "l"], ["l", "h"]]
    assert t.wall == {"h": [13.0, 13.0], "l": [4.0, 4.0]}  # its steps and its end, whatever the interleaving
    assert t.cpu == {"h": [26.0, 26.0], "l": [8.0, 8.0]}


def test_a_slice_runs_steps_until_its_time_is_up():
    fake = FakeRuns({"h": [3.0, 3.0, 3.0, 3.0], "l": [1.0, 1.0, 1.0, 1.0]}, end=0.0)
    t = timing.measure_rounds(["h", "l"], fake.start_run, rounds=1, warmup=0, clock=fake.clock, slice_s=2.5)
    # h: one 3 s step fills a slice (.25); l: three 1 s steps (.75) before 2.5 s pass; h .5; h .75; h 1 (a tie
    # at .75: h first); l 1, then its end in the same slice (it takes 0 s); h's end
    assert fake.log == ["h", "l", "l", "l", "h", "h", "h", "l", "l$", "h$"]
    assert t.wall == {"h": [12.0], "l": [4.0]}


def test_long_slices_run_whole_runs_back_to_back_after_an_untimed_warm_up():
    fake = FakeRuns({"h": [3.0, 3.0], "l": [1.0]})
    t = timing.measure_rounds(["h", "l"], fake.start_run, rounds=2, warmup=1, clock=fake.clock,
                              warmup_names=["h"], slice_s=1e9)
    assert fake.log == ["h", "h", "h$", "h", "h", "h$", "l", "l$", "l", "l$", "h", "h", "h$"]
    assert t.wall == {"h": [7.0, 7.0], "l": [2.0, 2.0]}


def test_workers_share_the_rounds_and_their_rotations_continue_where_the_last_worker_stopped():
    assert timing.round_shares(6, 2) == [(0, 3), (3, 3)]
    assert timing.round_shares(7, 3) == [(0, 3), (3, 2), (5, 2)]
    assert timing.round_shares(2, 4) == [(0, 1), (1, 1)]  # no worker without a round
    assert timing.round_shares(6, 1) == [(0, 6)]
    parts = []
    for first, rounds in timing.round_shares(5, 2):
        fake = FakeRuns({"h": [3.0], "l": [1.0], "m": [2.0]}, end=0.0)
        parts.append(timing.measure_rounds(["h", "l", "m"], fake.start_run, rounds, warmup=0, clock=fake.clock,
                                           slice_s=1e9, first_round=first))
    merged = timing.merge_round_times(parts)
    assert merged.orders == [timing.rotated_order(["h", "l", "m"], r) for r in range(5)]
    assert merged.wall == {"h": [3.0] * 5, "l": [1.0] * 5, "m": [2.0] * 5}
    assert merged.cpu == {"h": [6.0] * 5, "l": [2.0] * 5, "m": [4.0] * 5}


def test_median_interval_uses_order_statistics_with_binomial_coverage():
    # coverage of [x_(k), x_(n+1-k)] is 1 - 2 P(Bin(n, 1/2) <= k - 1), worked out by hand:
    # n = 5: k = 1 covers 1 - 2/32 = 0.9375 < 0.95, so no interval; n = 6: 1 - 2/64 = 0.969 -> the range;
    # n = 9: k = 2 covers 1 - 2 (1 + 9)/512 = 0.961, k = 3 only 1 - 2 (1 + 9 + 36)/512 = 0.820
    assert median_interval([5.0, 1.0, 4.0, 2.0, 3.0]) == (3.0, None)
    assert median_interval([6.0, 1.0, 5.0, 2.0, 4.0, 3.0]) == (3.5, (1.0, 6.0))
    assert median_interval(np.arange(9.0)) == (4.0, (1.0, 7.0))
    assert median_interval(np.arange(9.0), level=0.8) == (4.0, (2.0, 6.0))  # k = 3 covers 0.820 >= 0.8
    assert timing.MIN_ROUNDS == 6 and median_interval(np.arange(5.0))[1] is None
    assert median_interval(np.arange(6.0))[1] is not None


def test_median_interval_covers_the_median_at_its_level():
    """Simulated: the order-statistic interval holds the true median >= 95% of the time; a percentile bootstrap
    over 3 values (the old method) holds it about 75% of the time."""
    rng = np.random.default_rng(0)
    draws = rng.lognormal(0.0, 1.0, size=(4000, 7))  # true median 1.0
    hits = [low <= 1.0 <= high for low, high in (median_interval(d)[1] for d in draws)]
    assert np.mean(hits) >= 0.95
    three = draws[:, :3]
    assert np.mean((three.min(axis=1) <= 1.0) & (1.0 <= three.max(axis=1))) < 0.8


def test_saving_is_per_round_median_with_an_interval_over_rounds():
    # the machine is twice as slow in round 3: a per-round ratio cancels it, pooled times would not
    times = {"h": [10.0, 10.0, 20.0, 10.0, 10.0, 10.0], "s": [8.0, 9.0, 14.0, 8.0, 8.0, 8.5]}
    per_round = timing.per_round_savings(times, "s", "h")
    np.testing.assert_allclose(per_round, [0.2, 0.1, 0.3, 0.2, 0.2, 0.15])
    s = timing.realized_saving(times, "s", "h")
    assert s.point == pytest.approx(0.2)  # median of the six rounds
    assert (s.low, s.high) == pytest.approx((0.1, 0.3))  # six rounds: the range
    few = timing.realized_saving({"h": [10.0] * 5, "s": [7.5] * 5}, "s", "h")
    assert few.point == pytest.approx(0.25) and few.low is None and few.high is None
    r = timing.ratio_to(s, 0.25)
    assert (r.point, r.low, r.high) == pytest.approx((0.8, 0.4, 1.2))
    assert timing.ratio_to(s, 0.0) is None and timing.ratio_to(s, None) is None
    neg = timing.ratio_to(s, -0.5)  # a negative executed saving flips the bounds' order
    assert neg.low <= neg.point <= neg.high
    assert timing.ratio_to(few, 0.5) == (pytest.approx(0.5), None, None)


def test_rounds_to_show_target():
    savings = np.array([0.20, 0.18, 0.22, 0.19, 0.21, 0.20])  # sd 0.01414, median 0.20
    # executed 0.20: margin 0.20 - 0.95 * 0.20 = 0.01; n = pi/2 (1.96 * 0.01414 / 0.01)^2 = 12.07 -> 13
    assert timing.rounds_to_show_target(savings, 0.20) == 13
    assert timing.rounds_to_show_target(savings, 0.25) is None  # median ratio 0.8: no number of rounds shows it
    assert timing.rounds_to_show_target(savings, 0.10) == timing.MIN_ROUNDS  # far above the line: the minimum
    assert timing.rounds_to_show_target(savings, None) is None


def test_summarize_records():
    t = timing.RoundTimes(wall={"h": [10.0, 10.0], "s": [8.0, 9.0]}, cpu={"h": [20.0, 20.0], "s": [16.0, 18.0]},
                          orders=[["h", "s"], ["s", "h"]])
    recs = {r["schedule"]: r for r in timing.summarize(t, {"h": 0.0, "s": 0.2}, "h")}
    assert recs["h"]["realized_saving"] == {"point": 0.0, "ci_low": None, "ci_high": None}  # 2 rounds: no CI
    assert recs["h"]["ratio_to_executed"] is None  # nothing saved, no ratio
    assert recs["s"]["realized_saving"]["point"] == pytest.approx(0.15)  # median of 0.2 and 0.1
    assert recs["s"]["ratio_to_executed"]["point"] == pytest.approx(0.75)
    assert recs["s"]["realized_saving_cpu"]["point"] == pytest.approx(0.15)
    assert recs["s"]["wall_s"] == [8.0, 9.0] and recs["s"]["median_wall_s"] == 8.5
    assert recs["s"]["meets_target"] is False and recs["h"]["meets_target"] is None  # 0.75 < 0.95; h saves 0%
    assert recs["s"]["rounds_to_show_target"] is None and recs["h"]["rounds_to_show_target"] is None
    six = [["h", "s"], ["s", "h"]] * 3
    ok = timing.RoundTimes(wall={"h": [10.0] * 6, "s": [8.0, 8.1, 8.0, 8.05, 8.0, 8.1]},
                           cpu={"h": [1.0] * 6, "s": [1.0] * 6}, orders=six)
    assert timing.summarize(ok, {"s": 0.195}, "h")[1]["meets_target"] is True  # ratio >= 0.97 throughout
    short = timing.RoundTimes(wall={"h": [10.0] * 5, "s": [8.0] * 5}, cpu={"h": [1.0] * 5, "s": [1.0] * 5},
                              orders=six[:5])
    rec = timing.summarize(short, {"s": 0.195}, "h")[1]
    assert rec["meets_target"] is False and rec["rounds_to_show_target"] == timing.MIN_ROUNDS  # no CI at 5


def test_read_record(tmp_path):
    assert timing.read_record(tmp_path / "none.json") is None
    path = tmp_path / "timing.json"
    rec = {"schedule": "s", "realized_saving": {"point": 0.1, "ci_low": None, "ci_high": None},
           "executed_saving": 0.12, "ratio_to_executed": None, "meets_target": False, "rounds_to_show_target": 9}
    path.write_text(json.dumps({"settings": {"rounds": 2}, "schedules": [rec]}))
    assert timing.read_record(path) == {"settings": {"rounds": 2}, "batch_size": None, "schedules": [rec]}
    path.write_text(json.dumps({"settings": {}, "schedules": [{**rec, "realized_saving": 0.1}]}))
    with pytest.raises(UserError, match="not a `mdlm timing` record"):
        timing.read_record(path)


@pytest.mark.parametrize("call, match", [
    (lambda: timing.measure_rounds(["a", "a"], print, 2), "distinct schedule names"),
    (lambda: timing.measure_rounds([], print, 2), "distinct schedule names"),
    (lambda: timing.measure_rounds(["a"], print, 0), "rounds 0 must be >= 1"),
    (lambda: timing.measure_rounds(["a"], print, 2, first_round=-1), "first round -1 >= 0"),
    (lambda: timing.round_shares(6, 0), "workers 0 must be >= 1"),
    (lambda: timing.merge_round_times([]), "no rounds to merge"),
    (lambda: timing.merge_round_times([timing.RoundTimes({"a": [1.0]}, {"a": [1.0]}, [["a"]]),
                                       timing.RoundTimes({"b": [1.0]}, {"b": [1.0]}, [["b"]])]),
     "workers timed different schedules"),
    (lambda: timing.per_round_savings({"s": [1.0, 2.0], "h": [1.0]}, "s", "h"), "'s' has 2 rounds"),
    (lambda: timing.per_round_savings({"s": [1.0], "h": [0.0]}, "s", "h"), "non-positive time"),
    (lambda: timing.summarize(timing.RoundTimes({"s": [1.0]}, {"s": [1.0]}, [["s"]]), {}, "h"),
     "reference schedule 'h' was not timed"),
])
def test_bad_input_is_one_line_user_error(call, match):
    with pytest.raises(UserError, match=match) as exc:
        call()
    assert "\n" not in str(exc.value)


# ---- the command, on random smoke-size models ----------------------------------------------------------------


@pytest.fixture
def smoke_command(monkeypatch, one_thread):
    import torch

    from mdlm import sampler
    from mdlm.commands import timing as command
    from mdlm.model import MDLM, model_config
    from mdlm.profiles import load_profile

    monkeypatch.setenv("MDLM_ROOT", str(ROOT))
    p = load_profile("smoke")
    torch.manual_seed(0)
    denoisers = {w: sampler.denoiser_from_model(MDLM(model_config(p.model, w, 8192, p.data.seq_len)).eval())
                 for w in ("heavy", "light")}
    monkeypatch.setattr(command, "profile_denoisers", lambda profile: denoisers)
    monkeypatch.setattr(command, "mask_id", lambda tokenizer: 1)
    return command


def test_command_times_every_schedule_in_rotated_rounds(smoke_command, tmp_path, capsys):
    from mdlm.cli import main

    out = tmp_path / "timing" / "timing.json"
    args = ["timing", "--profile", "smoke", "--schedules", "all-heavy", "sandwich", "all-light", "--rounds", "2",
            "--samples", "2", "--warmup", "1", "--steps", "16", "--threads", "1", "--out", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    assert r["orders"] == [["all-heavy", "sandwich", "all-light"], ["sandwich", "all-light", "all-heavy"]]
    assert r["settings"]["warmup"] == 1
    assert r["sample_indices"] == [0, 1] and r["steps"] == 16 and r["num_threads"] == 1
    recs = {s["schedule"]: s for s in r["schedules"]}
    assert set(recs) == {"all-heavy", "sandwich", "all-light"}
    assert recs["all-heavy"]["executed_saving"] == 0.0
    assert recs["all-light"]["executed_saving"] > recs["sandwich"]["executed_saving"] > 0
    for rec in recs.values():
        assert len(rec["wall_s"]) == 2 and len(rec["cpu_s"]) == 2 and rec["same_tokens_every_round"]
        assert rec["realized_saving"]["ci_low"] is None and rec["realized_saving"]["ci_high"] is None  # 2 rounds
    assert "sandwich" in capsys.readouterr().out
    assert [p.name for p in out.parent.iterdir()] == ["timing.json"]


def test_command_times_the_profiles_timing_schedules_by_default(smoke_command, tmp_path, monkeypatch):
    """Without --schedules the command times the profile's `timing.schedules`, not every pipeline schedule."""
    from mdlm.cli import main
    from mdlm.profiles import load_profile

    def with_subset(name=None, params_file=None, overrides=None):
        p = load_profile(name, params_file, overrides)
        return p.model_copy(update={"timing": p.timing.model_copy(update={"schedules": ["all-heavy", "all-light"]})})

    monkeypatch.setattr(smoke_command, "load_profile", with_subset)
    out = tmp_path / "timing.json"
    assert main(["timing", "--profile", "smoke", "--rounds", "2", "--samples", "1", "--warmup", "0", "--steps", "8",
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [s["schedule"] for s in r["schedules"]] == ["all-heavy", "all-light"]
    assert r["settings"]["schedules"] == ["all-heavy", "all-light"]


def test_command_needs_the_reference_schedule(smoke_command, tmp_path, capsys):
    from mdlm.cli import main

    out = tmp_path / "timing.json"
    assert main(["timing", "--profile", "smoke", "--schedules", "sandwich", "--out", str(out)]) == 2
    assert "include 'all-heavy'" in capsys.readouterr().err and not out.exists()
    assert main(["timing", "--profile", "smoke", "--rounds", "1", "--out", str(out)]) == 2
    assert "timing.rounds" in capsys.readouterr().err


def test_a_worker_that_dies_is_a_one_line_error():
    """A worker killed without an exception of its own (here it exits at once) surfaces as a UserError that
    says how to see what happened, not as the pool's traceback."""
    import os

    from mdlm.commands.timing import run_parts
    from mdlm.errors import UserError

    with pytest.raises(UserError, match=r"worker process ended abruptly.*--workers 1"):
        run_parts([(3,), (3,)], part=os._exit)
