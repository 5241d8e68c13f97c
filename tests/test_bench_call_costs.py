"""`bench.call_costs`: the prediction's arithmetic by hand, and the call log it reads against the sampler's counts."""

import pytest

from bench import call_costs
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import load_schedule, resolve_schedule_path


def test_predicted_ms_by_hand():
    rows = {"heavy": [16, 4], "light": [8]}
    costs = {"heavy": {"fixed_ms": 1.5, "per_row_ms": 4.0}, "light": {"fixed_ms": 0.8, "per_row_ms": 1.2}}
    # heavy: 2 calls x (1.5 + 0.1) + 20 rows x 4.0 = 83.2; light: 1 x (0.8 + 0.1) + 8 x 1.2 = 10.5;
    # the sampler's draws: 30 positions x 0.01 = 0.3
    got = call_costs.predicted_ms(rows, costs, per_call=0.1, per_position=0.01, head_positions=30)
    assert got == pytest.approx(83.2 + 10.5 + 0.3)


def test_predicted_ms_of_no_calls_is_the_draws_alone():
    assert call_costs.predicted_ms({}, {}, per_call=5.0, per_position=0.5, head_positions=4) == 2.0


@pytest.mark.parametrize("name", ["sandwich", "interleaved"])
def test_call_log_matches_the_sampler_counts(name):
    """Every call the instant denoisers log is one the run counts, with the rows it counts."""
    schedule = load_schedule(resolve_schedule_path(name), 32)
    rows, result, seconds = call_costs.call_structure(schedule, vocab=64, samples=4, seed=0, batch_size=2,
                                                      config=SamplerConfig())
    calls = result.calls_by_model()
    forwards = {m: int(v.sum()) for m, v in result.row_forwards_by_model().items()}
    assert {m: len(r) for m, r in rows.items()} == {m: c for m, c in calls.items() if c}
    assert {m: sum(r) for m, r in rows.items()} == {m: f for m, f in forwards.items() if f}
    assert all(1 <= n <= 2 for r in rows.values() for n in r) and seconds > 0
